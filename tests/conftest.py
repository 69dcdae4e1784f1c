"""Shared fixtures; the `gpu` marker skips with reason 'no CUDA device' where none is usable."""

from __future__ import annotations

import pytest

import flashparity as fp


def cuda_available() -> bool:
    return bool(fp.build_info()["cuda_available"])


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
