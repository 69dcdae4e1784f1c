"""The HTML report of a conformance run (:func:`flashparity.kernels.conformance.conformance`): one
self-contained file (inline CSS and SVG, no script, no network) with the verdict and provenance, the
rules, the feature × dtype matrix, a section for each failing case (its reasons and its error against
the baseline's, rule by rule, on a log scale with the bound drawn), the unsupported cases grouped by
reason, and every case's ratios.

Every string that comes from the report (kernel names, provenance, reasons, exception messages: all
from code under test) is passed through :func:`flashparity._write.printable` and :func:`html.escape`.
Non-finite numbers are written as text and never reach an SVG coordinate.
"""

from __future__ import annotations

import html
import math
import os
from typing import Any, Callable

from .._write import printable

# (the report's types are flashparity.kernels.conformance's, which imports this module to render itself: the
# rules' factors and the dtypes' order come with the report, so nothing here imports it back)
ConformanceReport = CaseResult = Any

__all__ = ["render", "write"]

_RED, _GREEN, _BASE = "#c62828", "#2e7d32", "#78909c"

# The bar chart of one case: a label column, the plot, a column of values and one of ratios and bounds.
_CW, _LABEL_W, _VALUE_W, _RATIO_W, _ROW_H, _BAR_H, _TOP, _AXIS_H = 760, 132, 86, 110, 40, 13, 26, 24

#: (ratio key, label, error stat, baseline stat, factor, eps) of each rule drawn as bars: the cosine
#: rule is a ratio of similarities, not an error against a bound, and is listed with the ratios only.
def _rules(report: ConformanceReport) -> tuple:
    f = report.RULE_FACTORS  # {rule: (factor, eps)}
    return (("max", "max |out − gold|", "max_abs_diff", "baseline_max_abs_diff", *f["max"]),
            ("mean", "mean |out − gold|", "mean_abs_diff", "baseline_mean_abs_diff", *f["mean"]),
            ("lse", "max |lse − gold|", "lse_max_abs_diff", "baseline_lse_max_abs_diff", *f["lse"]))
_RATIO_KEYS = ("max", "mean", "lse", "cosine")


def _esc(x: Any) -> str:
    """Text from the report for HTML: control and bidi characters shown as escapes (as in the
    terminal report: they could reorder or hide what follows), then HTML-escaped."""
    return html.escape(printable(str(x)), quote=True)


def _fmt(x: float | None, digits: int = 3) -> str:
    """A number as text: NaN and the infinities spelled out (they never become coordinates)."""
    if x is None:
        return ""
    if x != x:
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "−inf"
    text = f"{x:.{digits}g}"
    if "e" in text:  # 1.95e+03 -> 1.95e3, 2.38e-07 -> 2.38e-7
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _c(v: float) -> str:
    """An SVG coordinate. Every caller passes a finite number; the guard keeps a bug from writing NaN
    into the picture (a browser drops the whole element, or the whole path, silently)."""
    return f"{v:.1f}" if math.isfinite(v) else "0"


def _passes(ratio: float | None) -> bool:
    return ratio is not None and ratio <= 1  # (NaN: not <= 1, a failure, as conformance judges it)


def _cell_class(cell: dict[str, int]) -> str:
    """Matrix colour: red when anything failed or raised, grey when nothing ran (only unsupported),
    green when every case that ran passed."""
    if cell["fail"] + cell["error"]:
        return "c-fail"
    return "c-pass" if cell["pass"] else "c-unsup"


# ---- the bar chart of one case -----------------------------------------------------------------------


def _decades(values: list[float]) -> tuple[int, int]:
    """The log10 range (whole decades) that holds every finite positive value."""
    logs = [math.log10(v) for v in values if math.isfinite(v) and v > 0]
    if not logs:
        return -1, 0
    lo, hi = math.floor(min(logs)), math.ceil(max(logs))
    return (lo, hi) if hi > lo else (lo, lo + 1)


def _chart(r: CaseResult, rules: tuple) -> str:
    """The kernel's error against the baseline's for each error rule of the case (bars from the
    left edge, log scale) with the rule's bound (factor × baseline + eps) as a dark line; '' when the
    case has no statistics (it raised, or its output had the wrong shape or dtype). The values sit in
    a column of their own, right of the plot: next to the bars, the bound line would cross them."""
    rows = []
    for key, label, err_key, base_key, factor, eps in rules:
        if err_key in r.stats and base_key in r.stats:
            err, base = float(r.stats[err_key]), float(r.stats[base_key])
            rows.append((key, label, err, base, factor * base + eps, r.ratios.get(key)))
    if not rows:
        return ""
    lo, hi = _decades([v for _, _, err, base, bound, _ in rows for v in (err, base, bound)])
    x0, x1 = _LABEL_W, _CW - _RATIO_W - _VALUE_W
    height = _TOP + len(rows) * _ROW_H + _AXIS_H

    def x(v: float) -> float:  # v finite and > 0
        return x0 + (x1 - x0) * (math.log10(v) - lo) / (hi - lo)

    out = [f'<svg class="bars" viewBox="0 0 {_CW} {height}" width="{_CW}" height="{height}" role="img" '
           f'aria-label="errors of {_esc(r.case.name)} against the baseline">',
           # legend
           f'<rect x="{x0}" y="6" width="12" height="10" fill="{_RED}"/>'
           f'<text x="{x0 + 16}" y="15" class="tick">kernel (red: over the bound, green: within)</text>'
           f'<rect x="{x0 + 262}" y="6" width="12" height="10" fill="{_BASE}"/>'
           f'<text x="{x0 + 278}" y="15" class="tick">baseline</text>'
           f'<line x1="{x0 + 336}" x2="{x0 + 336}" y1="4" y2="18" class="bound"/>'
           f'<text x="{x0 + 342}" y="15" class="tick">bound</text>'
           f'<text x="{x1 + 10}" y="15" class="tick">error</text>'
           f'<text x="{_CW - 4}" y="15" class="tick" text-anchor="end">error / bound</text>']
    step = max(1, math.ceil((hi - lo) / 8))
    axis_y = _TOP + len(rows) * _ROW_H - 8
    for k in range(lo, hi + 1, step):
        xk = x0 + (x1 - x0) * (k - lo) / (hi - lo)
        out.append(f'<line x1="{_c(xk)}" x2="{_c(xk)}" y1="{_TOP - 4}" y2="{axis_y}" class="grid"/>'
                   f'<text x="{_c(xk)}" y="{axis_y + 13}" class="tick" text-anchor="middle">1e{k}</text>')
    out.append(f'<line x1="{x0}" x2="{x1}" y1="{axis_y}" y2="{axis_y}" class="axis"/>'
               f'<text x="{_c((x0 + x1) / 2)}" y="{axis_y + 27}" class="tick" text-anchor="middle">'
               f'absolute error against the float64 gold (log scale)</text>')
    for i, (key, label, err, base, bound, ratio) in enumerate(rows):
        top = _TOP + i * _ROW_H
        ok = _passes(ratio)
        out.append(f'<text x="{x0 - 8}" y="{top + _BAR_H + 3}" class="label" text-anchor="end">{_esc(label)}</text>')
        for j, (v, colour, who) in enumerate(((err, _GREEN if ok else _RED, "kernel"), (base, _BASE, "baseline"))):
            y = top + j * (_BAR_H + 2)
            out.append(_bar(v, y, x, x0, x1, colour, f"{who} {label}: {_fmt(v, 6)}"))
            bad_value = who == "kernel" and not ok
            out.append(f'<text x="{x1 + 10}" y="{_c(y + _BAR_H - 3)}" class="val{" bad-t" if bad_value else ""}">'
                       f"{_esc(_fmt(v))}</text>")
        if math.isfinite(bound) and bound > 0:
            xb = x(bound)
            out.append(f'<line x1="{_c(xb)}" x2="{_c(xb)}" y1="{top - 3}" y2="{top + 2 * _BAR_H + 5}" class="bound">'
                       f"<title>bound {_esc(_fmt(bound, 6))}</title></line>")
        out.append(f'<text x="{_CW - 4}" y="{top + _BAR_H - 1}" class="ratio {"ok-t" if ok else "bad-t"}" '
                   f'text-anchor="end">{"✓" if ok else "✗"} {_esc(_fmt(ratio))}</text>'
                   f'<text x="{_CW - 4}" y="{top + 2 * _BAR_H + 1}" class="tick" text-anchor="end">'
                   f"bound {_esc(_fmt(bound))}</text>")
    out.append("</svg>")
    return "".join(out)


def _bar(v: float, y: float, x: Callable[[float], float], x0: float, x1: float, colour: str, title: str) -> str:
    """One bar: a finite positive value as a bar; 0 as '0 (exact)' at the left edge; an infinity as a
    bar to the edge ending in an arrow; NaN as red text (no bar)."""
    tip = f"<title>{_esc(title)}</title>"
    ty = y + _BAR_H - 3
    if v != v:
        return f'<text x="{x0 + 3}" y="{_c(ty)}" class="val bad-t">NaN (no bar){tip}</text>'
    if math.isinf(v):
        return (f'<path d="M{x0},{_c(y)} H{x1 - 6} L{x1},{_c(y + _BAR_H / 2)} L{x1 - 6},{_c(y + _BAR_H)} '
                f'H{x0} Z" fill="{colour}">{tip}</path>')
    if v <= 0:
        return f'<text x="{x0 + 3}" y="{_c(ty)}" class="val">0 (exact){tip}</text>'
    xe = max(x(v), x0 + 1.5)  # (the floor decade's own value: a sliver, still visible)
    return f'<rect x="{x0}" y="{_c(y)}" width="{_c(xe - x0)}" height="{_BAR_H}" fill="{colour}">{tip}</rect>'


# ---- the page ----------------------------------------------------------------------------------------


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;padding:0 24px;
  max-width:1120px;color:#212121;background:#fff}
h1{font-size:21px;margin:0 0 10px}
h2{font-size:17px;margin:28px 0 8px;padding-bottom:3px;border-bottom:1px solid #e0e0e0}
h3{font-size:14px;margin:0 0 6px;font-weight:600} h4{font-size:13px;margin:10px 0 4px}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.verdict{display:inline-block;padding:2px 12px;border-radius:4px;color:#fff;font-weight:700;vertical-align:2px}
.ok{background:#2e7d32} .bad{background:#c62828}
table.meta{border-collapse:collapse;margin:4px 0 10px} table.meta th{text-align:left;color:#616161;font-weight:500;
  padding:2px 16px 2px 0;vertical-align:top;white-space:nowrap} table.meta td{padding:2px 0;word-break:break-all}
.counts span{display:inline-block;margin:0 6px 4px 0;padding:2px 10px;border-radius:12px;font-weight:600;
  font-size:13px}
.n-pass{background:#e8f5e9;color:#1b5e20} .n-fail{background:#ffebee;color:#b71c1c}
.n-error{background:#fff3e0;color:#bf360c} .n-unsup{background:#eeeeee;color:#424242}
.notes{color:#616161;margin:6px 0 0 18px;padding:0}
dl.rules{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0}
dl.rules dt{font-weight:600} dl.rules dd{margin:0}
.hint{color:#616161;font-size:12.5px;margin:6px 0}
table.matrix{border-collapse:separate;border-spacing:3px} table.matrix th{font-weight:600;padding:3px 10px}
table.matrix th.f{text-align:left} table.matrix td{padding:4px 10px;border-radius:4px;text-align:center;
  white-space:nowrap;font-variant-numeric:tabular-nums;min-width:130px}
.c-pass{background:#c8e6c9} .c-fail{background:#ffcdd2} .c-unsup{background:#e0e0e0} .c-none{background:#fafafa}
.k{display:inline-block;min-width:40px} .k b{font-weight:700} .k.z{opacity:.35}
.k i{font-style:normal;color:#616161;font-size:11.5px}
.legend span{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin:0 4px 0 12px}
section.case{border:1px solid #e0e0e0;border-left:4px solid #c62828;border-radius:4px;padding:10px 14px;margin:12px 0}
section.case.err{border-left-color:#ef6c00}
.badge{display:inline-block;padding:0 7px;border-radius:3px;color:#fff;font-size:11.5px;font-weight:700;
  margin-right:6px;vertical-align:1px}
.b-fail{background:#c62828} .b-error{background:#ef6c00} .b-pass{background:#2e7d32} .b-unsupported{background:#9e9e9e}
ul.reasons{margin:2px 0 8px 18px;padding:0} ul.reasons li{margin:1px 0;word-break:break-word}
.bars{display:block;max-width:100%;height:auto} .bars .tick{font-size:10.5px;fill:#757575}
.bars .label{font-size:12px;fill:#424242} .bars .val{font-size:10.5px;fill:#424242}
.bars .ratio{font-size:12.5px;font-weight:700} .bars .grid{stroke:#eeeeee} .bars .axis{stroke:#bdbdbd}
.bars .bound{stroke:#212121;stroke-width:2;stroke-dasharray:3 2}
.ok-t{fill:#2e7d32;color:#2e7d32} .bad-t{fill:#c62828;color:#c62828}
.chips span{display:inline-block;margin:6px 6px 0 0;padding:1px 8px;border-radius:10px;font-size:12px;
  font-variant-numeric:tabular-nums}
.chips .r-ok{background:#e8f5e9;color:#1b5e20} .chips .r-bad{background:#ffebee;color:#b71c1c}
details{margin:6px 0} summary{cursor:pointer;font-weight:600}
ul.names{margin:2px 0 8px 18px;padding:0;columns:2 360px}
table.all{border-collapse:collapse;font-size:12.5px;width:100%}
table.all th,table.all td{padding:3px 8px;border-bottom:1px solid #eeeeee;text-align:right;
  font-variant-numeric:tabular-nums}
table.all th{background:#fafafa;position:sticky;top:0} table.all .l{text-align:left}
table.all td.l{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
table.all td.over{color:#b71c1c;font-weight:700} tr.v-fail td{background:#fff5f5} tr.v-error td{background:#fff8f0}
tr.v-unsupported td{color:#9e9e9e} a{color:#1565c0;text-decoration:none} a:hover{text-decoration:underline}
"""


def _counts(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    parts = [f'<span class="n-pass">{counts["pass"]} passed</span>',
             f'<span class="n-fail">{counts["fail"]} failed</span>',
             f'<span class="n-error">{_plural(counts["error"], "error")}</span>',
             f'<span class="n-unsup">{counts["unsupported"]} unsupported</span>']
    return f'<div class="counts">{"".join(parts)} <span class="n-unsup">{_plural(total, "case")}</span></div>'


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _matrix(report: ConformanceReport) -> str:
    """The feature × dtype table of report.summary(): pass ✓ / fail and error ✗ / unsupported –."""
    table = report.summary()
    order = report.DTYPE_ORDER
    dtypes = sorted({r.case.dtype for r in report.cases}, key=lambda d: order.index(d) if d in order else len(order))
    out = ['<table class="matrix"><tr><th class="f">feature</th>'
           + "".join(f"<th>{_esc(d)}</th>" for d in dtypes) + "</tr>"]
    for feature, row in table.items():
        cells = []
        for d in dtypes:
            cell = row.get(d)
            if cell is None:
                cells.append('<td class="c-none"></td>')
                continue
            bad = cell["fail"] + cell["error"]
            title = (f'{cell["pass"]} passed, {cell["fail"]} failed, {cell["error"]} errors, '
                     f'{cell["unsupported"]} unsupported')
            counts = "".join(f'<span class="k{" z" if n == 0 else ""}"><b>{n}</b> <i>{mark}</i></span>'
                             for n, mark in ((cell["pass"], "✓"), (bad, "✗"), (cell["unsupported"], "–")))
            cls = _cell_class(cell)
            bwd = cell.get("backward")
            if bwd is not None:  # (backward=True: the gradients' verdicts under the forward's)
                b_bad = bwd["fail"] + bwd["error"]
                title += (f'; gradients: {bwd["pass"]} passed, {bwd["fail"]} failed, {bwd["error"]} errors, '
                          f'{bwd["unsupported"]} unsupported')
                counts += '<br><span class="k">∇</span>' + "".join(
                    f'<span class="k{" z" if n == 0 else ""}"><b>{n}</b> <i>{mark}</i></span>'
                    for n, mark in ((bwd["pass"], "✓"), (b_bad, "✗"), (bwd["unsupported"], "–")))
                if b_bad:
                    cls = "c-fail"
            cells.append(f'<td class="{cls}" title="{title}">{counts}</td>')
        out.append(f'<tr><th class="f mono">{_esc(feature)}</th>{"".join(cells)}</tr>')
    out.append("</table>")
    out.append('<p class="hint legend">Each cell: passed ✓, failed or raised ✗, unsupported –'
               + (' (∇: the gradients dq, dk, dv)' if report.backward else '') + '. A case counts '
               'under every feature it exercises.<span class="c-pass"></span>every case that ran passed'
               '<span class="c-fail"></span>a failure or error<span class="c-unsup"></span>only unsupported</p>')
    return "".join(out)


def _ratio_chips(r: CaseResult) -> str:
    chips = []
    for key in _RATIO_KEYS:
        if key in r.ratios:
            v = r.ratios[key]
            chips.append(f'<span class="{"r-ok" if _passes(v) else "r-bad"}">{key} {_esc(_fmt(v))}</span>')
    if r.deterministic is not None:
        chips.append(f'<span class="{"r-ok" if r.deterministic else "r-bad"}">'
                     f'deterministic: {"yes" if r.deterministic else "no"}</span>')
    if not chips:
        return ""
    return f'<div class="chips">ratios (error / bound, at most 1 passes): {"".join(chips)}</div>'


def _case_section(i: int, r: CaseResult, rules: tuple) -> str:
    reasons = [p for p in r.reason.split("; ") if p] or ["(no reason given)"]
    chart = _chart(r, rules)
    if not chart:
        chart = ('<p class="hint">No statistics: the kernel raised.</p>' if r.verdict == "error" else
                 '<p class="hint">No statistics: the output was not compared (see the reason).</p>')
    return (f'<section class="case{" err" if r.verdict == "error" else ""}" id="case-{i}">'
            f'<h3><span class="badge b-{_esc(r.verdict)}">{_esc(r.verdict.upper())}</span>'
            f'<span class="mono">{_esc(r.case.name)}</span></h3>'
            f'<ul class="reasons">{"".join(f"<li>{_esc(p)}</li>" for p in reasons)}</ul>'
            f"{chart}{_ratio_chips(r)}</section>")


def _unsupported(report: ConformanceReport) -> str:
    groups: dict[str, list[str]] = {}
    for r in report.cases:
        if r.verdict == "unsupported":
            groups.setdefault(r.reason, []).append(r.case.name)
    if not groups:
        return ""
    n = sum(len(v) for v in groups.values())
    out = [f"<h2>Unsupported cases ({n})</h2>"
           '<p class="hint">Outside what the adapter declares or the kernel accepts: listed, never failures.</p>'
           f"<details><summary>{_plural(n, 'unsupported case')}, {_plural(len(groups), 'reason')}</summary>"]
    for reason, names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        out.append(f"<h4>{_esc(reason or '(no reason given)')} ({len(names)})</h4><ul class=\"names mono\">"
                   + "".join(f"<li>{_esc(name)}</li>" for name in names) + "</ul>")
    out.append("</details>")
    return "".join(out)


def _backward_section(i: int, r: CaseResult) -> str:
    """A case whose gradients failed or raised: the reasons and each gradient's error, baseline and ratio."""
    b = r.backward
    reasons = [p for p in b["reason"].split("; ") if p] or ["(no reason given)"]
    rows = "".join(f'<tr><td class="l">{g}</td><td>{_esc(_fmt(b[g]["max_abs_diff"]))}</td>'
                   f'<td>{_esc(_fmt(b[g]["baseline_max_abs_diff"]))}</td>'
                   f'<td{"" if _passes(b[g]["ratio"]) else " class=over"}>{_esc(_fmt(b[g]["ratio"]))}</td></tr>'
                   for g in ("dq", "dk", "dv") if b.get(g))
    table = ('<table class="all"><tr><th class="l">gradient</th><th>max |dX − gold|</th><th>baseline</th>'
             f"<th>ratio</th></tr>{rows}</table>") if rows else ""
    return (f'<section class="case{" err" if b["verdict"] == "error" else ""}" id="bwd-{i}">'
            f'<h3><span class="badge b-{_esc(b["verdict"])}">{_esc(b["verdict"].upper())}</span>'
            f'<span class="mono">∇ {_esc(r.case.name)}</span></h3>'
            f'<ul class="reasons">{"".join(f"<li>{_esc(p)}</li>" for p in reasons)}</ul>{table}</section>')


def _all_cases(report: ConformanceReport) -> str:
    bwd = report.backward
    out = ['<table class="all"><tr><th class="l">#</th><th class="l">case</th><th class="l">verdict</th>'
           "<th>max ratio</th><th>mean ratio</th><th>lse ratio</th><th>cosine ratio</th><th>seconds</th>"
           + ('<th class="l">backward</th><th>dq ratio</th><th>dk ratio</th><th>dv ratio</th>' if bwd else "")
           + "</tr>"]
    for i, r in enumerate(report.cases):
        name = _esc(r.case.name)
        if r.verdict in ("fail", "error"):
            name = f'<a href="#case-{i}">{name}</a>'
        cells = []
        for key in _RATIO_KEYS:
            v = r.ratios.get(key)
            cells.append("<td></td>" if v is None else f'<td{"" if _passes(v) else " class=over"}>{_esc(_fmt(v))}</td>')
        seconds = f"{r.seconds:.3f}" if r.verdict != "unsupported" and math.isfinite(r.seconds) else ""
        if bwd:
            b = r.backward or {"verdict": ""}
            verdict = _esc(b["verdict"])
            if b["verdict"] in ("fail", "error"):
                verdict = f'<a href="#bwd-{i}">{verdict}</a>'
            cells.append(f'<td>{seconds}</td><td class="l">'
                         + (f'<span class="badge b-{_esc(b["verdict"])}">{verdict}</span>' if b["verdict"] else "")
                         + "</td>")
            for g in ("dq", "dk", "dv"):
                v = (b.get(g) or {}).get("ratio")
                cells.append("<td></td>" if v is None else
                             f'<td{"" if _passes(v) else " class=over"}>{_esc(_fmt(v))}</td>')
            seconds_cell = ""
        else:
            seconds_cell = f"<td>{seconds}</td>"
        out.append(f'<tr class="v-{_esc(r.verdict)}"><td class="l">{i}</td><td class="l">{name}</td>'
                   f'<td class="l"><span class="badge b-{_esc(r.verdict)}">{_esc(r.verdict)}</span></td>'
                   f'{"".join(cells)}{seconds_cell}</tr>')
    out.append("</table>")
    return "".join(out)


def render(report: ConformanceReport) -> str:
    """The report as one HTML document (a str)."""
    d = report.to_dict()
    counts = report.counts()
    ok = report.ok
    parts = ["<!doctype html><html lang=en><head><meta charset=utf-8>",
             f"<title>flashparity conformance: {_esc(report.kernel)} — {'PASS' if ok else 'FAIL'}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>flashparity conformance <span class='verdict {'ok' if ok else 'bad'}'>"
             f"{'PASS' if ok else 'FAIL'}</span></h1>",
             '<table class="meta">'
             f'<tr><th>kernel</th><td class="mono">{_esc(report.kernel)}</td></tr>'
             f'<tr><th>provenance</th><td class="mono">{_esc(report.kernel_source)}</td></tr>'
             f'<tr><th>convention</th><td class="mono">{_esc(report.convention)}</td></tr>'
             f'<tr><th>device</th><td class="mono">{_esc(report.device)}</td></tr></table>',
             _counts(counts)]
    if report.backward:
        parts.append('<p class="hint">Gradients (dq, dk, dv):</p>' + _counts(report.backward_counts()))
    if not ok and not counts["fail"] + counts["error"]:  # (FAIL with nothing failed: no case ran at all)
        parts.append('<p class="hint">No case passed: a kernel that runs none of the suite does not conform.</p>')
    if report.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("<h2>Rules</h2><dl class=\"rules\">"
                 + "".join(f"<dt>{_esc(k)}</dt><dd class=\"mono\">{_esc(v)}</dd>" for k, v in d["rules"].items())
                 + "</dl><p class=\"hint\">Each rule's ratio is error / bound: at most 1 passes. The max, mean and "
                 "lse rules bound the kernel's error by the baseline's; the cosine ratio is "
                 "(0.99 × baseline's cosine) / the kernel's.</p>")
    parts.append("<h2>Features × dtypes</h2>" + _matrix(report))
    bad = [(i, r) for i, r in enumerate(report.cases) if r.verdict in ("fail", "error")]
    if bad:
        parts.append(f"<h2>Failing cases ({len(bad)})</h2>")
        parts += [_case_section(i, r, _rules(report)) for i, r in bad]
    bad_bwd = [(i, r) for i, r in enumerate(report.cases) if r.backward_verdict in ("fail", "error")]
    if bad_bwd:
        parts.append(f"<h2>Failing gradients ({len(bad_bwd)})</h2>")
        parts += [_backward_section(i, r) for i, r in bad_bwd]
    parts.append(_unsupported(report))
    parts.append(f"<h2>All cases ({len(report.cases)})</h2>" + _all_cases(report))
    parts.append("</body></html>\n")
    return "".join(parts)


def write(report: ConformanceReport, path: str | os.PathLike) -> None:
    """Write the self-contained HTML report to ``path`` the way every flashparity output is written
    (:func:`flashparity._write.write_atomically`: never half a file; /dev/stdout and pipes in place)."""
    from .._write import write_atomically

    data = render(report).encode("utf-8")
    write_atomically(os.fspath(path), lambda fh: fh.write(data))
