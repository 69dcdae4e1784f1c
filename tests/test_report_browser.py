"""The HTML report of a module comparison, opened in headless Chromium (Debian `chromium`): the
screenshot is decoded and must show the report, not a blank page."""

from __future__ import annotations

import shutil
import subprocess

import pytest

torch = pytest.importorskip("torch")

import flashparity as fp  # noqa: E402
from png import png_pixels  # noqa: E402
from tiny_transformer import pair  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian package `chromium`)")
def test_the_report_renders_in_headless_chromium(tmp_path):
    a, b, ids = pair(7)
    with torch.no_grad():
        b.get_submodule("layers.2.mlp.down").weight[3, 5] += 1.0
    rep = fp.compare_modules(a, b, ids)
    html = tmp_path / "report.html"
    rep.to_html(html)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1000,900", f"--screenshot={shot}", html.as_uri()],
                   check=True, capture_output=True, timeout=120)
    w, h, ch, px = png_pixels(shot.read_bytes())
    assert (w, h) == (1000, 900)
    pixels = [px[i:i + 3] for i in range(0, len(px), ch)]
    white = sum(p == b"\xff\xff\xff" for p in pixels)
    red = sum(p[0] > 150 and p[1] < 90 and p[2] < 90 for p in pixels)  # the verdict, failing points, divergence line
    green = sum(p[1] > 90 and p[0] < 90 and p[2] < 90 for p in pixels)  # passing points
    assert white < 0.97 * len(pixels), "the page is blank"
    assert red > 500 and green > 50, (red, green)
