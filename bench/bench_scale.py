"""Benchmark: a many-shard checkpoint comparison in process, on `--workers 2` local processes and on a
2-worker Dask LocalCluster, plus the fixed cost per task of each mode.

Writes two sharded checkpoints (Hugging Face layout: N .safetensors shards and a
model.safetensors.index.json; float32 tensors of 128 MiB, 4 a shard), compares them with
flashparity.compare.compare_files in each mode, checks that the three reports are the same bit for bit,
and times each (best of --repeat; the page cache warm, or dropped before each run with --cold). The
pool is started inside the timed call (it is, from the CLI); the Dask cluster is up before (it is, for
a user who submits to one). Per-task cost: 2048 tensors of 64 elements a side, one task each.

Writes the "flashparity compare: workers and Dask" section of BENCHMARKS.md.

    python bench/bench_scale.py                              # 8 shards x 512 MiB a side
    python bench/bench_scale.py --shards 4 --no-write        # smaller, print only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

TENSOR_ELEMS = 32 << 20  # 128 MiB of float32
PER_SHARD = 4


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, offset = {}, 0
    for name, arr in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for arr in tensors.values():
            fh.write(memoryview(np.ascontiguousarray(arr)).cast("B"))


def write_checkpoints(root: Path, shards: int) -> tuple[Path, Path, int]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal(TENSOR_ELEMS, dtype=np.float32)
    noise = (1e-3 * rng.standard_normal(TENSOR_ELEMS)).astype(np.float32)
    total = 0
    for side in ("a", "b"):
        d = root / side
        d.mkdir(parents=True)
        wmap = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            tensors = {}
            for t in range(PER_SHARD):
                b = base + np.float32(s * PER_SHARD + t)
                tensors[f"layers.{s}.w{t}"] = b + noise if side == "a" else b
            write_safetensors(d / fname, tensors)
            wmap.update({n: fname for n in tensors})
            total += sum(x.nbytes for x in tensors.values())
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    return root / "a", root / "b", total  # (total: both sides)


def write_tiny(root: Path, n: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    out = []
    for side in ("ta", "tb"):
        d = root / f"{side}{n}"
        d.mkdir()
        write_safetensors(d / "model.safetensors",
                          {f"t{i}": rng.standard_normal(64).astype(np.float32) for i in range(n)})
        out.append(d)
    return out[0], out[1]


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(fn, repeat: int, cold: bool) -> tuple[float, dict]:
    best, body = None, None
    for _ in range(repeat):
        if cold:
            drop_caches()
        t0 = time.perf_counter()
        body = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best, body


def run(args) -> list[dict]:
    from distributed import LocalCluster

    from flashparity.compare import files, tasks

    root = Path(tempfile.mkdtemp(prefix="fp-bench-scale-", dir=args.dir))
    try:
        a, b, nbytes = write_checkpoints(root, args.shards)
        few = max(1, args.tiny // 8)
        tiny = {n: write_tiny(root, n) for n in (few, args.tiny)}
        rows = []
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            modes = [("in process (the default)", {}),
                     ("--workers 2 (local processes, started in the call)", {"workers": 2}),
                     ("--dask: 2-worker LocalCluster (processes)", {"dask": cluster.scheduler_address})]
            bodies = []
            for what, kw in modes:
                s, body = timed(lambda kw=kw: files.compare_files(str(a), str(b), **kw), args.repeat, args.cold)
                ntasks = sum(-(-(TENSOR_ELEMS * 4) // (tasks.CHUNK_BYTES * tasks.TASK_CHUNKS))
                             for _ in body["tensors"])
                bodies.append(json.dumps(body, sort_keys=True))
                # the marginal cost of a task: (time for many tasks - time for few) / the difference
                t_many, t_few = (timed(lambda kw=kw, n=n: files.compare_files(str(tiny[n][0]), str(tiny[n][1]), **kw),
                                       args.repeat, False)[0] for n in (args.tiny, few))
                rows.append({"what": what, "s": s, "gbs": nbytes / s / 1e9, "tasks": ntasks,
                             "per_task_ms": 1e3 * (t_many - t_few) / (args.tiny - few)})
            if len(set(bodies)) != 1:
                raise SystemExit("the three modes gave different reports")
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def title(args) -> str:
    return "flashparity compare: workers and Dask" + (" (cold page cache)" if args.cold else "")


def render(rows: list[dict], args) -> str:
    from bench_compare import machine

    base = rows[0]["gbs"]
    side = args.shards * PER_SHARD * TENSOR_ELEMS * 4
    out = [
        "## " + title(args),
        "",
        f"Machine: {machine()}.",
        f"Command: `python bench/bench_scale.py --shards {args.shards} --repeat {args.repeat}"
        + (" --cold" if args.cold else "") + f"` ({time.strftime('%Y-%m-%d')}).",
        "",
        f"Two sharded checkpoints of {args.shards} .safetensors shards × {PER_SHARD * TENSOR_ELEMS * 4 >> 20} MiB "
        f"({side >> 20} MiB a side, float32 tensors of 128 MiB) with a model.safetensors.index.json, compared in "
        "each mode; the three reports are identical bit for bit (checked). Time: best of "
        f"{args.repeat}, wall-clock of `compare_files`; GB/s over both sides' bytes; page cache "
        + ("dropped before each run." if args.cold else "warm.")
        + " The pool is started inside the timed call, as the CLI does; the Dask cluster was up before. "
        f"Cost per task: the marginal time of a task, from comparing {args.tiny} and {max(1, args.tiny // 8)} "
        "tensors of 64 float32 a side (one task each; reading and reducing one is a few microseconds of it).",
        "",
        "| mode | time (s) | GB/s | vs in process | tasks | cost per task (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(f"| {r['what']} | {r['s']:.2f} | {r['gbs']:.2f} | {r['gbs'] / base:.2f} | {r['tasks']} | "
                   f"{r['per_task_ms']:.3f} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=8, help="shards a side (each 4 x 128 MiB)")
    ap.add_argument("--tiny", type=int, default=2048, help="tensors a side for the per-task cost")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each run (needs root)")
    ap.add_argument("--dir", default=None, help="where to write the checkpoints (default: the temp dir)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    text = render(run(args), args)
    from bench_parity import publish

    publish(text, title(args), args.no_write)


if __name__ == "__main__":
    main()
