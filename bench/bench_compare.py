"""Benchmark: `flashparity compare` on two large files against the machine's limits and what a user
would run instead, all in one run on the same files.

Rows (each a fresh process, so its peak RSS is its own; time is wall-clock of the work after the
imports, best of --repeat, the files warm in the page cache unless --cold):

* read limit: both files read to nowhere (readinto a reused 8 MiB buffer), one after the other;
* fp.parity in memory: the same data already in RAM (arrays loaded first, not timed);
* flashparity compare: per format (.npy, .safetensors, .npz stored, .npz deflated);
* NumPy mmap + np.max(np.abs(a - b)): the usual one-liner on .npy files;
* safetensors + torch: safe_open, torch max |a-b| and a float64 cosine (the usual checkpoint check).

Writes the "flashparity compare (files)" section of BENCHMARKS.md ("..., cold page cache" with --cold).

    python bench/bench_compare.py                        # 2 x 1 GiB float32 (2^28 elements a file)
    python bench/bench_compare.py --log2 26 --repeat 2   # 2 x 256 MiB
    python bench/bench_compare.py --no-write             # print only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def _child(code: str, setup: str = "") -> tuple[float, int, str]:
    """(seconds, peak RSS in KiB, stdout) of `code` run in a fresh Python after `setup` (imports:
    not timed, as an interpreter that has them loaded already)."""
    wrapper = "import re, sys, time\n" + textwrap.dedent(setup) + "\nt0 = time.perf_counter()\n" + textwrap.dedent(code) + (
        "\ndt = time.perf_counter() - t0\n"
        "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "print('@@', dt, hwm, file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({res.returncode}):\n{res.stderr[-3000:]}")
    m = re.search(r"@@ (\S+) (\d+)", res.stderr)
    return float(m.group(1)), int(m.group(2)), res.stdout


def _best(code: str, repeat: int, cold: bool, setup: str = "") -> tuple[float, int, str]:
    best = None
    for _ in range(repeat):
        if cold:
            drop_caches()
        r = _child(code, setup)
        best = r if best is None or r[0] < best[0] else best
    return best


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def make_files(d: Path, n: int, deflate_n: int) -> dict[str, tuple[str, str]]:
    """The pair in every format: b ~ N(0, 1), a = b + 1e-3 N(0, 1), float32."""
    rng = np.random.default_rng(0)
    out = {}
    for fmt, ext in (("npy", "npy"), ("safetensors", "safetensors"), ("npz-stored", "stored.npz"),
                     ("npz-deflated", "deflated.npz")):
        out[fmt] = (str(d / f"a.{ext}"), str(d / f"b.{ext}"))
    step = 1 << 24
    mm_b = np.lib.format.open_memmap(out["npy"][1], mode="w+", dtype=np.float32, shape=(n,))
    mm_a = np.lib.format.open_memmap(out["npy"][0], mode="w+", dtype=np.float32, shape=(n,))
    for s in range(0, n, step):
        e = min(n, s + step)
        b = rng.standard_normal(e - s, dtype=np.float32)
        mm_b[s:e] = b
        mm_a[s:e] = b + np.float32(1e-3) * rng.standard_normal(e - s, dtype=np.float32)
    mm_a.flush()
    mm_b.flush()
    from safetensors.numpy import save_file

    for i in range(2):
        arr = np.load(out["npy"][i], mmap_mode="r")
        save_file({"w": np.asarray(arr)}, out["safetensors"][i])  # (reads the map: fits this machine's RAM)
        np.savez(out["npz-stored"][i], w=arr)
        np.savez_compressed(out["npz-deflated"][i], w=arr[:deflate_n])
        del arr
    return out


def run(args) -> list[dict]:
    n, deflate_n = 1 << args.log2, 1 << min(args.log2, args.deflate_log2)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print("writing the files ...", flush=True)
        paths = make_files(Path(tmp), n, deflate_n)
        a, b = paths["npy"]
        nbytes = 2 * 4 * n
        cold = args.cold
        if cold and not drop_caches():
            print("cannot drop the page cache here (not permitted): warm-cache numbers only", flush=True)
            cold = False

        def add(what: str, code: str, size: int = nbytes, note: str = "", setup: str = "", numel: int | None = None):
            dt, hwm, out = _best(code, args.repeat, cold, setup)
            if numel is not None:  # a compare row: it must have compared everything, with no error
                body = json.loads(out)
                if "error" in body or body["numel"] != numel or not body["complete"]:
                    raise RuntimeError(f"{what}: the compare did not complete: {out[:500]}")
            rows.append({"what": what, "s": dt, "gbs": size / dt / 1e9, "rss_mib": hwm / 1024, "note": note})
            print(f"{what:58s} {dt:7.3f} s {size / dt / 1e9:6.2f} GB/s  peak RSS {hwm / 1024:6.0f} MiB", flush=True)

        add("read limit: both files read to nowhere", f"""
            import os
            buf = memoryview(bytearray(8 << 20))
            for p in ({a!r}, {b!r}):
                fd = os.open(p, os.O_RDONLY)
                while os.readv(fd, [buf]):
                    pass
                os.close(fd)
        """)
        add("read limit: both files as compare reads them, no reduction", f"""
            ta, = open_tensors({a!r}); tb, = open_tensors({b!r})
            s = PairStreamer(CHUNK_BYTES)
            for _ in s.chunks(ta, tb):
                pass
            s.close()
        """, setup="from flashparity.io import open_tensors\nfrom flashparity.compare.stream import PairStreamer\n"
               "from flashparity.compare.tasks import CHUNK_BYTES")
        # fp.parity in memory: the arrays are loaded first (untimed), then the call alone is timed
        dt = min(float(_child(f"""
            import numpy as np, flashparity as fp, time as _t
            x = np.load({a!r}); y = np.load({b!r})
            s = _t.perf_counter(); fp.parity(x, y); print(_t.perf_counter() - s)
        """)[2]) for _ in range(args.repeat))
        rows.append({"what": "fp.parity in memory (the same data, loaded first)", "s": dt, "gbs": nbytes / dt / 1e9,
                     "rss_mib": None, "note": ""})
        print(f"{'fp.parity in memory':58s} {dt:7.3f} s {nbytes / dt / 1e9:6.2f} GB/s", flush=True)
        for fmt in ("npy", "safetensors", "npz-stored", "npz-deflated"):
            pa, pb = paths[fmt]
            size = nbytes if fmt != "npz-deflated" else 2 * 4 * deflate_n
            add(f"flashparity compare ({fmt})", f"""
                assert main(["compare", {pa!r}, {pb!r}, "--quiet", "--json"]) == 0
            """, size, note="" if fmt != "npz-deflated" else f"2^{int(np.log2(deflate_n))} elements a file (zlib-bound)",
                setup="from flashparity.cli import main", numel=n if fmt != "npz-deflated" else deflate_n)
        for mib in args.chunks:
            add(f"flashparity compare (npy), {mib} MiB chunks", f"""
                tasks.CHUNK_BYTES = {mib} << 20
                assert main(["compare", {a!r}, {b!r}, "--quiet", "--json"]) == 0
            """, setup="from flashparity.compare import tasks\nfrom flashparity.cli import main", numel=n,
                note="chunk-size sweep")
        add("NumPy mmap + np.max(np.abs(a - b))", f"""
            x = np.load({a!r}, mmap_mode="r"); y = np.load({b!r}, mmap_mode="r")
            print(float(np.max(np.abs(x - y))))
        """, setup="import numpy as np")
        if not args.no_torch:
            add("safetensors + torch: max abs(a - b), float64 cosine", f"""
                with safe_open({paths['safetensors'][0]!r}, "pt") as fa, safe_open({paths['safetensors'][1]!r}, "pt") as fb:
                    x, y = fa.get_tensor("w"), fb.get_tensor("w")
                    mx = (x - y).abs().max().item()
                    cos = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=0).item()
                print(mx, cos)
            """, setup="import torch\nfrom safetensors import safe_open")
    return rows


def machine() -> str:
    model = "unknown CPU"
    try:
        model = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except Exception:
        pass
    info = json.loads(subprocess.run([sys.executable, "-m", "flashparity", "info", "--json"], capture_output=True,
                                     text=True).stdout)
    mem = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)
    return (f"{model}, {os.cpu_count()} cores, {int(mem) >> 20} GiB RAM, SIMD {info['simd']}; "
            f"flashparity {info['version']}, Python {sys.version.split()[0]}, NumPy {np.__version__}")


def title(args) -> str:
    return "flashparity compare (files" + (", cold page cache)" if args.cold else ")")


def render(rows: list[dict], args) -> str:
    by = {r["what"]: r for r in rows}
    limit = max(by["read limit: both files read to nowhere"]["gbs"],
                by["read limit: both files as compare reads them, no reduction"]["gbs"])
    inmem = by["fp.parity in memory (the same data, loaded first)"]["gbs"]
    ref = min(limit, inmem)
    out = [
        "## " + title(args),
        "",
        f"Machine: {machine()}.",
        f"Command: `python bench/bench_compare.py --log2 {args.log2} --repeat {args.repeat}"
        + (" --cold" if args.cold else "") + "` "
        f"({time.strftime('%Y-%m-%d')}).",
        "",
        f"Two float32 files of 2^{args.log2} elements each ({4 << args.log2 >> 20} MiB), b ~ N(0, 1), a = b + "
        "1e-3·N(0, 1), in every format. Each row is a fresh process: wall-clock time of the work after its imports "
        f"(best of {args.repeat}), GB/s over both files' bytes, peak RSS (VmHWM). Page cache: "
        + ("dropped before each run (cold)." if args.cold else "warm (the files were just written and read)."),
        f"The ratio is the row's rate over min(the faster read limit, fp.parity in memory) = {ref:.2f} GB/s. "
        "The first read limit reads one file, then the other; the second reads both the way compare does "
        "(a reader thread one chunk ahead, positioned reads into reused buffers) and drops them. On a shared "
        "host the read rate moves between runs (3.4 to 5.5 GB/s warm on this one within an hour).",
        "",
        "| what | time (s) | GB/s | ratio | peak RSS (MiB) | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        rss = "—" if r["rss_mib"] is None else f"{r['rss_mib']:.0f}"
        out.append(f"| {r['what']} | {r['s']:.3f} | {r['gbs']:.2f} | {r['gbs'] / ref:.2f} | {rss} | {r['note']} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log2", type=int, default=28, help="log2 of the elements per file (28: 1 GiB of float32)")
    ap.add_argument("--deflate-log2", type=int, default=26, help="at most this size for the deflated .npz pair")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each run (needs root)")
    ap.add_argument("--dir", default=None, help="where to write the files (default: the temp dir)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--chunks", type=int, nargs="*", default=[1, 2, 8, 16],
                    help="also time compare (.npy) with these chunk sizes in MiB (the default is 4)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    text = render(run(args), args)
    from bench_parity import publish

    publish(text, title(args), args.no_write)


if __name__ == "__main__":
    main()
