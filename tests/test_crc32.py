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
    buf = rng.integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    # every length through the folding thresholds (64 bytes, 16-byte steps), odd offsets, seeds
    for n in [*range(0, 200), 255, 256, 257, 1023, 4096, 4099, 65000]:
        for off in (0, 3):
            data = buf[off:off + n]
            for seed in (0, 0xDEADBEEF):
                assert _core.crc32(data, seed) == zlib.crc32(data, seed), (n, off, seed)
    # chained over chunks, as a stored member's checksum is built; and a NumPy buffer
    big = rng.integers(0, 256, (3 << 20) + 5, dtype=np.uint8)
    crc = 0
    for start in range(0, big.size, 1000003):
        crc = _core.crc32(big[start:start + 1000003], crc)
    assert crc == zlib.crc32(big) == _core.crc32(big)
