"""Benchmark: fp.parity against what a user would run instead (NumPy, PyTorch), same inputs, same run.

For each size and dtype: time (best of --repeat), GB/s (bytes of a and b over the time), peak extra
resident memory while the call runs (sampled from /proc), and accuracy against a float64 oracle.
Writes the "Parity reductions" section of BENCHMARKS.md (other sections are kept).

    python bench/bench_parity.py                  # CPU, 2^24 and 2^26 elements, f32/f16/bf16
    python bench/bench_parity.py --sizes 24 --repeat 3
    python bench/bench_parity.py --simd avx2      # the AVX2 code path, its own section (simd_env.py)
    python bench/bench_parity.py --fp8            # FP8 against its wide source, its own section

An FP8 "dtype" names a pair, a/b: a in FP8 (a checkpoint's conversion), b the wider source. NumPy
and PyTorch then upcast both to float32 first, as a user comparing them would.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import threading
import time
from pathlib import Path

import simd_env  # noqa: I001  (first: it sets what the libraries read when they load)

import numpy as np

import flashparity as fp
from flashparity import _core
from flashparity._tensor import as_view

try:
    import ml_dtypes
except ImportError:  # bfloat16 rows need it
    ml_dtypes = None
# PyTorch's OpenMP workers spin after each op by default; on a 2-core machine that steals a core
# from whatever is timed next. Passive waiting costs torch microseconds per op (its ops here take
# milliseconds) and keeps the rows independent of their order.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
try:
    import torch
except ImportError:
    torch = None

PAGE = os.sysconf("SC_PAGE_SIZE")
ROOT = Path(__file__).resolve().parents[1]


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 0.2 ms in a thread."""

    def __enter__(self):
        self.base = rss()
        self.peak = self.base
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss())
            time.sleep(0.0002)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, rss())
        self.extra = self.peak - self.base


def last_level_cache_bytes() -> int:
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return int(text[:-1]) * {"K": 2**10, "M": 2**20}[text[-1]]
    except (OSError, ValueError, KeyError):
        return 64 * 2**20


_SCRATCH = []


# Issue 28's targets, fp.parity's share of the read limit per level: float32, and the narrower
# formats (float16, bfloat16, FP8). None where there is none (the scalar level; NEON: no timing
# under emulation was asked).
READ_LIMIT_TARGETS = {"avx512": (0.85, 0.6), "avx512icl": (0.85, 0.6), "avx2": (0.8, 0.5)}


def read_limit_target(level: str, dtype: str) -> float | None:
    targets = READ_LIMIT_TARGETS.get(level)
    if targets is None or dtype == "float64":
        return None
    return targets[0] if dtype == "float32" else targets[1]


def evict_caches() -> None:
    """Reads a buffer of three times the last-level cache, so that the next call starts cold: a
    repeat would otherwise find up to a cache's worth of its inputs left by the previous one (a
    quarter of two 2^24-element float32 inputs on a 32 MiB L3), which a real comparison of a fresh
    output never does."""
    if not _SCRATCH:
        halves = [np.ones(3 * last_level_cache_bytes() // 8, np.float32) for _ in range(2)]
        _SCRATCH.extend([halves, [as_view(x, "scratch").desc for x in halves]])
    _core.read_probe(*_SCRATCH[1])


def sample_times(fns, repeat):
    """Times of each function over `repeat` rounds that run them in turn, after a warm-up call
    (page faults, thread pools), each call from cold caches: functions timed together see the same
    machine (a shared host's memory bandwidth drifts from second to second), so their ratio is
    steadier than their times."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            evict_caches()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def best_times(fns, repeat):
    return [min(t) for t in sample_times(fns, repeat)]


def timed(fn, repeat, best=None):
    """(best time, peak extra memory, result); `best` when already measured by sample_times."""
    if best is None:
        (best,) = best_times([fn], repeat)
    with PeakRSS() as mem:
        out = fn()
    return best, mem.extra, out


def oracle(a, b, chunk=1 << 22):
    """max |a-b| and cosine in float64, chunked (bounded memory), sums combined with fsum."""
    mx, ab, aa, bb, dd = 0.0, [], [], [], []
    for i in range(0, a.size, chunk):
        x = a[i:i + chunk].astype(np.float64)
        y = b[i:i + chunk].astype(np.float64)
        d = x - y
        mx = max(mx, float(np.max(np.abs(d))))
        ab.append(float(np.sum(x * y)))
        aa.append(float(np.sum(x * x)))
        bb.append(float(np.sum(y * y)))
        dd.append(float(np.sum(d * d)))
    A, B, D = math.fsum(aa), math.fsum(bb), math.fsum(dd)
    na, nb = math.sqrt(A), math.sqrt(B)
    one_minus = (D - (na - nb) ** 2) / (2 * na * nb)
    return mx, 1.0 - one_minus, one_minus


FP8_PAIRS = ["float8_e4m3fn/bfloat16", "float8_e4m3fn/float32", "float8_e5m2/bfloat16"]


def make_inputs(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    b = rng.standard_normal(n, dtype=np.float32)
    if "/" in dtype:  # an FP8 conversion of b (no added noise: its rounding is the difference)
        fa, fb = dtype.split("/")
        return b.astype(getattr(ml_dtypes, fa)), (b if fb == "float32" else b.astype(getattr(ml_dtypes, fb)))
    a = b + np.float32(1e-3) * rng.standard_normal(n, dtype=np.float32)
    if dtype == "float32":
        return a, b
    if dtype == "float16":
        return a.astype(np.float16), b.astype(np.float16)
    return a.astype(ml_dtypes.bfloat16), b.astype(ml_dtypes.bfloat16)


SUBNORMAL_BITS = {"float32": (np.uint32, 0x7FFFFF, 31), "float16": (np.uint16, 0x3FF, 15), "bfloat16": (np.uint16, 0x7F, 15)}


def with_denormals(a, b, frac, seed=1):
    """Copies of a and b with a fraction `frac` of the elements (the same in both) replaced by
    subnormal numbers of their format: random bit patterns with a zero exponent field, a's a few
    units in the last place from b's (as a tiny tensor's elements would be)."""
    uint, mant, sign_bit = SUBNORMAL_BITS[a.dtype.name]
    rng = np.random.default_rng(seed)
    at = rng.random(a.size) < frac
    k = int(at.sum())
    mb = rng.integers(1, mant + 1, k).astype(np.int64)
    ma = np.clip(mb + rng.integers(-3, 4, k), 1, mant)
    sign = (rng.integers(0, 2, k).astype(np.int64) << sign_bit)
    a, b = a.copy(), b.copy()
    a.view(uint)[at] = (ma | sign).astype(uint)
    b.view(uint)[at] = (mb | sign).astype(uint)
    return a, b


def to_torch(x):
    if x.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        raw = x.view(np.int16 if x.dtype.itemsize == 2 else np.uint8)
        return torch.from_numpy(raw).view(getattr(torch, x.dtype.name))
    return torch.from_numpy(x)


def run_case(n, dtype, repeat, rows):
    a, b = make_inputs(n, dtype)
    nbytes = a.nbytes + b.nbytes
    ref_max, ref_cos, ref_1mc = oracle(a, b)
    va, vb = as_view(a, "a"), as_view(b, "b")

    def add(name, fn, max_of=None, cos_of=None, best=None):
        t, extra, out = timed(fn, repeat, best)
        mx = max_of(out) if max_of else None
        cs = cos_of(out) if cos_of else None
        rows.append({
            "n": n, "dtype": dtype, "method": name, "ms": t * 1e3, "gbs": nbytes / t / 1e9,
            "extra_mib": extra / 2**20,
            "max_err": None if mx is None else abs(mx - ref_max),
            "cos_err": None if cs is None else abs(cs - ref_cos),
        })
        return t

    # the read limit and fp.parity in alternation: their ratio is the headline
    probe = lambda: _core.read_probe(va.desc, vb.desc)  # noqa: E731
    fused = lambda: fp.parity(a, b, atol=1e-3, rtol=1e-3)  # noqa: E731
    probe_times, fp_times = sample_times([probe, fused], repeat)
    t_probe = add("read limit (_core.read_probe: both inputs read once)", probe, best=min(probe_times))
    median_probe = sorted(probe_times)[len(probe_times) // 2]
    if median_probe > 1.25 * t_probe:  # the read limit itself moved during the run: say so
        rows[-1]["unsteady"] = nbytes / median_probe / 1e9
    best_fp = min(fp_times)
    t_fp = add("fp.parity (every statistic, one pass)", fused, max_of=lambda s: s.max_abs_diff,
               cos_of=lambda s: s.cosine_sim, best=best_fp)
    rows[-1]["of_limit"] = t_probe / t_fp
    if dtype in SUBNORMAL_BITS:
        # Genuine denormal inputs (a user's tensor may hold them): what they cost against the normal
        # inputs' time, timed in alternation with them. An Intel core takes an assist for every
        # instruction with a denormal lane; an AMD core barely notices.
        for frac in (0.01, 0.5):
            da, db = with_denormals(a, b, frac)
            t_n, t_d = best_times([fused, lambda: fp.parity(da, db, atol=1e-3, rtol=1e-3)], repeat)
            add(f"fp.parity, {frac:.0%} of the elements denormal", lambda: fp.parity(da, db, atol=1e-3, rtol=1e-3),
                best=t_d)
            rows[-1]["vs_normal"] = t_d / t_n
    if simd_env.LEVEL is None and fp.build_info()["simd_detected"].startswith("avx512"):
        # what a CPU without AVX-512 runs (AVX2 + FMA), on this machine: the code path, not that CPU
        def fused_avx2():
            before = os.environ.get("FLASHPARITY_SIMD")
            os.environ["FLASHPARITY_SIMD"] = "avx2"
            try:
                return fp.parity(a, b, atol=1e-3, rtol=1e-3)
            finally:
                if before is None:
                    del os.environ["FLASHPARITY_SIMD"]
                else:
                    os.environ["FLASHPARITY_SIMD"] = before

        add("fp.parity, AVX2 code path (FLASHPARITY_SIMD=avx2, as on CPUs without AVX-512)", fused_avx2,
            max_of=lambda s: s.max_abs_diff, cos_of=lambda s: s.cosine_sim)

    # NumPy: what a user writes. Low-precision inputs are upcast first for the cosine (float64); an
    # FP8 pair first to float32 for everything (NumPy has no arithmetic between the two formats).
    if "/" in dtype:
        a_, b_ = a, b
        f32 = lambda x: x if x.dtype == np.float32 else x.astype(np.float32)  # noqa: E731
        np_max = add("numpy np.max(np.abs(f32(a) - f32(b)))", lambda: float(np.max(np.abs(f32(a_) - f32(b_)))),
                     max_of=lambda v: v)

        def np_cos8():
            x, y = a_.astype(np.float64), b_.astype(np.float64)
            return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))

        np_c = add("numpy cosine in float64 (astype + dot + norms)", np_cos8, cos_of=lambda v: v)
        np_ac = add("numpy np.allclose(f32(a), f32(b), 1e-3, 1e-3)",
                    lambda: bool(np.allclose(f32(a_), f32(b_), rtol=1e-3, atol=1e-3)))
        rows.append({"n": n, "dtype": dtype, "method": "numpy: the three calls together",
                     "ms": (np_max + np_c + np_ac) * 1e3, "gbs": nbytes / (np_max + np_c + np_ac) / 1e9,
                     "extra_mib": None, "max_err": None, "cos_err": None, "speedup": (np_max + np_c + np_ac) / t_fp})
        if torch is not None:
            ta, tb = to_torch(a), to_torch(b)
            add("torch (a.float() - b.float()).abs().max()", lambda: float((ta.float() - tb.float()).abs().max()),
                max_of=lambda v: v)
            add("torch cosine_similarity(a.float(), b.float(), dim=0)",
                lambda: float(torch.nn.functional.cosine_similarity(ta.float(), tb.float(), dim=0)),
                cos_of=lambda v: v)
        return ref_1mc
    np_max = add("numpy np.max(np.abs(a - b))", lambda: float(np.max(np.abs(a - b))), max_of=lambda v: v)

    def np_cos():
        x, y = a.astype(np.float64), b.astype(np.float64)
        return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))

    np_c = add("numpy cosine in float64 (astype + dot + norms)", np_cos, cos_of=lambda v: v)
    np_ac = add("numpy np.allclose(a, b, 1e-3, 1e-3)", lambda: bool(np.allclose(a, b, rtol=1e-3, atol=1e-3)))
    rows.append({"n": n, "dtype": dtype, "method": "numpy: the three calls together", "ms": (np_max + np_c + np_ac) * 1e3,
                 "gbs": nbytes / (np_max + np_c + np_ac) / 1e9, "extra_mib": None, "max_err": None, "cos_err": None,
                 "speedup": (np_max + np_c + np_ac) / t_fp})

    if torch is not None:
        ta, tb = to_torch(a), to_torch(b)
        add("torch (a - b).abs().max()", lambda: float((ta - tb).abs().max()), max_of=lambda v: v)
        add("torch cosine_similarity(a, b, dim=0)",
            lambda: float(torch.nn.functional.cosine_similarity(ta, tb, dim=0)), cos_of=lambda v: v)

        def assert_close():
            try:
                torch.testing.assert_close(ta, tb, rtol=1e-3, atol=1e-3)
                return True
            except AssertionError:
                return False

        add("torch.testing.assert_close(rtol=atol=1e-3)", assert_close)
    return ref_1mc


def machine() -> str:
    model = "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.*)", text).group(1)
        # a VM's model name can hide the generation ("AMD EPYC"): family and model tell Zen 3 (25/1)
        # from Zen 4 (25/17), Sapphire Rapids (6/143) from Emerald Rapids (6/207)
        fam, mod = re.search(r"cpu family\s*:\s*(\d+)", text), re.search(r"^model\s*:\s*(\d+)", text, re.M)
        if fam and mod:
            model += f" (family {fam.group(1)}, model {mod.group(1)})"
    except Exception:
        pass
    flags = fp.build_info()
    return (f"{model}, {os.cpu_count()} cores, {_core.num_threads()} threads used, SIMD {flags['simd']}; "
            f"Python {platform.python_version()}, NumPy {np.__version__}"
            + (f", PyTorch {torch.__version__} ({torch.get_num_threads()} threads, ATen CPU capability "
               f"{torch.backends.cpu.get_cpu_capability()})" if torch else ", no PyTorch"))


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def render(rows, args, title) -> str:
    out = [
        "## " + title,
        "",
        f"Machine: {machine()}.",
        f"Command: `python bench/bench_parity.py --sizes {' '.join(map(str, args.sizes))} --repeat {args.repeat}"
        + (f" --simd {args.simd}" if args.simd else "") + (" --fp8" if args.fp8 else "")
        + f"` ({time.strftime('%Y-%m-%d')}).",
        *simd_env.held_to(args.simd),
        "",
        ("Inputs: b ~ N(0, 1) float32 (or rounded to the wide side's dtype), a = b rounded to the FP8 format."
         if args.fp8 else "Inputs: b ~ N(0, 1), a = b + 1e-3·N(0, 1), rounded to the dtype.") +
        " Times: best of the repeats, each"
        " started with cold caches (a buffer of 3x the last-level cache read first); the read"
        " limit and fp.parity run in alternation, so their ratio compares the same machine state; a read limit whose"
        " median is over 1.25x its best is marked unsteady (on a shared host the memory bandwidth can jump for a"
        " while). GB/s counts the bytes of a and b once. Targets (issue 28): 0.8 of the read limit for float32 and"
        " 0.5 for the narrower formats at the AVX2 level, 0.85 and 0.6 at AVX-512."
        " Denormal rows: that fraction of the elements (the same in a and b) replaced by subnormal numbers of the"
        " dtype, their time against the normal inputs' timed in alternation with them."
        " Extra memory: peak resident memory above the level before the call. Errors: against a float64"
        " oracle (max |a-b| exact; cosine from Σ(a-b)² and the norms).",
        "",
        "| n | dtype | method | ms | GB/s | extra MiB | max-abs error | cosine error | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    level = fp.build_info()["simd"]  # the level the kernels ran at (FLASHPARITY_SIMD or --simd included)
    for r in rows:
        note = ""
        if "of_limit" in r:
            note = f"{r['of_limit']:.2f} of read limit"
            target = read_limit_target(level, r["dtype"])
            if target is not None:
                note += f" (target {target}: {'met' if r['of_limit'] >= target else 'not met'})"
        if "vs_normal" in r:
            note = f"{r['vs_normal']:.2f}x the normal-input time"
        if "unsteady" in r:
            note = f"unsteady: median {r['unsteady']:.1f} GB/s"
        if "speedup" in r:
            note = f"fp.parity is {r['speedup']:.1f}x faster"
        out.append(
            f"| 2^{int(math.log2(r['n']))} | {r['dtype']} | {r['method']} | {r['ms']:.1f} | {r['gbs']:.1f} | "
            f"{fmt(r['extra_mib'], '.0f')} | {fmt(r['max_err'], '.2g')} | {fmt(r['cos_err'], '.2g')} | {note} |"
        )
    return "\n".join(out) + "\n"


def write_section(text: str, title: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    doc = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number here comes from a script in `bench/`; each section names its machine and command.\n"
    # (the whole title line: "X" must not also replace "X (cold page cache)")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    doc = pattern.sub(text + "\n", doc) if pattern.search(doc) else doc.rstrip() + "\n\n" + text
    path.write_text(doc)


def publish(text: str, title: str, no_write: bool) -> None:
    """Print a rendered section and, unless `no_write`, put it into BENCHMARKS.md."""
    print(text)
    if not no_write:
        write_section(text, title)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[24, 26], help="log2 of the element counts")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    ap.add_argument("--simd", choices=simd_env.LEVELS,
                    help="run at this SIMD level, NumPy and PyTorch held to the same (simd_env.py)")
    ap.add_argument("--fp8", action="store_true", help=f"the FP8 pairs {', '.join(FP8_PAIRS)} (own section)")
    args = ap.parse_args()
    if args.fp8:
        args.dtypes = FP8_PAIRS
    rows = []
    for e in args.sizes:
        for dt in args.dtypes:
            if (dt == "bfloat16" or "/" in dt) and ml_dtypes is None:
                continue
            print(f"2^{e} {dt} ...", flush=True)
            run_case(1 << e, dt, args.repeat, rows)
    title = simd_env.title("Parity reductions (CPU, FP8 pairs)" if args.fp8 else "Parity reductions (CPU)", args.simd)
    publish(render(rows, args, title), title, args.no_write)


if __name__ == "__main__":
    main()
