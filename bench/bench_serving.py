"""Benchmark: fp.attention_varlen and fp.attention_kvcache (paged) with flash2 on the CPU against
what a user has instead: torch's scaled_dot_product_attention run once per sequence (the packed
batch sliced, the paged cache gathered into a contiguous one first, as vLLM's and TensorRT-LLM's
hand-written references do). Same inputs, same run. Writes the "Serving attention (CPU)" section
of BENCHMARKS.md.

Workloads (float32 and bfloat16, GQA 16/4 heads, head_dim 128):
  varlen prefill: a packed batch of 8 causal sequences of mixed lengths (37..1024 tokens);
  paged decode:   32 sequences of one query over caches of 100..2048 keys in pages of 16.

    python bench/bench_serving.py
    python bench/bench_serving.py --repeat 2 --no-write
"""

from __future__ import annotations

import argparse
import time

import simd_env  # noqa: I001  (first: it sets what the libraries read when they load)

import numpy as np

import flashparity as fp
from bench_attention import best_time
from bench_parity import machine, publish

try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None
try:
    import torch
except ImportError:
    torch = None

HQ, HKV, D = 16, 4, 128
PREFILL_LENS = [1024, 37, 512, 300, 777, 64, 1000, 129]
PAGE = 16


def decode_lens(n=32, seed=1):
    return np.random.default_rng(seed).integers(100, 2049, n).astype(np.int32)


def to_dtype(x, dtype):
    return x if dtype == "float32" else x.astype(ml_dtypes.bfloat16)


def torch_tensor(x, dtype):
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return t if dtype == "float32" else t.to(torch.bfloat16)


def varlen_case(dtype, repeat):
    rng = np.random.default_rng(0)
    cu = np.concatenate([[0], np.cumsum(PREFILL_LENS)]).astype(np.int32)
    total = int(cu[-1])
    qf, kf, vf = (rng.standard_normal((total, h, D), dtype=np.float32) for h in (HQ, HKV, HKV))
    q, k, v = (to_dtype(x, dtype) for x in (qf, kf, vf))
    flops = sum(4 * HQ * n * n * D / 2 for n in PREFILL_LENS)
    res = {"workload": f"varlen prefill, {len(PREFILL_LENS)} causal sequences ({total} tokens)", "dtype": dtype}
    res["fp"] = best_time(lambda: fp.attention_varlen(q, k, v, cu, cu, causal=True), repeat)
    if torch is not None:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        # per sequence: BHSD views of the packed tensors, kv heads repeated for GQA
        seqs = []
        for b in range(len(PREFILL_LENS)):
            sl = slice(cu[b], cu[b + 1])
            seqs.append(tuple(torch_tensor(x[sl], dtype).transpose(0, 1).unsqueeze(0) for x in (qf, kf, vf)))

        def run_torch():
            with torch.no_grad():
                for tq, tk, tv in seqs:
                    sdpa(tq, tk, tv, is_causal=True, enable_gqa=True)

        res["torch"] = best_time(run_torch, repeat)
    res["gflops"] = flops / res["fp"] / 1e9
    return res


def paged_case(dtype, repeat):
    rng = np.random.default_rng(0)
    lens = decode_lens()
    batch = lens.size
    max_blocks = int((lens.max() + PAGE - 1) // PAGE)
    num_blocks = batch * max_blocks
    table = rng.permutation(num_blocks).reshape(batch, max_blocks).astype(np.int32)
    kf, vf = (rng.standard_normal((num_blocks, PAGE, HKV, D), dtype=np.float32) for _ in range(2))
    qf = rng.standard_normal((batch, 1, HQ, D), dtype=np.float32)
    q, kc, vc = (to_dtype(x, dtype) for x in (qf, kf, vf))
    flops = sum(4 * HQ * int(n) * D for n in lens)
    res = {"workload": f"paged decode, {batch} sequences of 100..2048 keys, pages of {PAGE}", "dtype": dtype}
    res["fp"] = best_time(lambda: fp.attention_kvcache(q, kc, vc, lens, block_table=table), repeat)
    if torch is not None:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        tk_pool, tv_pool = torch_tensor(kf, dtype), torch_tensor(vf, dtype)
        tq = [torch_tensor(qf[b], dtype).transpose(0, 1).unsqueeze(0) for b in range(batch)]
        rows = [torch.from_numpy((table[b, :, None] * PAGE + np.arange(PAGE)).reshape(-1)[:lens[b]].astype(np.int64))
                for b in range(batch)]

        def run_torch():  # gather each sequence's pages, then SDPA on it
            with torch.no_grad():
                for b in range(batch):
                    k = tk_pool.reshape(-1, HKV, D).index_select(0, rows[b]).transpose(0, 1).unsqueeze(0)
                    v = tv_pool.reshape(-1, HKV, D).index_select(0, rows[b]).transpose(0, 1).unsqueeze(0)
                    sdpa(tq[b], k, v, enable_gqa=True)

        res["torch"] = best_time(run_torch, repeat)
    res["gflops"] = flops / res["fp"] / 1e9
    return res


def render(rows, args):
    out = [
        "## " + simd_env.title("Serving attention (CPU)", args.simd),
        "",
        f"Machine: {machine()}.",
        f"Command: `python bench/bench_serving.py --repeat {args.repeat}"
        + (f" --simd {args.simd}" if args.simd else "") + f"` ({time.strftime('%Y-%m-%d')}).",
        *simd_env.held_to(args.simd),
        f"Heads {HQ}/{HKV} (GQA), head_dim {D}; flash2. torch: `scaled_dot_product_attention(enable_gqa=True)` per "
        "sequence on BHSD views of the packed batch, and for the paged cache each sequence's pages gathered "
        "(`index_select`) first. Times: best of the repeats, whole batch.",
        "",
        "| workload | dtype | torch per sequence ms | fp ms | fp GFLOP/s | torch / fp |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        t, f = r.get("torch"), r["fp"]
        torch_ms = "–" if t is None else f"{t * 1e3:.1f}"
        ratio = "–" if t is None else f"{t / f:.2f}"
        out.append(f"| {r['workload']} | {r['dtype']} | {torch_ms} | {f * 1e3:.1f} | {r['gflops']:.1f} | {ratio} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--simd", choices=simd_env.LEVELS,
                    help="run at this SIMD level, PyTorch held to the same (simd_env.py)")
    args = ap.parse_args()
    rows = []
    for dt in args.dtypes:
        if dt == "bfloat16" and ml_dtypes is None:
            continue
        for case in (varlen_case, paged_case):
            rows.append(case(dt, args.repeat))
            print(rows[-1], flush=True)
    publish(render(rows, args), simd_env.title("Serving attention (CPU)", args.simd), args.no_write)


if __name__ == "__main__":
    main()
