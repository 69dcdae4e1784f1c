"""The HTML report of a module comparison: one self-contained file (inline SVG and CSS, no script, no
network) with the error along execution order, the |a-b| histograms of the worst outputs, and the
table."""

from __future__ import annotations

import html
import math
from typing import Any

from ..parity import HISTOGRAM_BINS

_W, _H, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 960, 150, 64, 16, 18, 22
_RED, _GREEN, _BLUE, _GREY = "#c62828", "#2e7d32", "#1565c0", "#9e9e9e"


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: float) -> str:
    return "NaN" if x != x else f"{x:.4g}"


_LANES = (("forward", "Forward: module outputs in execution order"),
          ("backward", "Backward: the gradient each module sends back into its inputs, in backward execution order"),
          ("parameter", "Parameter gradients (.grad)"))


def _series(rows) -> list[tuple[str, str, list[tuple[int, float | None, bool]]]]:
    """(title, y label, [(x, value or None, ok)]) per panel; values on a log10 axis."""
    panels = [("max |a − b|  (grey at the floor: exactly 0; red triangles on top: NaN or inf)", "log10", [(i, e.stats.max_abs_diff if e.stats else None, e.ok) for i, e in enumerate(rows)]),
              ("1 − cosine", "log10", [(i, (1.0 - e.stats.cosine_sim) if e.stats else None, e.ok)
                                       for i, e in enumerate(rows)])]
    if any(e.ref is not None for e in rows):
        panels.append(("rule ratio: max|b−gold| / (2·max|a−gold| + ε); fails above 1", "log10",
                       [(i, e.ref["ratio"] if e.ref else None, e.ok) for i, e in enumerate(rows)]))
    return panels


def _panel(title: str, points: list[tuple[int, float | None, bool]], n: int, first: int | None,
           threshold: float | None, keys: list[str], xlabel: str = "execution order") -> str:
    def logv(v: float) -> float | None:
        if v is None or not math.isfinite(v) or v <= 0:  # (NaN and infinities: marks on top; 0: the floor)
            return None
        return math.log10(max(v, 1e-300))

    vals = [logv(v) for _, v, _ in points]
    finite = [v for v in vals if v is not None]
    lo = math.floor(min(finite)) if finite else -1
    hi = math.ceil(max(finite)) if finite else 0
    if threshold is not None:
        lo, hi = min(lo, math.floor(math.log10(threshold))), max(hi, math.ceil(math.log10(threshold)))
    if hi <= lo:
        hi = lo + 1
    iw, ih = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def x(i: int) -> float:
        return _PAD_L + (iw * (i + 0.5) / max(n, 1))

    def y(v: float) -> float:
        return _PAD_T + ih * (1 - (v - lo) / (hi - lo))

    out = [f'<svg class="panel" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
           f'aria-label="{_esc(title)}">',
           f'<text x="{_PAD_L}" y="12" class="ptitle">{_esc(title)}</text>']
    step = max(1, (hi - lo) // 6)
    for k in range(lo, hi + 1, step):
        out.append(f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y(k):.1f}" y2="{y(k):.1f}" class="grid"/>'
                   f'<text x="{_PAD_L - 6}" y="{y(k) + 4:.1f}" class="tick" text-anchor="end">1e{k}</text>')
    if threshold is not None:
        t = math.log10(threshold)
        out.append(f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y(t):.1f}" y2="{y(t):.1f}" class="thr"/>')
    if first is not None:
        out.append(f'<line x1="{x(first):.1f}" x2="{x(first):.1f}" y1="{_PAD_T}" y2="{_H - _PAD_B}" class="first"/>')
    path = []
    for (i, v, ok), lv in zip(points, vals):
        if lv is None:
            if v is not None and not math.isfinite(v):  # NaN or an infinity: a red triangle on top
                xi = x(i)
                out.append(f'<path d="M{xi - 4:.1f},{_PAD_T} L{xi + 4:.1f},{_PAD_T} L{xi:.1f},{_PAD_T + 7} Z" '
                           f'fill="{_RED}"><title>#{i} {_esc(keys[i])}: {_fmt(v)}</title></path>')
            elif v is not None and v == 0:
                out.append(f'<circle cx="{x(i):.1f}" cy="{_H - _PAD_B:.1f}" r="2.5" fill="{_GREY}"/>')
            continue
        path.append(f"{'M' if not path else 'L'}{x(i):.1f},{y(lv):.1f}")
        out.append(f'<circle cx="{x(i):.1f}" cy="{y(lv):.1f}" r="{2.5 if ok else 4}" fill="{_GREEN if ok else _RED}">'
                   f'<title>#{i} {_esc(keys[i])}: {_fmt(v)}</title></circle>')
    if path:
        out.insert(3, f'<path d="{" ".join(path)}" class="line"/>')
    out.append(f'<text x="{_W - _PAD_R}" y="{_H - 6}" class="tick" text-anchor="end">{_esc(xlabel)} →</text></svg>')
    return "".join(out)


def _histogram(entry) -> str:
    hist = entry.stats.abs_diff_histogram
    counts = [hist[label] for label in HISTOGRAM_BINS]
    nz = [i for i, c in enumerate(counts) if c and HISTOGRAM_BINS[i] != "0"]  # (exact zeros: in the caption)
    if not nz:
        return ""
    a, b = max(0, nz[0] - 1), min(len(counts), nz[-1] + 2)
    w, h, pad = 300, 120, 20
    bw = (w - 2 * pad) / (b - a)
    top = max(math.log10(c + 1) for c in counts[a:b]) or 1
    out = [f'<figure class="hist"><svg viewBox="0 0 {w} {h + 34}" width="{w}" height="{h + 34}" role="img" '
           f'aria-label="histogram of |a-b| for {_esc(entry.key)}">']
    for j, i in enumerate(range(a, b)):
        c = counts[i]
        bh = (h - pad) * math.log10(c + 1) / top
        color = _RED if HISTOGRAM_BINS[i] == "nan" else _BLUE
        out.append(f'<rect x="{pad + j * bw:.1f}" y="{h - bh:.1f}" width="{max(bw - 1, 1):.1f}" height="{bh:.1f}" '
                   f'fill="{color}"><title>{_esc(HISTOGRAM_BINS[i])}: {c:,}</title></rect>')
    out.append(f'<text x="{pad}" y="{h + 14}" class="tick">{_esc(HISTOGRAM_BINS[a])}</text>'
               f'<text x="{w - pad}" y="{h + 14}" class="tick" text-anchor="end">{_esc(HISTOGRAM_BINS[b - 1])}</text>'
               f'<text x="{w / 2}" y="{h + 30}" class="tick" text-anchor="middle">|a − b| (log count)</text>')
    out.append(f"</svg><figcaption>{_esc(entry.key)}<br>max {_fmt(entry.stats.max_abs_diff)}, "
               f"{entry.stats.mismatches:,} of {entry.stats.numel:,} mismatched, {hist['0']:,} exactly equal"
               "</figcaption></figure>")
    return "".join(out)


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#212121;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.ok{background:#2e7d32} .bad{background:#c62828} .meta{color:#616161}
.panel{display:block;margin:4px 0} .ptitle{font-size:12px;font-weight:600;fill:#424242}
.tick{font-size:10px;fill:#757575} .grid{stroke:#eee} .thr{stroke:#c62828;stroke-dasharray:4 3}
.first{stroke:#c62828;stroke-width:2} .line{fill:none;stroke:#90a4ae;stroke-width:1}
.hists{display:flex;flex-wrap:wrap;gap:12px} .hist{margin:0} figcaption{font-size:11px;color:#424242;max-width:300px}
table{border-collapse:collapse;font-size:12px} th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right}
th{background:#fafafa;position:sticky;top:0} td.l,th.l{text-align:left;font-family:ui-monospace,monospace}
tr.fail td{background:#ffebee}
"""


def render_html(report) -> str:
    """The report as one HTML document."""
    d = report.to_dict()
    fd = report.first_divergence
    fbd = report.first_backward_divergence
    with_ref = any(e.ref is not None for e in report.entries)
    parts = ["<!doctype html><html lang=en><head><meta charset=utf-8><title>flashparity: module comparison</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>flashparity module comparison <span class='verdict {'ok' if report.ok else 'bad'}'>"
             f"{'MATCH' if report.ok else 'DIVERGED'}</span></h1>"]
    meta = report.meta
    counts = {phase: sum(e.phase == phase for e in report.entries) for phase, _ in _LANES}
    what = (f"{counts['forward']} module outputs compared in execution order"
            + (f", {counts['backward']} module gradients in backward order and {counts['parameter']} parameter "
               "gradients" if counts["backward"] or counts["parameter"] else ""))
    parts.append(f"<p class=meta>{what}; "
                 + (f"first divergence: <b>{_esc(fd.key)}</b> ({_esc(fd.rule)})" if fd else "no divergence")
                 + (f"; first backward divergence: <b>{_esc(fbd.key)}</b>" if fbd is not None and fbd is not fd else "")
                 + f". torch {_esc(meta.get('torch', '?'))}, devices {_esc(', '.join(meta.get('devices', [])) or '?')}, "
                 f"dtypes {_esc(' / '.join(str(x) for x in meta.get('dtypes', [])))}.</p>")
    for side in ("a", "b", "reference"):
        keys = d.get(f"only_in_{side}") or []
        if keys:
            parts.append(f"<p class=meta>Only in {side}: {_esc(', '.join(keys[:30]))}{' …' if len(keys) > 30 else ''}</p>")
    lanes = [(phase, heading, [e for e in report.entries if e.phase == phase]) for phase, heading in _LANES]
    lanes = [lane for lane in lanes if lane[2]]
    if len(lanes) == 1 and lanes[0][0] == "forward":
        lanes = [("forward", "Error along execution order", lanes[0][2])]
    for _phase, heading, rows in lanes:
        parts.append(f"<h2>{_esc(heading)}</h2>")
        first = next((i for i, e in enumerate(rows) if not e.ok), None)
        for title, _, points in _series(rows):
            thr = 1.0 if title.startswith("rule ratio") else None
            parts.append(_panel(title, points, len(rows), first, thr, [e.key for e in rows],
                                {"backward": "backward execution order", "parameter": "the model's parameter order"}
                                .get(_phase, "execution order")))
    worst = sorted((e for e in report.entries if e.stats is not None), key=lambda e: (e.ok, -e.badness))[:6]
    if worst:
        parts.append("<h2>|a − b| histograms of the worst outputs</h2><div class=hists>")
        parts += [_histogram(e) for e in worst]
        parts.append("</div>")
    parts.append("<h2>All outputs, worst first</h2><table><tr><th class=l>#</th><th class=l>module output</th>"
                 "<th>ok</th><th>max |a−b|</th><th>cosine</th><th>mismatched</th>"
                 + ("<th>max|a−gold|</th><th>max|b−gold|</th><th>ratio</th>" if with_ref else "")
                 + "<th class=l>rule</th></tr>")
    for i, e in sorted(enumerate(report.entries), key=lambda t: (t[1].ok, -t[1].badness, t[0])):
        cls = "" if e.ok else " class=fail"
        if e.stats is None:
            parts.append(f"<tr{cls}><td class=l>{i}</td><td class=l>{_esc(e.key)}</td><td>{'yes' if e.ok else 'NO'}</td>"
                         f"<td colspan={7 if with_ref else 4} class=l>{_esc(e.error or e.rule)}</td></tr>")
            continue
        s = e.stats
        ref = (f"<td>{_fmt(e.ref['err_a'])}</td><td>{_fmt(e.ref['err_b'])}</td><td>{_fmt(e.ref['ratio'])}</td>"
               if with_ref and e.ref else ("<td></td><td></td><td></td>" if with_ref else ""))
        parts.append(f"<tr{cls}><td class=l>{i}</td><td class=l>{_esc(e.key)}</td><td>{'yes' if e.ok else 'NO'}</td>"
                     f"<td>{_fmt(s.max_abs_diff)}</td><td>{s.cosine_sim:.8f}</td>"
                     f"<td>{s.mismatches:,} / {s.numel:,}</td>{ref}<td class=l>{_esc(e.rule)}</td></tr>")
    parts.append("</table></body></html>\n")
    return "".join(parts)
