"""Benchmark: memory and time of fp.compare_modules against the models' own forward passes and
against what people write by hand (hooks that keep every output of both runs, compared after).

Each row is a fresh process (its peak RSS, VmHWM, is its own) running on the CPU a decoder-only
transformer (tests/tiny_transformer.py, scaled up: --d, --layers, --batch, --seq) in float32 under
torch.no_grad():

* one forward: model_a alone (the model's own activations);
* two forwards, one after the other (the two models, nothing compared);
* fp.compare_modules(a, b): every module output compared as the runs go, in lockstep threads;
* hand-written hooks: every module output of both runs kept (detached clones, as one must against
  in-place ops), then each pair compared with torch (max |a-b| and a float64 cosine).

Writes the "compare_modules: memory and time" section of BENCHMARKS.md.

    python bench/bench_modules.py
    python bench/bench_modules.py --d 256 --layers 4 --no-write
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

SETUP = """
import sys, torch
sys.path.insert(0, {tests!r})
import flashparity as fp
from tiny_transformer import TinyTransformer
torch.manual_seed(0)
torch.set_num_threads({threads})
a = TinyTransformer(vocab=1000, d={d}, heads=8, layers={layers}, impl="eager").eval()
b = TinyTransformer(vocab=1000, d={d}, heads=8, layers={layers}, impl="sdpa").eval()
b.load_state_dict(a.state_dict())
ids = torch.randint(0, 1000, ({batch}, {seq}))
with torch.no_grad():
    a(ids); b(ids)  # (warm-up: the allocator's first pages, the kernels' first calls)
"""

CASES = {
    "one forward (model_a alone)": """
with torch.no_grad():
    a(ids)
""",
    "two forwards, one after the other (nothing compared)": """
with torch.no_grad():
    a(ids); b(ids)
""",
    "fp.compare_modules(a, b, ids)": """
rep = fp.compare_modules(a, b, ids)
print(len(rep.entries), rep.ok)
""",
    "hand-written hooks: keep every output of both runs, compare after": """
outs = ({}, {})
def keep(side):
    def hook(name):
        def f(m, i, o):
            for k, t in enumerate(o.values() if isinstance(o, dict) else [o]):
                outs[side][(name, k)] = t.detach().clone()
        return f
    return hook
hs = [m.register_forward_hook(keep(s)(n)) for s, model in enumerate((a, b)) for n, m in model.named_modules()]
with torch.no_grad():
    a(ids); b(ids)
res = {}
for key, x in outs[0].items():
    y = outs[1][key]
    res[key] = ((x - y).abs().max().item(), torch.nn.functional.cosine_similarity(
        x.double().flatten(), y.double().flatten(), dim=0).item())
print(len(res))
""",
}


def child(code: str, setup: str) -> tuple[float, int]:
    wrapper = ("import re, time\n" + setup + "\nimport gc; gc.collect()\n"
               "open('/proc/self/clear_refs', 'w').write('5')  # (resets VmHWM to the current RSS)\n"
               "base = int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
               "t0 = time.perf_counter()\n" + code +
               "\ndt = time.perf_counter() - t0\n"
               "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
               "print('@@', dt, hwm - base)\n")
    res = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    m = re.search(r"@@ (\S+) (-?\d+)", res.stdout)
    return float(m.group(1)), int(m.group(2))


def run(args) -> list[dict]:
    setup = textwrap.dedent(SETUP.format(tests=str(ROOT / "tests"), d=args.d, layers=args.layers, batch=args.batch,
                                         seq=args.seq, threads=args.threads))
    rows = []
    for what, code in CASES.items():
        best = None
        for _ in range(args.repeat):
            r = child(textwrap.dedent(code), setup)
            best = r if best is None or r[0] < best[0] else best
        rows.append({"what": what, "s": best[0], "peak_mib": best[1] / 1024})
    return rows


def render(rows: list[dict], args) -> str:
    from bench_compare import machine

    act = args.batch * args.seq * args.d * 4 / 2**20
    base = rows[0]["peak_mib"]
    out = [
        "## compare_modules: memory and time",
        "",
        f"Machine: {machine()}.",
        f"Command: `python bench/bench_modules.py --d {args.d} --layers {args.layers} --batch {args.batch} "
        f"--seq {args.seq} --repeat {args.repeat}` ({time.strftime('%Y-%m-%d')}).",
        "",
        f"A decoder-only transformer (tests/tiny_transformer.py: d={args.d}, {args.layers} layers, MLP 4·d, "
        f"vocab 1000), float32 on the CPU, batch {args.batch} × {args.seq} tokens: one hidden state is "
        f"{act:.0f} MiB, an MLP activation {4 * act:.0f} MiB. Each row is a fresh process after a warm-up "
        "forward of both models; peak = the rise of VmHWM (reset first, /proc/self/clear_refs) above the RSS "
        "before the row "
        f"(best of {args.repeat} by time). 'vs one forward': the row's peak over the first row's.",
        "",
        "| what | time (s) | peak rise (MiB) | vs one forward |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        out.append(f"| {r['what']} | {r['s']:.3f} | {r['peak_mib']:.0f} | {r['peak_mib'] / max(base, 1):.2f} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    text = render(run(args), args)
    from bench_parity import publish

    publish(text, "compare_modules: memory and time", args.no_write)


if __name__ == "__main__":
    main()
