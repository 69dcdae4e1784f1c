"""The HTML report of a conformance run (flashparity.kernels.conformance_html): built from real runs (a sound
built-in kernel, a kernel with a wrong softmax scale, one that declines head dims over 64, one whose
outputs are NaN and inf), its content checked (escaping, the matrix, a section per failing case,
no NaN in SVG coordinates), and opened in headless Chromium (Debian `chromium`): the screenshot is
decoded and must show the report, not a blank page."""

from __future__ import annotations

import html
import math
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import flashparity as fp
from flashparity.kernels import conformance_html
from flashparity.kernels.conformance import Case, CaseResult, ConformanceReport, conformance, suite_cases
from emulation import emulated_cpu
from png import png_pixels

pytestmark = pytest.mark.skipif(emulated_cpu(), reason="an HTML page and a browser: run natively")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CAPS = {"window": True, "softcap": True, "alibi": True, "lse": True}
SCRIPT_REASON = "head_dim > 64 <script>alert('x')</script>"


def scaled(q, k, v, *, causal, softmax_scale, window_size=(-1, -1), softcap=0.0, alibi_slopes=None):
    """A bshd-numpy kernel whose softmax scale is 1% too large: every case fails (one with a single
    key only through its LSE)."""
    return fp.attention(q, k, v, impl="naive", causal=causal, window=window_size, softcap=softcap,
                        alibi_slopes=alibi_slopes, softmax_scale=softmax_scale * 1.01, return_lse=True)


def small_heads(q, k, v, *, causal, softmax_scale, window_size=(-1, -1), softcap=0.0, alibi_slopes=None):
    """A sound kernel that declines head dims over 64 (with a reason that is also an HTML injection)."""
    if q.shape[-1] > 64:
        raise NotImplementedError(SCRIPT_REASON)
    return fp.attention(q, k, v, impl="naive", causal=causal, window=window_size, softcap=softcap,
                        alibi_slopes=alibi_slopes, softmax_scale=softmax_scale, return_lse=True)


def nonfinite(q, k, v, *, causal, softmax_scale):
    """By seqlen_q: 5, NaN outputs and an infinite LSE; 6, some infinite outputs and a NaN LSE; 7, a
    crash; 8, the wrong shape; otherwise sound."""
    sq = q.shape[1]
    out, lse = fp.attention(q, k, v, causal=causal, softmax_scale=softmax_scale, return_lse=True)
    if sq == 5:
        out[...], lse[...] = np.nan, np.inf
    elif sq == 6:
        out[:, :2], lse[..., :1] = np.inf, np.nan
    elif sq == 7:
        raise RuntimeError("CUDA error: <b>illegal</b> memory access\u202e")
    elif sq == 8:
        return np.ascontiguousarray(out.swapaxes(1, 2)), lse
    return out, lse


def dense(dtypes: list[str]) -> list[Case]:
    """The quick suite's dense cases (the bshd conventions list varlen and paged ones as unsupported)."""
    return [c for c in suite_cases("quick", dtypes) if c.kind not in ("varlen", "paged")]


@pytest.fixture(scope="module")
def reports() -> dict[str, ConformanceReport]:
    nf = conformance(nonfinite, convention="bshd-numpy", capabilities={"lse": True},
                     suite=[Case(seqlen_q=s, seqlen_k=9) for s in (5, 6, 7, 8, 9)])
    # (and a baseline that is itself infinite: the bound is then no line, and said in words)
    nf.cases.append(CaseResult(Case(seed=99), "fail", "synthetic", ratios={"max": math.nan, "mean": 0.0},
                               stats={"max_abs_diff": 0.0, "baseline_max_abs_diff": math.inf,
                                      "mean_abs_diff": 1e-300, "baseline_mean_abs_diff": 1e300}))
    return {
        "flash2": conformance("flashparity:flash2", suite="quick", dtypes=["float32"]),
        "scaled": conformance(scaled, convention="bshd-numpy", suite=dense(["float32"]), capabilities=CAPS),
        "small_heads": conformance(small_heads, convention="bshd-numpy", suite=dense(["float32", "bfloat16"]),
                                   capabilities=CAPS),
        "nonfinite": nf,
    }


SVG_COORDS = re.compile(r'\b(x|y|x1|x2|y1|y2|cx|cy|r|width|height|d|points|viewBox)="([^"]*)"')


def svg_coordinates(page: str) -> list[tuple[str, str]]:
    """(attribute, value) of every geometry attribute inside the page's SVG elements."""
    return [m.groups() for svg in re.findall(r"<svg\b.*?</svg>", page, re.S) for m in SVG_COORDS.finditer(svg)]


def section(page: str, i: int) -> str:
    m = re.search(rf'<section class="case[^"]*" id="case-{i}">(.*?)</section>', page, re.S)
    assert m, f"no section for case {i}"
    return m.group(1)


def test_header_matrix_and_sections_of_a_failing_kernel(reports):
    rep = reports["scaled"]
    page = conformance_html.render(rep)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    # self-contained: no script, no external resource
    assert "<script" not in page and "src=" not in page and "http" not in page.replace("http-equiv", "")
    assert "<link" not in page and "url(" not in page
    assert "verdict bad'>FAIL</span>" in page
    for text in (rep.kernel, rep.kernel_source, rep.convention, rep.device):
        assert html.escape(text) in page
    c = rep.counts()
    assert f"{c['fail']} failed" in page and c["pass"] == 0 and c["unsupported"] == 0
    for rule in rep.to_dict()["rules"].values():
        assert html.escape(rule) in page
    # the matrix: one row per feature, every cell red (each case failed)
    matrix = re.search(r'<table class="matrix">(.*?)</table>', page, re.S).group(1)
    for feature in rep.summary():
        row = re.search(rf'<tr><th class="f mono">{re.escape(feature)}</th>(.*?)</tr>', matrix).group(1)
        assert row.count('<td class="c-fail"') == 1, (feature, row)
    # a section for each failing case: its name, each reason, a chart with a bar per rule and a bound line
    bad = [(i, r) for i, r in enumerate(rep.cases) if r.verdict in ("fail", "error")]
    assert len(bad) == len(rep.cases) == 12 and f"Failing cases ({len(bad)})" in page
    for i, r in bad:
        body = section(page, i)
        assert html.escape(r.case.name) in body
        for reason in r.reason.split("; "):
            assert html.escape(reason) in body
        assert "<svg" in body and body.count('class="bound"') >= 4  # (legend + max, mean, lse)
        assert "max |lse − gold|" in body and f">lse {conformance_html._fmt(r.ratios['lse'])}<" in body
        assert f'href="#case-{i}"' in page  # (the table links to it)
    # q1-k1: the output is v itself (exact), only the LSE shows the scale
    one_key = section(page, 0)
    assert "0 (exact)" in one_key and "✗" in one_key and "✓ 0" in one_key


def test_unsupported_cases_are_grouped_and_reasons_escaped(reports):
    rep = reports["small_heads"]
    page = conformance_html.render(rep)
    assert rep.ok and "verdict ok'>PASS</span>" in page
    assert "<script>" not in page and "alert('x')" not in page
    assert html.escape(SCRIPT_REASON) in page
    unsupported = [r for r in rep.cases if r.verdict == "unsupported"]
    details = re.search(r"<details><summary>(.*?)</summary>(.*?)</details>", page, re.S)
    assert details and details.group(1) == f"{len(unsupported)} unsupported cases, 1 reason"
    assert f"{html.escape(SCRIPT_REASON)} ({len(unsupported)})" in details.group(2)
    for r in unsupported:
        assert html.escape(r.case.name) in details.group(2)
    assert "Failing cases" not in page
    # grey where nothing ran (the strided case has head_dim 96), green where every case that ran passed
    matrix = re.search(r'<table class="matrix">(.*?)</table>', page, re.S).group(1)
    assert re.search(r'<th class="f mono">strided</th><td class="c-unsup"[^>]*>.*?<td class="c-unsup"', matrix)
    assert re.search(r'<th class="f mono">causal</th><td class="c-pass"[^>]*>.*?<td class="c-pass"', matrix)
    assert "<th>float32</th><th>bfloat16</th>" in matrix
    # the full table: every case, with its verdict
    table = re.search(r'<table class="all">(.*?)</table>', page, re.S).group(1)
    assert table.count("<tr class=") == len(rep.cases)


def test_non_finite_numbers_are_text_never_coordinates(reports):
    rep = reports["nonfinite"]
    assert [r.verdict for r in rep.cases] == ["fail", "fail", "error", "fail", "pass", "fail"]
    assert math.isnan(rep.cases[0].stats["max_abs_diff"]) and math.isinf(rep.cases[1].stats["max_abs_diff"])
    page = conformance_html.render(rep)
    coords = svg_coordinates(page)
    assert len(coords) > 100
    for name, value in coords:
        assert not re.search(r"nan|inf", value, re.I), (name, value)
        for number in re.findall(r"-?[\d.]+(?:e-?\d+)?", value):
            assert math.isfinite(float(number)), (name, value)
    nan_case, inf_case = section(page, 0), section(page, 1)
    assert "NaN (no bar)" in nan_case and ">✗ NaN<" in nan_case and ">✗ inf<" in nan_case  # (the LSE: inf)
    assert "<path" in inf_case and ">inf<" in inf_case  # an infinite error: a bar to the edge, an arrow
    assert "bound inf" in section(page, 5) and "1e-300" in section(page, 5)
    crash = section(page, 2)
    assert "No statistics: the kernel raised." in crash and "<b>" not in crash
    assert html.escape("CUDA error: <b>illegal</b> memory access\\u202e") in crash  # (a bidi override, shown)
    assert "output shape (1, 4, 8, 64), expected (1, 8, 4, 64)" in section(page, 3)
    assert 'id="case-4"' not in page  # (the passing case: in the table only)


def test_a_passing_builtin_kernel_and_write(reports, tmp_path):
    rep = reports["flash2"]
    page = conformance_html.render(rep)
    assert rep.ok and "verdict ok'>PASS</span>" in page and "Failing cases" not in page
    assert "Unsupported cases" not in page and "flashparity:flash2" in page
    assert page.count('<td class="c-pass"') == len(rep.summary())
    out = tmp_path / "report.html"
    conformance_html.write(rep, out)
    assert out.read_text("utf-8") == page
    os.chmod(out, 0o600)  # (written again: replaced whole, keeping the file's mode, as every output is)
    conformance_html.write(reports["scaled"], str(out))
    assert out.read_text("utf-8") == conformance_html.render(reports["scaled"])
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name != "report.html"]  # (no temporary left)


# ---- in a browser ---------------------------------------------------------------------------------------


def screenshot(page: str, tmp_path, size: tuple[int, int]) -> list[bytes]:
    """The page rendered by headless Chromium at `size`: its RGB pixels."""
    path = tmp_path / "report.html"
    path.write_text(page, "utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size[0]},{size[1]}", f"--screenshot={shot}", path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    w, h, ch, px = png_pixels(shot.read_bytes())
    assert (w, h) == size
    return [px[i:i + 3] for i in range(0, len(px), ch)]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian package `chromium`)")
def test_the_report_renders_in_headless_chromium(reports, tmp_path):
    # a failing kernel: the FAIL badge, a red matrix and red bars (failing sections start near the top)
    pixels = screenshot(conformance_html.render(reports["scaled"]), tmp_path, (1000, 1400))
    white = sum(p == b"\xff\xff\xff" for p in pixels)
    red = sum(p[0] > 150 and p[1] < 90 and p[2] < 90 for p in pixels)  # the verdict, failing bars
    pink = sum(p == b"\xff\xcd\xd2" for p in pixels)  # the matrix's failing cells (#ffcdd2)
    assert white < 0.95 * len(pixels), "the page is blank"
    assert red > 2000 and pink > 20000, (red, pink)
    assert len(set(pixels)) > 50, "too few colours for text, a table and charts"
    # a passing kernel with unsupported cases: green and grey cells, no red
    pixels = screenshot(conformance_html.render(reports["small_heads"]), tmp_path, (1000, 1400))
    green = sum(p == b"\xc8\xe6\xc9" for p in pixels)  # #c8e6c9
    grey = sum(p == b"\xe0\xe0\xe0" for p in pixels)  # #e0e0e0
    pink = sum(p == b"\xff\xcd\xd2" for p in pixels)  # (the legend's swatch only)
    assert green > 20000 and grey > 2000 and pink < 200, (green, grey, pink)
