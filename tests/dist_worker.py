"""One rank of the fp.distributed.parity tests (tests/test_distributed.py starts WORLD of these).

argv: rank, world, init file, inputs .npz (a, b and the row split points), output .pkl, atol, rtol.
The rank takes rows split[rank]:split[rank+1] of a and b (an optional per-rank override of its
shard, `a{rank}`/`b{rank}`, replaces them), calls fp.distributed.parity over gloo, and pickles the
stats (or the exception type and message).
"""

from __future__ import annotations

import pickle
import sys

import numpy as np
import torch.distributed as dist

import flashparity as fp


def main() -> None:
    rank, world, init, inputs, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    atol, rtol = float(sys.argv[6]), float(sys.argv[7])
    data = np.load(inputs)
    split = data["split"]
    a = data[f"a{rank}"] if f"a{rank}" in data else data["a"][split[rank]:split[rank + 1]]
    b = data[f"b{rank}"] if f"b{rank}" in data else data["b"][split[rank]:split[rank + 1]]
    if "bf16" in data:  # the inputs as bfloat16 (saved as 2-byte voids)
        import ml_dtypes
        a, b = a.view(ml_dtypes.bfloat16), b.view(ml_dtypes.bfloat16)
    if f"atol{rank}" in data:  # a per-rank override of the tolerance (a bad one, for the error tests)
        atol = float(data[f"atol{rank}"])
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        try:
            result = ("ok", fp.distributed.parity(a, b, atol=atol, rtol=rtol))
        except (ValueError, TypeError) as exc:
            result = (type(exc).__name__, str(exc))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    with open(out, "wb") as fh:
        pickle.dump(result, fh)


if __name__ == "__main__":
    main()
