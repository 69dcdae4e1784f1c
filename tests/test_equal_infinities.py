"""Equal infinities are an exact match (issue 34, finding 2): an element holding the same infinity on
both sides has difference 0 everywhere (maxima, histogram, ULP, isclose) and is set aside from the
sums, on every CPU level, through merges and through the CUDA kernel's algorithm (parity_grid_host);
a NaN, or an infinity against anything but itself, still fails every gate."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest

import flashparity as fp
from flashparity import _core, classify
from flashparity._tensor import as_view
from flashparity.cli import main
from flashparity.parity import ParityStats
from parity_oracle import DTYPES, check_against_oracle, oracle, random_pair
from simd import LEVELS, use_level

PAIRS = [("float32", "float32"), ("float16", "float32"), ("bfloat16", "bfloat16"), ("float64", "float64"),
         ("float64", "float16"), ("float16", "bfloat16"), ("float8_e5m2", "float8_e5m2"),
         ("float8_e5m2", "float32"), ("bfloat16", "float8_e5m2")]
# one element; a vector body and its tail; several 4096-element blocks; a 2-D view
SHAPES = [(1,), (13,), (4096 * 2 + 5,), (3, 1031)]
EXACT = ("numel", "max_abs_diff", "max_abs_index", "max_rel_diff", "max_rel_index", "mismatches", "nonfinite",
         "equal_inf", "max_ulp_diff", "abs_diff_histogram")


def with_equal_infinities(rng, shape, da, db, fraction):
    """A random pair where about `fraction` of the elements (at least the last one) hold the same
    infinity, of either sign, on both sides."""
    a, b = random_pair(rng, shape, da, db)
    where = rng.random(shape) < fraction
    where.reshape(-1)[-1] = True
    inf = np.where(rng.random(shape) < 0.5, -np.inf, np.inf)
    a[where] = inf[where].astype(DTYPES[da])
    b[where] = inf[where].astype(DTYPES[db])
    return a, b


def assert_exact_fields_equal(got, want):
    for f in EXACT:
        g, w = getattr(got, f), getattr(want, f)
        assert g == w or (isinstance(w, float) and math.isnan(w) and math.isnan(g)), (f, g, w)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fraction", [0.01, 0.5, 1.0])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("da,db", PAIRS, ids=[f"{x}-{y}" for x, y in PAIRS])
def test_equal_infinities_match_the_oracle_at_every_level(da, db, shape, fraction, level, monkeypatch):
    use_level(level, monkeypatch)
    rng = np.random.default_rng(zlib.crc32(repr((da, db, shape, fraction)).encode()))
    a, b = with_equal_infinities(rng, shape, da, db, fraction)
    s = fp.parity(a, b, atol=1e-3, rtol=1e-3)
    check_against_oracle(s, a, b, 1e-3, 1e-3)
    n_inf = int(np.isinf(a.astype(np.float64)).sum())
    assert s.equal_inf == n_inf and s.nonfinite == n_inf
    assert math.isfinite(s.max_abs_diff) and math.isfinite(s.cosine_sim) and math.isfinite(s.pcc)
    assert s.abs_diff_histogram["nan"] == 0 and s.abs_diff_histogram["0"] >= n_inf
    if fraction == 1.0 and n_inf == a.size:  # nothing but equal infinities: a perfect match
        assert (s.max_abs_diff, s.mean_abs_diff, s.rmse, s.cosine_sim, s.pcc) == (0.0, 0.0, 0.0, 1.0, 1.0)
        assert s.max_abs_index == (0,) * a.ndim and s.mismatches == 0 and s.max_ulp_diff == 0


def test_the_sums_run_over_the_finite_elements():
    a = np.array([1.5, -np.inf, 2.0, np.inf, -3.0], np.float64)
    b = np.array([1.0, -np.inf, 2.0, np.inf, -3.5], np.float64)
    s = fp.parity(a, b)
    fa, fb = a[[0, 2, 4]], b[[0, 2, 4]]
    f = fp.parity(fa, fb)
    assert (s.equal_inf, s.nonfinite, s.mismatches, s.max_abs_diff, s.max_abs_index) == (2, 2, 2, 0.5, (0,))
    for field in ("cosine_sim", "pcc", "mean_abs_diff", "rmse", "snr_db", "max_rel_diff", "max_ulp_diff"):
        assert getattr(s, field) == getattr(f, field), field
    assert s.abs_diff_histogram["0"] == 3
    assert "2 equal infinities, set aside" in repr(s)


@pytest.mark.parametrize("a_val,b_val,mad_nan", [
    (np.nan, np.nan, True),      # NaN never matches, not even NaN
    (np.inf, -np.inf, False),    # opposite infinities: inf - (-inf) = inf, a mismatch
    (np.inf, 1.0, False),        # an infinity against a number: max_abs_diff inf
    (-np.inf, np.nan, True),
])
def test_nan_and_unequal_infinities_still_fail(a_val, b_val, mad_nan):
    a = np.array([1.0, np.inf, a_val, 2.0], np.float32)
    b = np.array([1.0, np.inf, b_val, 2.0], np.float32)
    s = fp.parity(a, b)
    check_against_oracle(s, a, b)
    assert s.equal_inf == 1 and s.nonfinite == 2 and s.mismatches == 1
    assert math.isnan(s.max_abs_diff) if mad_nan else s.max_abs_diff == math.inf
    assert s.max_abs_index == (2,)
    assert math.isnan(s.cosine_sim) and math.isnan(s.pcc)
    with pytest.raises(AssertionError, match="of which 1 equal infinities"):
        fp.assert_parity(a, b, atol=1e-5, rtol=1e-5)


def test_merged_parts_equal_one_pass():
    rng = np.random.default_rng(11)
    a, b = with_equal_infinities(rng, (40, 257), "float32", "float32", 0.2)
    a[10:14] = b[10:14] = -np.inf  # a part with nothing but equal infinities
    whole = fp.parity(a, b, atol=1e-4)
    cuts = [0, 10, 14, 15, 40]
    parts = [fp.parity(a[i:j], b[i:j], atol=1e-4) for i, j in zip(cuts, cuts[1:])]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    assert_exact_fields_equal(merged, whole)
    for f in ("cosine_sim", "pcc", "mean_abs_diff", "rmse", "snr_db"):
        assert getattr(merged, f) == pytest.approx(getattr(whole, f), rel=1e-13), f
    allinf = parts[1]
    assert (allinf.equal_inf, allinf.max_abs_diff, allinf.cosine_sim, allinf.rmse) == (4 * 257, 0.0, 1.0, 0.0)


@pytest.mark.parametrize("blocks,threads", [(1, 1), (3, 4), (5, 128), (300, 2)])
@pytest.mark.parametrize("da,db", [("float32", "float32"), ("float16", "bfloat16"), ("float8_e5m2", "float32")])
def test_the_cuda_kernels_algorithm(da, db, blocks, threads):
    rng = np.random.default_rng(blocks * 7 + threads)
    a, b = with_equal_infinities(rng, (1031,), da, db, 0.3)
    a[0] = np.array(np.inf).astype(DTYPES[da])  # the first element: a zero difference, not the maximum
    b[0] = np.array(np.inf).astype(DTYPES[db])
    va, vb = as_view(a, "a"), as_view(b, "b")
    grid = ParityStats(_core.parity_grid_host(va.desc, vb.desc, 1e-3, 0.0, blocks, threads), va.shape,
                       (va.dtype, vb.dtype), 1e-3, 0.0)
    check_against_oracle(grid, a, b, 1e-3)
    assert_exact_fields_equal(grid, fp.parity(a, b, atol=1e-3))
    assert grid.max_abs_index != (0,) and grid.max_abs_diff > 0


def test_every_thread_count_gives_the_same_bits(monkeypatch):
    # (past 3 superblocks of 65536 elements: the threads split the work, and each superblock holds
    # equal infinities and zero-difference ties with the first element's)
    rng = np.random.default_rng(2)
    a, b = with_equal_infinities(rng, (65536 * 3 + 4099,), "bfloat16", "float32", 0.05)
    a[0] = b[0] = -np.inf
    for start in (0, 65536, 131072, 196608):
        a[start + 7] = b[start + 7]  # an exact match: the same zero difference an equal infinity has
    monkeypatch.setenv("FLASHPARITY_NUM_THREADS", "1")
    one = fp.parity(a, b)
    check_against_oracle(one, a, b)
    for threads in ("2", "4"):
        monkeypatch.setenv("FLASHPARITY_NUM_THREADS", threads)
        assert fp.parity(a, b) == one
    assert one.equal_inf == int(np.isinf(b).sum())


# ---- the gates the issue names --------------------------------------------------------------------


def test_assert_parity_passes_identical_tensors_holding_infinities():
    x = np.array([[1.0, -np.inf, 2.0], [np.inf, 0.5, -np.inf]], np.float32)
    s = fp.assert_parity(x, x.copy(), atol=1e-5, rtol=1e-5, max_abs_diff=1e-3)
    assert s.max_abs_diff == 0.0 and s.equal_inf == 3
    fp.assert_parity(x, x.copy(), atol=1e-5, rtol=1e-5, min_cosine=0.99)
    assert fp.max_abs_diff(x, x) == 0.0 and fp.cosine_sim(x, x) == 1.0


def test_compare_check_and_classify_pass_byte_identical_files(tmp_path, capsys):
    x = np.array([1.0, -np.inf, 2.0], np.float32)
    np.save(tmp_path / "inf1.npy", x)
    np.save(tmp_path / "inf2.npy", x)
    code = main(["compare", str(tmp_path / "inf1.npy"), str(tmp_path / "inf2.npy"), "--check"])
    out, _ = capsys.readouterr()
    assert code == 0 and "check: PASS (Ok)" in out, out
    code = main(["compare", str(tmp_path / "inf1.npy"), str(tmp_path / "inf2.npy"), "--json"])
    body = json.loads(capsys.readouterr()[0])
    assert code == 0 and body["max_abs_diff"] == 0.0 and body["cosine_sim"] == 1.0
    assert body["tensors"][0]["equal_inf"] == 1 and body["tensors"][0]["nonfinite"] == 1
    assert classify.classify_parity_numerics(body).ok
    (tmp_path / "body.json").write_text(json.dumps(body))
    assert main(["classify", "parity", str(tmp_path / "body.json")]) == 0
    capsys.readouterr()
    # an infinity against the other infinity still fails the gate
    np.save(tmp_path / "inf3.npy", -x)
    code = main(["compare", str(tmp_path / "inf1.npy"), str(tmp_path / "inf3.npy"), "--check"])
    assert code == 1 and "FAIL" in capsys.readouterr()[0]


def test_oracle_agrees_with_torch_isclose_on_equal_infinities():
    torch = pytest.importorskip("torch")
    a = np.array([np.inf, -np.inf, np.inf, np.nan, 1.0], np.float32)
    b = np.array([np.inf, -np.inf, -np.inf, np.nan, 1.0], np.float32)
    want = int((~torch.isclose(torch.from_numpy(a), torch.from_numpy(b), rtol=0, atol=0)).sum())
    assert fp.parity(a, b).mismatches == want == oracle(a, b)["mismatches"] == 2
