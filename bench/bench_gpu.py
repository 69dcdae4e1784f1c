"""Benchmark on a GPU (CUDA builds): fp.parity's bandwidth against a device-to-device copy, and the
flash2 attention forward against torch.nn.functional.scaled_dot_product_attention (its flash
backend, FlashAttention-2), same card, same run. Writes the "GPU" section of BENCHMARKS.md.

    python bench/bench_gpu.py                       # needs PyTorch with CUDA for the SDPA column
    python bench/bench_gpu.py --quick --no-write

Attention: head_dim 64 and 128, float16 and bfloat16, seqlen 512..16k with batch·seqlen = 16k
tokens, 16 heads (2048 / head_dim · 16 for head_dim 128: 2048 model width), causal and not.
TFLOP/s counts 4·B·H·S²·D (halved for causal). Times are the best of --repeat runs, each run timed
from launch to the end of the stream (fp.attention synchronizes its stream before returning;
SDPA is followed by torch.cuda.synchronize()).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import flashparity as fp
from bench_parity import publish
from flashparity.kernels.kernel_parity import to_device

try:
    import torch
except ImportError:
    torch = None


def device_name() -> str:
    devs = fp.build_info()["devices"]
    return devs[0]["name"] if devs else "unknown GPU"


def best(fn, repeat, sync=lambda: None):
    fn()
    sync()
    t = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        t = min(t, time.perf_counter() - t0)
    return t


def copy_bandwidth(nbytes: int, repeat: int) -> float:
    """Device-to-device copy GB/s, counting read + write (the bytes a parity pass reads are 2x n)."""
    from cuda.bindings import runtime as rt

    err, src = rt.cudaMalloc(nbytes)
    err2, dst = rt.cudaMalloc(nbytes)
    assert int(err) == 0 and int(err2) == 0
    try:
        def copy():
            rt.cudaMemcpy(dst, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice)
        t = best(copy, repeat, lambda: rt.cudaDeviceSynchronize())
    finally:
        rt.cudaFree(src)
        rt.cudaFree(dst)
    return 2 * nbytes / t / 1e9


def call_latency(repeat) -> float:
    """fp.parity's fixed cost per call on a device (1024 float32 elements): launch, partials, merge."""
    x = to_device(np.random.default_rng(1).standard_normal(1024, dtype=np.float32))
    return best(lambda: fp.parity(x, x), repeat * 10)


def parity_rows(sizes, repeat):
    import ml_dtypes

    rows = []
    for e in sizes:
        n = 1 << e
        rng = np.random.default_rng(0)
        b = rng.standard_normal(n, dtype=np.float32)
        a = b + np.float32(1e-3) * rng.standard_normal(n, dtype=np.float32)
        for dt in ("float32", "float16", "bfloat16"):
            cast = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dt]
            da, db = to_device(a.astype(cast)), to_device(b.astype(cast))
            nbytes = 2 * n * np.dtype(cast).itemsize
            t = best(lambda: fp.parity(da, db), repeat)
            copy = copy_bandwidth(nbytes // 2, repeat)
            rows.append((e, dt, t * 1e3, nbytes / t / 1e9, copy))
    return rows


def attention_rows(head_dims, seqlens, dtypes, repeat):
    rows = []
    for d in head_dims:
        heads = 2048 // d
        for s in seqlens:
            batch = max(1, 16384 // s)
            for dt in dtypes:
                for causal in (False, True):
                    flops = 4 * batch * heads * s * s * d / (2 if causal else 1)
                    tf = sd = None
                    if torch is not None and torch.cuda.is_available():
                        tdt = getattr(torch, dt)
                        q, k, v = (torch.randn(batch, s, heads, d, device="cuda", dtype=tdt) for _ in range(3))
                        o = torch.empty_like(q)  # out=: no allocation inside the timed call
                        t = best(lambda: fp.attention(q, k, v, causal=causal, out=o), repeat)
                        tf = flops / t / 1e12
                        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # SDPA takes BHSD (views)
                        from torch.nn.attention import SDPBackend, sdpa_kernel

                        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                            t = best(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal),
                                     repeat, torch.cuda.synchronize)
                        sd = flops / t / 1e12
                    else:
                        import ml_dtypes

                        cast = np.float16 if dt == "float16" else ml_dtypes.bfloat16
                        rng = np.random.default_rng(0)
                        q, k, v = (to_device(rng.standard_normal((batch, s, heads, d)).astype(cast)) for _ in range(3))
                        t = best(lambda: fp.attention(q, k, v, causal=causal), repeat)
                        tf = flops / t / 1e12
                    rows.append((d, s, batch, heads, dt, causal, tf, sd))
                    print(rows[-1], flush=True)
    return rows


def render(prows, arows, args, latency=None) -> str:
    out = ["## GPU", "", f"Card: {device_name()} (CUDA driver {fp.build_info()['cuda_driver']}).",
           f"Command: `python bench/bench_gpu.py{' --quick' if args.quick else ''} --repeat {args.repeat}`"
           f" ({time.strftime('%Y-%m-%d')}).", ""]
    out += ["### Parity reductions", "",
            "| elements | dtype | fp.parity ms | GB/s | D2D copy GB/s | ratio |", "|---|---|---|---|---|---|"]
    for e, dt, ms, gbs, copy in prows:
        out.append(f"| 2^{e} | {dt} | {ms:.3f} | {gbs:.0f} | {copy:.0f} | {gbs / copy:.2f} |")
    if latency is not None:
        out += ["", f"A call on 1024 elements takes {latency * 1e6:.0f} µs (launch, per-block partials back to the host, "
                "their merge, Python): the fixed cost inside every time above."]
    out += ["", "### Attention forward", "",
            "| head_dim | seqlen | batch × heads | dtype | causal | flash2 TFLOP/s | SDPA flash TFLOP/s | ratio |",
            "|---|---|---|---|---|---|---|---|"]
    for d, s, b, h, dt, causal, tf, sd in arows:
        ratio = f"{tf / sd:.2f}" if sd else "–"
        out.append(f"| {d} | {s} | {b} × {h} | {dt} | {causal} | {tf:.1f} | {'–' if sd is None else f'{sd:.1f}'} | {ratio} |")
    ratios = [tf / sd for *_, tf, sd in arows if sd]
    if ratios:
        out += ["", f"Geometric mean flash2 / SDPA flash: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}."]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="fewer sizes (seqlen 512, 4096; 2^26 elements)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not fp.build_info()["cuda_available"]:
        raise SystemExit("bench_gpu: no usable CUDA device (or a CPU-only build)")
    sizes = [26] if args.quick else [26, 28, 30]  # 2^30: the fixed cost of a call (~tens of µs) fades
    seqlens = [512, 4096] if args.quick else [512, 1024, 2048, 4096, 8192, 16384]
    prows = parity_rows(sizes, args.repeat)
    latency = call_latency(args.repeat)
    arows = attention_rows([64, 128], seqlens, ["float16", "bfloat16"], args.repeat)
    publish(render(prows, arows, args, latency), "GPU", args.no_write)


if __name__ == "__main__":
    main()
