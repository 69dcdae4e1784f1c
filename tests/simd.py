"""The CPU kernels' SIMD levels, for tests that run a kernel at each."""

from __future__ import annotations

import pytest

import flashparity as fp
from flashparity import _core

LEVELS = _core.simd_levels()  # every CPU code path of this architecture, lowest first


def use_level(level, monkeypatch):
    """Run the CPU kernels at `level`; skip when this CPU does not reach it (a cap would run a lower one)."""
    detected = fp.build_info()["simd_detected"]
    if LEVELS.index(level) > LEVELS.index(detected):
        pytest.skip(f"CPU SIMD level is {detected}, below {level}")
    monkeypatch.setenv("FLASHPARITY_SIMD", level)
