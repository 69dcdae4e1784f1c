"""The HTML report of a module comparison, opened in headless Chromium (Debian `chromium`): the
screenshot is decoded and must show the report, not a blank page."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib

import pytest

torch = pytest.importorskip("torch")

import flashparity as fp  # noqa: E402
from tiny_transformer import pair  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def png_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, channels, raw rows) of an 8-bit non-interlaced RGB/RGBA PNG, unfiltered."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            ch = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride = zlib.decompress(idat), width * ch
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b, c = prev[i], prev[i - ch] if i >= ch else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return width, height, ch, bytes(out)


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
