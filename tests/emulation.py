"""The Python that a test's subprocesses run. Natively, this interpreter. Under an emulator of
another architecture (.ci/aarch64) a subprocess cannot run this interpreter's binary on the host,
so the stage names the emulated command line in FLASHPARITY_TEST_PYTHON."""

from __future__ import annotations

import os
import shlex
import shutil
import sys


def python_command() -> list[str]:
    cmd = os.environ.get("FLASHPARITY_TEST_PYTHON")
    return shlex.split(cmd) if cmd else [sys.executable]


def console_script(name: str) -> str | None:
    """An installed console script, run as a subprocess: not under emulation, where the one on PATH
    belongs to the host's Python."""
    return None if os.environ.get("FLASHPARITY_TEST_PYTHON") else shutil.which(name)


def emulated() -> bool:
    """Under an emulator of another architecture: a subprocess must go through the emulator, so
    anything that execs sys.executable itself (multiprocessing's spawn) cannot run."""
    return bool(os.environ.get("FLASHPARITY_TEST_PYTHON"))


def emulated_cpu() -> bool:
    """A CI stage that runs the suite on an emulated CPU (qemu; CI sets FLASHPARITY_EXPECT_SIMD to
    the level that CPU must dispatch): tests of pure-Python logic around the kernels are run
    natively and need not be repeated there at 20-50x the cost."""
    return bool(os.environ.get("FLASHPARITY_EXPECT_SIMD"))
