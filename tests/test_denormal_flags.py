"""The CPU kernels never compute with denormal numbers on normal data (issue 28).

An Intel core takes a microcode assist of about a hundred cycles for every instruction that reads
or makes a denormal; AMD's barely notice, so a benchmark on one never shows it (fp.parity ran 6.5x
slower on an Emerald Rapids Xeon for a denormal constant in its screens). The flags are
architectural, so any x86 host can check: with the sticky flags cleared, a kernel run on the calling
thread (FLASHPARITY_NUM_THREADS=1) must leave MXCSR's DE (a denormal operand) and UE (a denormal
result) clear. On aarch64 the check is FPSR's UFC (a tiny result): IDC counts only inputs flushed
under FPCR.FZ, which the kernels leave off. An emulator may not keep every flag (qemu-x86_64 7.2
keeps UE, not DE): _core._fp_flags_probe says which ones this CPU raises, and only those are checked.
AVX-512's instructions with embedded rounding (_MM_FROUND_NO_EXC) raise no flag at all, so there
the test sees only the others.

Normal data: random values of every dtype with the ones its format holds as subnormals replaced.
Genuine denormal inputs are a user's right and give the statistics they always did (test_parity's
oracle cases and the bit-identity of levels cover them); they may raise the flags.
"""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest

import flashparity as fp
from flashparity import _core
from simd import LEVELS, use_level

DENORMAL_FLAGS = {"DE", "UE", "UFC", "IDC"}
SEEN = DENORMAL_FLAGS & set(_core._fp_flags_probe())

pytestmark = pytest.mark.skipif(not SEEN, reason="this CPU (or its emulator) raises no flag for a denormal")

DTYPES = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
}


def normal(x, dtype):
    """x in dtype with every value the format holds as a subnormal replaced by 1."""
    y = x.astype(dtype)
    f = y.astype(np.float64)
    y[(f != 0) & (np.abs(f) < float(ml_dtypes.finfo(dtype).smallest_normal))] = 1
    return y


def flags_raised(fn):
    """The denormal flags `fn` raises on this thread (the flags this CPU keeps)."""
    _core._fp_clear_flags()
    fn()
    return sorted(SEEN & set(_core._fp_flags()))


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("FLASHPARITY_NUM_THREADS", "1")  # the kernel runs on the calling thread


def test_the_probe_sees_what_the_hardware_flags():
    """The flag probe itself: x86 keeps DE and UE natively; an Arm core UFC."""
    seen = set(_core._fp_flags_probe())
    assert seen & {"UE", "UFC"}, seen  # every IEEE machine reports a tiny inexact result
    assert not DENORMAL_FLAGS & set(_core._fp_flags())  # and the probe leaves them cleared


@pytest.mark.parametrize("level", LEVELS)
def test_parity_on_normal_data_leaves_no_denormal_flag(level, monkeypatch, one_thread):
    use_level(level, monkeypatch)
    rng = np.random.default_rng(28)
    n = 4096 + 16 * 3 + 5  # whole blocks' vector parts and a scalar tail
    b = rng.standard_normal(n)
    a = b + 1e-3 * rng.standard_normal(n)
    # normal float32 values that are subnormal in float16 (the float32-vs-float16 ULP distance
    # rounds them on their bits), exact zeros, and their pairs
    b[100:108] = [1e-6, -3e-5, 2e-7, 0.0, 5.9e-8, -1e-5, 0.0, 6e-5]
    a[100:108] = [1.1e-6, -3e-5, 0.0, 0.0, 6e-8, -2e-5, 1e-30, 6.1e-5]
    bad = []
    for (na, ta), (nb, tb) in itertools.product(DTYPES.items(), repeat=2):
        for same in (False, True):
            A, B = normal(b if same else a, ta), normal(b, tb)
            for atol, rtol in ((0.0, 0.0), (1e-5, 1e-5), (1e-3, 1e-3), (0.0, 1e-2)):
                raised = flags_raised(lambda: fp.parity(A, B, atol=atol, rtol=rtol))
                if raised:
                    bad.append((na, nb, "a == b" if same else "a != b", atol, rtol, raised))
    assert bad == [], f"{len(bad)} calls raised denormal flags at {level}, the first: {bad[:5]}"


def test_float32_to_float16_rounding_of_small_values_is_exact(monkeypatch):
    """The float32-vs-float16 ULP distance rounds values below 2^-14 on their bit patterns (the
    conversion instruction would make a subnormal half): the same bits as NumPy's rounding, ties
    to even included, on every level."""
    k = np.arange(1024, dtype=np.float64)
    ties = ((k + 0.5) * 2.0**-24).astype(np.float32)
    grid = np.arange(0, 0x38800000, 997, dtype=np.uint32).view(np.float32)
    a = np.concatenate([grid, ties, np.nextafter(ties, np.float32(0)), np.nextafter(ties, np.float32(1)),
                        np.float32([2.0**-14 * (1 - 2.0**-24), 2.0**-14, 2.0**-25, 2.0**-25 * 1.5])])
    a = np.concatenate([a, -a])
    b = a.astype(np.float16)
    moved = b.copy()
    moved[::7] = np.nextafter(b[::7], np.float16(np.inf))  # one ULP away from the rounding
    for level in LEVELS[: LEVELS.index(fp.build_info()["simd_detected"]) + 1]:
        monkeypatch.setenv("FLASHPARITY_SIMD", level)
        assert fp.parity(a, b).max_ulp_diff == 0, level
        assert fp.parity(b, a).max_ulp_diff == 0, level
        assert fp.parity(a, moved).max_ulp_diff == 1, level


ATTENTION_DTYPES = ["float64", "float32", "float16", "bfloat16", "float8_e4m3fn"]


@pytest.mark.parametrize("level", LEVELS)
def test_attention_on_normal_data_leaves_no_denormal_flag(level, monkeypatch, one_thread):
    """Both kernels, every dtype, the masks and score modifiers; ALiBi over 300 keys gives
    probabilities of e^-150, which the kernels count as 0 below 2^-100 of the row's largest."""
    use_level(level, monkeypatch)
    rng = np.random.default_rng(29)
    bad = []
    for name in ATTENTION_DTYPES:
        dt = DTYPES[name]
        for b, sq, sk, h, d in ((2, 37, 300, 2, 64), (1, 1, 1, 1, 8), (1, 65, 70, 1, 128)):
            q, k, v = (normal(rng.standard_normal((b, s, h, d)), dt) for s in (sq, sk, sk))
            for impl, causal, extra in itertools.product(
                    ("naive", "flash2"), (False, True),
                    ({}, {"softcap": 30.0}, {"window": (16, 0)}, {"alibi_slopes": np.full(h, 0.5, np.float32)})):
                raised = flags_raised(lambda: fp.attention(q, k, v, impl=impl, causal=causal, return_lse=True, **extra))
                if raised:
                    bad.append((name, (b, sq, sk, h, d), impl, causal, sorted(extra), raised))
    assert bad == [], f"{len(bad)} calls raised denormal flags at {level}, the first: {bad[:5]}"
