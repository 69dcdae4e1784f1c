"""Shared fixtures; the `gpu` marker skips with reason 'no CUDA device' where none is usable."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

import flashparity as fp

# CI draws the same examples on every run (a red CI must be reproducible); local runs explore.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


def cuda_available() -> bool:
    return bool(fp.build_info()["cuda_available"])


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
