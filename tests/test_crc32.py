"""_core.crc32 (the zip CRC-32 `flashparity compare` checks stored .npz members with) equals
zlib.crc32 on every SIMD level: carry-less-multiply folding and the table tails alike."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from flashparity import _core
from simd import LEVELS, use_level


@pytest.mark.parametrize("level", LEVELS)
def test_crc32_equals_zlib(level, monkeypatch):
    use_level(level, monkeypatch)
    rng = np.random.default_rng(17)
    buf = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    # every length through the folding thresholds (64 bytes, 16-byte steps; aarch64: 8-byte steps,
    # 4 KiB rounds of four streams), unaligned starts (views
    # into one array, not copies), seeds
    for n in [*range(0, 200), 255, 256, 257, 1023, 4095, 4096, 4099, 8197, 12288, 65000]:
        for off in (0, 3, 13):
            data = buf[off:off + n]
            for seed in (0, 0xDEADBEEF):
                assert _core.crc32(data, seed) == zlib.crc32(data, seed), (n, off, seed)
    # chained over chunks, as a stored member's checksum is built; and a NumPy buffer
    big = rng.integers(0, 256, (3 << 20) + 5, dtype=np.uint8)
    crc = 0
    for start in range(0, big.size, 1000003):
        crc = _core.crc32(big[start:start + 1000003], crc)
    assert crc == zlib.crc32(big) == _core.crc32(big)


def test_crc32_takes_what_zlib_takes():
    a = np.arange(100, dtype=np.uint8)
    for strided in (a[::2], memoryview(bytes(range(50)))[::3], a[::-1]):
        with pytest.raises((BufferError, ValueError)):
            _core.crc32(strided)  # never a checksum of the wrong bytes
    assert _core.crc32(b"abc", 1 << 40 | 7) == zlib.crc32(b"abc", 7)  # seeds taken mod 2^32
    assert _core.crc32(np.ones((3, 5), np.float32)) == zlib.crc32(np.ones((3, 5), np.float32))
