"""Property tests (hypothesis): fp.parity against the NumPy float64 oracle over random shapes,
strides, dtypes, magnitudes and NaN/inf/zero/subnormal placements."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flashparity as fp
from parity_oracle import DTYPES, check_against_oracle

SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-310, 6e-8, 65504.0, 1e30]


@st.composite
def cases(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 24)) for _ in range(ndim))
    da = draw(st.sampled_from(list(DTYPES)))
    db = draw(st.sampled_from(list(DTYPES)))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    offset = draw(st.sampled_from([0.0, 0.0, 5.0]))
    noise = draw(st.sampled_from([0.0, 1e-4, 1e-2, 1.0]))
    n_special = draw(st.integers(0, 3))
    steps = tuple(draw(st.sampled_from([1, 1, 2, -1, -2])) for _ in range(ndim))
    transpose = draw(st.booleans())
    tol = draw(st.sampled_from([(0.0, 0.0), (1e-3, 1e-3), (0.0, 1e-2), (1e-5, 0.0)]))
    return shape, da, db, seed, scale, offset, noise, n_special, steps, transpose, tol


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_parity_matches_oracle(case):
    shape, da, db, seed, scale, offset, noise, n_special, steps, transpose, (atol, rtol) = case
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape) * scale + offset
    a = (base + noise * scale * rng.standard_normal(shape)).astype(DTYPES[da])
    b = base.astype(DTYPES[db])
    for _ in range(n_special):  # special values at random places, in either input
        target = a if rng.integers(2) else b
        idx = tuple(int(rng.integers(s)) for s in shape)
        with np.errstate(over="ignore"):  # 1e30 into float16 is inf, deliberately
            target[idx] = SPECIALS[int(rng.integers(len(SPECIALS)))]
    view = tuple(slice(None, None, s) for s in steps)
    va, vb = a[view], b[view]
    if transpose:
        va, vb = va.T, vb.T
    stats = fp.parity(va, vb, atol=atol, rtol=rtol)
    check_against_oracle(stats, np.ascontiguousarray(va), np.ascontiguousarray(vb), atol, rtol,
                         cos_tol=1e-12, moment_rel=1e-12)
