"""fp.parity and ParityStats against the NumPy float64 oracle: dtypes, shapes, strides, NaN/inf,
SIMD levels, thread counts, merge, 64-bit indexing, errors."""

from __future__ import annotations

import json
import math
import pickle

import ml_dtypes
import numpy as np
import pytest

import flashparity as fp
from flashparity import _core
from parity_oracle import DTYPES, check_against_oracle, oracle, random_pair
from simd import LEVELS, use_level

ALL = list(DTYPES)
PAIRS = [(x, y) for x in ALL for y in ALL]
SHAPES = [(1,), (7,), (8,), (4097,), (3, 5, 7), (2, 4096 + 9), (1, 1, 1)]


@pytest.mark.parametrize("da,db", PAIRS, ids=[f"{x}-{y}" for x, y in PAIRS])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_matches_oracle_dtype_pairs(da, db, shape):
    rng = np.random.default_rng(hash((da, db, shape)) % 2**32)
    a, b = random_pair(rng, shape, da, db)
    stats = fp.parity(a, b, atol=1e-3, rtol=1e-3)
    check_against_oracle(stats, a, b, 1e-3, 1e-3)
    assert stats.dtypes == (da, db)


def _views(x):
    """Non-contiguous views of the same logical data: transposed, strided, reversed."""
    return x


@pytest.mark.parametrize("da,db", [("float32", "float32"), ("float16", "float32"), ("bfloat16", "float64")])
@pytest.mark.parametrize(
    "make",
    [
        lambda x: x[::2],
        lambda x: x[::-1],
        lambda x: x.T,
        lambda x: x[1:-1:3, ::-2],
        lambda x: np.swapaxes(x, 0, 1)[::-1],
    ],
    ids=["step2", "reversed", "transposed", "mixed", "swap-reversed"],
)
def test_non_contiguous_views(da, db, make):
    rng = np.random.default_rng(7)
    a, b = random_pair(rng, (301, 77), da, db)
    va, vb = make(a), make(b)
    assert not va.flags.c_contiguous
    stats = fp.parity(va, vb, atol=1e-4)
    check_against_oracle(stats, np.ascontiguousarray(va), np.ascontiguousarray(vb), 1e-4)
    # the strided path gathers blocks in C order: identical results to the contiguous copies
    assert stats == fp.parity(np.ascontiguousarray(va), np.ascontiguousarray(vb), atol=1e-4)


def test_mixed_layouts_and_zero_strides():
    rng = np.random.default_rng(3)
    a, b = random_pair(rng, (64, 50), "float32", "float32")
    bt = np.asfortranarray(b)
    check_against_oracle(fp.parity(a, bt), a, b)
    row = rng.standard_normal(50).astype(np.float32)
    bc = np.broadcast_to(row, (64, 50))  # zero stride on axis 0
    assert bc.strides[0] == 0
    check_against_oracle(fp.parity(a, bc), a, np.ascontiguousarray(bc))


@pytest.mark.parametrize("level", LEVELS)
def test_every_simd_level_matches_oracle(level, monkeypatch):
    use_level(level, monkeypatch)
    rng = np.random.default_rng(11)
    for da, db in [("float32", "float32"), ("float16", "float32"), ("bfloat16", "float32"),
                   ("float64", "float32"), ("bfloat16", "bfloat16"), ("float16", "bfloat16")]:
        a, b = random_pair(rng, (3 * 4096 + 13,), da, db)
        check_against_oracle(fp.parity(a, b, atol=1e-3, rtol=1e-2), a, b, 1e-3, 1e-2)


def _edge_case(case, dtype, rng, n):
    """Inputs that send blocks down the kernel's rarer paths, and the tolerances that do."""
    dt = DTYPES[dtype]
    if case == "scale":  # norms 9x apart: Σab summed from the products, not derived from the squares
        b = rng.standard_normal(n)
        return (3 * b + 1e-2 * rng.standard_normal(n)).astype(dt), b.astype(dt), 1e-3, 1e-3
    if case == "ties":  # differences exactly atol + rtol |b|: undecided screen lanes, counted in float64
        b = rng.choice([1.0, 2.0, 0.5, -1.0, -4.0], n)
        off = np.where(rng.random(n) < 0.3, 0.25 + 0.25 * np.abs(b), rng.standard_normal(n))
        return (b + off).astype(dt), b.astype(dt), 0.25, 0.25
    # quantized: a few values one step apart, so the blocks' maxima tie the running ones
    b = rng.choice([1.0, 0.5, 0.25, 3.0, -2.0], n).astype(dt)
    step = np.where(rng.random(n) < 0.2, rng.choice([1, -1, 2], n), 0)
    a = (b.astype(np.float64) * (1 + step * float(np.finfo(dt).eps if dt != DTYPES["bfloat16"] else 2.0**-7)))
    return a.astype(dt), b, 0.0, 0.0


@pytest.mark.parametrize("case", ["scale", "ties", "quantized"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_simd_levels_agree_on_the_rare_paths(case, dtype, monkeypatch):
    # every level the CPU has, on inputs that take the exact passes and fallbacks, against the oracle
    rng = np.random.default_rng(14)
    a, b, atol, rtol = _edge_case(case, dtype, rng, 9 * 4096 + 16 * 21 + 5)
    detected = fp.build_info()["simd_detected"]
    results = []
    for level in LEVELS[: LEVELS.index(detected) + 1]:
        monkeypatch.setenv("FLASHPARITY_SIMD", level)
        results.append((level, fp.parity(a, b, atol=atol, rtol=rtol)))
    check_against_oracle(results[0][1], a, b, atol, rtol)
    for level, r in results[1:]:
        assert repr(r) == repr(results[0][1]), level
        assert r == results[0][1], level


@pytest.mark.parametrize("da,db", [("float32", "float64"), ("float32", "float32"), ("float16", "float32"),
                                   ("bfloat16", "bfloat16"), ("float16", "bfloat16")])
def test_simd_levels_are_bit_identical(da, db, monkeypatch):
    # Levels step over narrow pairs 8 or 16 elements at a time; the last block's 13 leftover
    # elements must be reduced the same way on each.
    rng = np.random.default_rng(5)
    a, b = random_pair(rng, (12 * 4096 + 16 * 53 + 13,), da, db, offset=3.0)
    results = []
    for level in LEVELS:
        monkeypatch.setenv("FLASHPARITY_SIMD", level)  # a level above the CPU's runs its own
        results.append(fp.parity(a, b, atol=1e-5))
    assert all(r == results[0] for r in results[1:])
    assert all(repr(r) == repr(results[0]) for r in results[1:])


def test_thread_counts_are_bit_identical(monkeypatch):
    rng = np.random.default_rng(9)
    a, b = random_pair(rng, (3 * 262144 + 12345,), "float32", "float32")
    a[777_777] = np.nan  # a non-finite block takes the scalar path on every thread count
    results = []
    for threads in ("1", "2", "3", "8"):
        monkeypatch.setenv("FLASHPARITY_NUM_THREADS", threads)
        assert _core.num_threads() == int(threads)
        results.append(fp.parity(a, b, atol=1e-4, rtol=1e-4))
    assert all(r == results[0] for r in results)
    assert all(repr(r) == repr(results[0]) for r in results)
    assert results[0].max_abs_index == (777_777,)


def test_concurrent_calls_share_the_thread_pool(monkeypatch):
    # The GIL is released while reducing: calls from several Python threads at once. One gets the
    # persistent helpers, the others start threads of their own; each result must be what a call
    # alone gives.
    import threading

    monkeypatch.setenv("FLASHPARITY_NUM_THREADS", "2")
    rng = np.random.default_rng(21)
    pairs = [random_pair(rng, (5 * 65536 + 77 * k,), "float32", "float32") for k in range(4)]
    want = [fp.parity(a, b, atol=1e-4) for a, b in pairs]
    errors = []

    def work(k):
        for _ in range(15):
            if fp.parity(*pairs[k], atol=1e-4) != want[k]:
                errors.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _parity_in_child(conn, a, b):
    conn.send(repr(fp.parity(a, b, atol=1e-4)))
    conn.close()


# (JAX, once another test has started it in this process, warns at every os.fork; the child here runs no JAX)
@pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")
def test_thread_pool_after_fork(monkeypatch):
    # A forked child has none of the parent's helper threads: it must build its own pool, not wait
    # forever on the parent's.
    import multiprocessing

    monkeypatch.setenv("FLASHPARITY_NUM_THREADS", "2")
    rng = np.random.default_rng(22)
    a, b = random_pair(rng, (6 * 65536,), "float32", "float32")
    want = repr(fp.parity(a, b, atol=1e-4))  # the parent's helpers exist now
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_parity_in_child, args=(send, a, b))
    child.start()
    got = recv.recv() if recv.poll(60) else None
    child.join(10)
    if child.is_alive():
        child.kill()
    assert got == want and child.exitcode == 0


@pytest.mark.parametrize("da,db", [("float32", "float32"), ("bfloat16", "bfloat16"), ("float64", "float64")])
def test_first_maximum_across_superblocks_and_threads(da, db, monkeypatch):
    # Threads share the largest maximum found so far so that other superblocks can skip locating
    # smaller ones. Equal maxima in several superblocks (16 blocks of 4096 each), the later ones
    # placed where a thread meets them first, must still give the first index, for |a-b| and the
    # ratio, on every thread count and run.
    rng = np.random.default_rng(18)
    sb = 16 * 4096
    n = 8 * sb  # eight superblocks of exactly 16 blocks (the driver's split for this n)
    b = rng.uniform(1.0, 2.0, n).astype(DTYPES[db])
    a = (b.astype(np.float64) * (1 + 1e-3 * rng.uniform(-1, 1, n))).astype(DTYPES[da])
    # the first in the last block of superblock 0; the next at the start of superblock 1, which
    # another thread reaches long before that
    first, others = sb - 5, [sb + 2, 2 * sb + 1, 6 * sb + 100]
    for i in [first] + others:
        a[i], b[i] = 3.0, 1.5  # |a-b| = 1.5 and ratio 1, both the maxima
    want = oracle(a, b)
    assert want["max_abs_index"] == want["max_rel_index"] == (first,)
    for threads in ("1", "2", "8", "16"):
        monkeypatch.setenv("FLASHPARITY_NUM_THREADS", threads)
        for _ in range(3):
            s = fp.parity(a, b)
            assert (s.max_abs_diff, s.max_abs_index) == (1.5, (first,)), threads
            assert (s.max_rel_diff, s.max_rel_index) == (1.0, (first,)), threads


def test_repeat_runs_are_bit_identical():
    rng = np.random.default_rng(1)
    a, b = random_pair(rng, (1_000_003,), "bfloat16", "float32")
    first = fp.parity(a, b)
    for _ in range(3):
        assert fp.parity(a, b) == first


def test_bad_thread_count(monkeypatch):
    monkeypatch.setenv("FLASHPARITY_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="FLASHPARITY_NUM_THREADS must be an integer from 1 to 4096, got 'zero'"):
        fp.parity(np.ones(3, np.float32), np.ones(3, np.float32))


def test_large_multi_superblock_against_oracle():
    rng = np.random.default_rng(2)
    a, b = random_pair(rng, (9 * 65536 + 4096 * 3 + 5,), "float32", "float32")
    want = oracle(a, b)
    s = fp.parity(a, b)
    assert s.max_abs_diff == want["max_abs_diff"] and s.max_abs_index == want["max_abs_index"]
    assert abs(s.cosine_sim - want["cosine_sim"]) <= 1e-12


# ---- NaN / inf semantics ------------------------------------------------------------------------


def test_nan_and_inf_semantics():
    a = np.array([1.0, np.nan, 3.0, np.inf, np.inf, 5.0, -np.inf, 2.0], np.float32)
    b = np.array([1.5, 2.0, np.nan, np.inf, 1.0, 5.0, np.inf, 0.0], np.float32)
    s = fp.parity(a, b, atol=0.1)
    check_against_oracle(s, a, b, 0.1)
    assert math.isnan(s.max_abs_diff) and s.max_abs_index == (1,)  # the first NaN
    assert math.isnan(s.cosine_sim) and math.isnan(s.pcc)
    assert s.nonfinite == 5 and s.equal_inf == 1
    # equal infinities match (difference 0); NaN never matches; inf vs finite mismatches
    assert s.mismatches == 6  # 0: 0.5 > 0.1, 1, 2: NaN, 4: inf vs 1, 6: -inf vs inf, 7: 2 vs 0
    assert s.abs_diff_histogram["nan"] == 3 - 1  # 1, 2 (3 is inf vs inf: bin 0)
    assert s.abs_diff_histogram["0"] == 2  # 3, 5


def test_inf_without_nan():
    a = np.array([1.0, np.inf, 2.0], np.float64)
    b = np.array([1.0, 3.0, 2.0], np.float64)
    s = fp.parity(a, b)
    assert s.max_abs_diff == math.inf and s.max_abs_index == (1,)
    assert s.abs_diff_histogram[">=2^16"] == 1


def test_nan_in_the_vector_body_and_tail():
    rng = np.random.default_rng(4)
    a, b = random_pair(rng, (4096 * 2 + 5,), "float32", "float32")
    a[5000] = np.nan
    b[8195] = np.inf  # in the tail of the second block
    check_against_oracle(fp.parity(a, b), a, b)


def test_overflowing_float64_difference():
    a = np.array([1.7e308, 0.0], np.float64)
    b = np.array([-1.7e308, 0.0], np.float64)
    s = fp.parity(a, b)
    assert s.max_abs_diff == math.inf and s.nonfinite == 0 and s.max_abs_index == (0,)


def test_relative_difference_rules():
    a = np.array([0.0, 1.0, 3.0, -2.0], np.float32)
    b = np.array([0.0, 0.0, 2.0, -4.0], np.float32)
    s = fp.parity(a, b)
    assert s.max_rel_diff == math.inf and s.max_rel_index == (1,)
    s = fp.parity(a[[0, 2, 3]], b[[0, 2, 3]])
    assert s.max_rel_diff == 0.5 and s.max_rel_index == (1,)


def test_first_maximum_in_c_order():
    a = np.zeros((3, 4), np.float32) + 1
    b = a.copy()
    b[2, 1] = 3.0
    b[0, 3] = 3.0
    b[1, 0] = -1.0
    s = fp.parity(a, b)
    assert s.max_abs_diff == 2.0 and s.max_abs_index == (0, 3)
    s = fp.parity(a.T, b.T)  # C order of the transposed views
    assert s.max_abs_index == (0, 1)  # b.T[0, 1] = b[1, 0]


# ---- cosine and friends: accuracy and edge cases -------------------------------------------------


def test_cosine_near_one_is_accurate():
    # near-identical tensors: 1 - cos ~ 1e-14 must keep its relative accuracy
    rng = np.random.default_rng(0)
    b = rng.standard_normal(1 << 16)
    a = b * (1 + 1e-7 * rng.standard_normal(b.size))
    from fractions import Fraction

    aa = sum(Fraction(float(x)) ** 2 for x in a)
    bb = sum(Fraction(float(x)) ** 2 for x in b)
    dd = sum((Fraction(float(x)) - Fraction(float(y))) ** 2 for x, y in zip(a, b))
    na, nb = math.sqrt(aa), math.sqrt(bb)
    exact_one_minus = (float(dd) - (na - nb) ** 2) / (2 * na * nb)
    s = fp.parity(a, b)
    assert abs((1 - s.cosine_sim) - exact_one_minus) <= 1e-16 + 1e-3 * exact_one_minus


def test_cosine_special_cases():
    z = np.zeros(5, np.float32)
    o = np.ones(5, np.float32)
    assert fp.cosine_sim(z, z) == 1.0
    assert fp.cosine_sim(z, o) == 0.0 and fp.cosine_sim(o, z) == 0.0
    assert fp.cosine_sim(o, -o) == -1.0
    assert fp.cosine_sim(o, 1000 * o) == pytest.approx(1.0, abs=1e-15)


def test_pcc_catches_offset_and_constants():
    rng = np.random.default_rng(8)
    b = rng.standard_normal(10_000)
    s = fp.parity(b + 5.0, b)
    assert s.cosine_sim < 0.1 or s.pcc == pytest.approx(1.0, abs=1e-12)
    c = np.full(100, 2.0)
    assert fp.parity(c, c).pcc == 1.0
    assert fp.parity(c, c + 1).pcc == 0.0  # constant but not identical: never a silent pass
    assert fp.parity(c, rng.standard_normal(100)).pcc == 0.0


def test_pcc_with_large_offset_is_accurate():
    rng = np.random.default_rng(12)
    x = rng.standard_normal(100_000)
    y = x + 0.1 * rng.standard_normal(x.size)
    want = np.corrcoef(x, y)[0, 1]
    s = fp.parity(x + 1e6, y + 1e6)
    assert abs(s.pcc - want) < 1e-9


def test_snr_and_identical():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    s = fp.parity(x, x)
    assert s.snr_db == math.inf and s.max_abs_diff == 0 and s.rmse == 0 and s.max_ulp_diff == 0
    assert s.mismatches == 0 and s.cosine_sim == 1.0 and s.pcc == 1.0
    assert s.abs_diff_histogram["0"] == 1000


def test_ulp_distance_across_zero_and_formats():
    a = np.array([1.0, -0.0, np.float32(1.0) + np.float32(2**-23)], np.float32)
    b = np.array([1.0, 0.0, 1.0], np.float32)
    assert fp.parity(a, b).max_ulp_diff == 1
    # float16 kernel vs float32 reference: the reference is rounded to float16 first
    a16 = np.array([1.0], np.float16)
    b32 = np.array([1.0 + 2**-11], np.float32)  # a tie: rounds to even (1.0)
    assert fp.parity(a16, b32).max_ulp_diff == 0
    b32 = np.array([1.0 + 3 * 2**-11], np.float32)  # rounds to 1 + 2^-9 = 2 ulp
    assert fp.parity(a16, b32).max_ulp_diff == 2
    smallest = np.array([np.float32(1e-45)], np.float32)
    assert fp.parity(smallest, -smallest).max_ulp_diff == 2


def test_histogram_bins():
    a = np.array([0.0, 2.0**-50, 2.0**-40, 1.5, 2.0**15 * 1.9, 2.0**16, 2.0**200], np.float64)
    s = fp.parity(a, np.zeros_like(a))
    h = s.abs_diff_histogram
    assert list(h)[:3] == ["0", "<2^-40", "[2^-40,2^-39)"] and list(h)[-2:] == [">=2^16", "nan"]
    assert h["0"] == 1 and h["<2^-40"] == 1 and h["[2^-40,2^-39)"] == 1 and h["[2^0,2^1)"] == 1
    assert h["[2^15,2^16)"] == 1 and h[">=2^16"] == 2 and sum(h.values()) == a.size


# ---- merge, to_dict, repr, pickle ---------------------------------------------------------------


def test_merge_equals_one_pass():
    rng = np.random.default_rng(6)
    a, b = random_pair(rng, (1000, 33), "float16", "float32")
    a[700, 3] = 0  # make the max land in the second part
    b[700, 3] = 9
    whole = fp.parity(a, b, atol=1e-3)
    parts = [fp.parity(a[i:j], b[i:j], atol=1e-3) for i, j in [(0, 123), (123, 500), (500, 1000)]]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.shape == (1000, 33)
    for field in ("numel", "max_abs_diff", "max_abs_index", "max_rel_diff", "max_rel_index", "mismatches",
                  "nonfinite", "equal_inf", "max_ulp_diff", "abs_diff_histogram"):
        assert getattr(merged, field) == getattr(whole, field), field
    assert merged.max_abs_index == (700, 3)
    for field in ("cosine_sim", "pcc", "mean_abs_diff", "rmse", "snr_db"):
        assert getattr(merged, field) == pytest.approx(getattr(whole, field), rel=1e-14, abs=1e-15), field


def test_merge_flat_and_errors():
    x = np.arange(1, 13, dtype=np.float32)
    s1 = fp.parity(x[:5].reshape(5, 1), x[:5].reshape(5, 1) + 1)
    s2 = fp.parity(x[5:].reshape(7), x[5:].reshape(7) + 2)
    m = s1.merge(s2)
    assert m.shape == (12,) and m.max_abs_index == (5,) and m.max_abs_diff == 2.0
    with pytest.raises(ValueError, match="different tolerances"):
        s1.merge(fp.parity(x, x, atol=1.0))
    with pytest.raises(ValueError, match="different dtypes"):
        s1.merge(fp.parity(x.astype(np.float64), x))
    with pytest.raises(TypeError, match="can only merge ParityStats"):
        s1.merge({})


def test_to_dict_is_json_ready_and_repr():
    a = np.array([1.0, np.nan, 2.0], np.float32)
    b = np.array([1.0, 1.0, 2.5], np.float32)
    s = fp.parity(a, b)
    d = s.to_dict()
    text = json.dumps(d)
    assert "NaN" in text
    back = json.loads(text)
    assert back["numel"] == 3 and back["max_abs_index"] == [1] and back["nonfinite"] == 1
    assert set(d) >= {"numel", "max_abs_diff", "max_abs_index", "max_rel_diff", "cosine_sim", "mismatches",
                      "nonfinite", "equal_inf", "mean_abs_diff", "rmse", "snr_db", "pcc", "max_ulp_diff", "abs_diff_histogram"}
    r = repr(s)
    assert "Mismatched elements: 2 / 3" in r and "Greatest absolute difference: nan at index (1,)" in r


def test_pickle_roundtrip():
    rng = np.random.default_rng(0)
    a, b = random_pair(rng, (100,), "float32", "float32")
    s = fp.parity(a, b, atol=1e-4)
    t = pickle.loads(pickle.dumps(s))
    assert t == s and repr(t) == repr(s)
    assert t.merge(s).numel == 200


def test_convenience_functions():
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([1.0, 2.5, 3.0])
    assert fp.max_abs_diff(a, b) == 0.5
    assert fp.cosine_sim(a, b) == pytest.approx(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-15)


# ---- inputs and errors ---------------------------------------------------------------------------


def test_bfloat16_and_lists_and_scalars():
    a = np.array([1.0, 2.0, 3.0], dtype=ml_dtypes.bfloat16)
    assert fp.parity(a, a.astype(np.float32)).max_abs_diff == 0.0
    assert fp.parity([1.0, 2.0], [1.0, 2.5]).max_abs_diff == 0.5
    s = fp.parity(np.float32(2.0), np.float64(3.0))
    assert s.numel == 1 and s.max_abs_index == () and s.max_abs_diff == 1.0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"same shape \(no broadcasting\), got \(3, 4\) and \(4, 3\)"):
        fp.parity(np.ones((3, 4)), np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"got \(3,\) and \(1,\)"):
        fp.parity(np.ones(3), np.ones(1))


def test_zero_elements():
    with pytest.raises(ValueError, match=r"no elements \(shape \(0, 3\)\)"):
        fp.parity(np.ones((0, 3)), np.ones((0, 3)))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.longdouble])
def test_unsupported_dtypes(dtype):
    x = np.ones(4, dtype=dtype)
    with pytest.raises(TypeError, match=f"a has dtype {np.dtype(dtype)}"):
        fp.parity(x, np.ones(4, np.float32))
    with pytest.raises(TypeError, match=f"b has dtype {np.dtype(dtype)}"):
        fp.parity(np.ones(4, np.float32), x)


def test_integer_lists_are_a_type_error():
    with pytest.raises(TypeError, match="a has dtype int64"):
        fp.parity([1, 2], [1.0, 2.0])


def test_non_native_byte_order():
    x = np.ones(4, dtype=">f4")
    with pytest.raises(TypeError, match=r"non-native byte order \(>f4\)"):
        fp.parity(x, np.ones(4, np.float32))


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_tolerances(bad):
    x = np.ones(3)
    with pytest.raises(ValueError, match="atol must be a finite number >= 0"):
        fp.parity(x, x, atol=bad)
    with pytest.raises(ValueError, match="rtol must be a finite number >= 0"):
        fp.parity(x, x, rtol=bad)
    with pytest.raises(TypeError, match="atol must be a number"):
        fp.parity(x, x, atol="1e-3")


class _FakeDevice:
    """Claims to be a CUDA array (a pointer that is never dereferenced: the pair is rejected first)."""

    def __init__(self, shape):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (0x10, False), "version": 3,
                                         "strides": None}


def test_host_device_mix_is_a_value_error():
    with pytest.raises(ValueError, match="a is on cpu and b is on cuda"):
        fp.parity(np.ones(3, np.float32), _FakeDevice((3,)))
    with pytest.raises(ValueError, match="a is on cuda and b is on cpu"):
        fp.parity(_FakeDevice((3,)), np.ones(3, np.float32))


def test_not_an_array():
    with pytest.raises(TypeError, match="a is not an array or tensor"):
        fp.parity(object(), np.ones(3))


def test_dlpack_input_zero_copy():
    rng = np.random.default_rng(0)
    a, b = random_pair(rng, (40, 3), "float32", "float32")

    class Producer:  # only the DLPack protocol, backed by a NumPy array
        def __init__(self, arr):
            self.arr = arr

        def __dlpack__(self, stream=None):
            return self.arr.__dlpack__()

        def __dlpack_device__(self):
            return self.arr.__dlpack_device__()

    assert fp.parity(Producer(a[::-1]), b[::-1]) == fp.parity(a[::-1], b[::-1])


def test_64bit_indexing_beyond_2_31_elements():
    # Overlapping strided views: element [i, j] = buf[i + j]; 2^31 + 2048 elements from 8 MiB.
    rows, cols = (1 << 21) + 2, 1024
    buf_a = np.zeros(rows + cols - 1, np.float32)
    buf_b = np.zeros_like(buf_a)
    buf_b[-1] = 1.0  # only the last element of the view differs
    view = lambda buf: np.lib.stride_tricks.as_strided(buf, shape=(rows, cols), strides=(4, 4), writeable=False)
    s = fp.parity(view(buf_a), view(buf_b))
    assert s.numel == rows * cols > 2**31
    assert s.max_abs_diff == 1.0 and s.max_abs_index == (rows - 1, cols - 1)
    assert s.mismatches == 1 and s.abs_diff_histogram["0"] == rows * cols - 1


def test_core_merge_is_order_independent_for_maxima():
    # Equal maxima in two parts: whichever order the parts merge in, the smaller index wins (the
    # GPU merges interleaved thread partials; the CPU merges blocks in order).
    a = np.array([0.0, 2.0, 0.0, 2.0], np.float32)
    b = np.zeros(4, np.float32)
    first = fp.parity(a[:2], b[:2])._acc
    second = fp.parity(a[2:], b[2:])._acc
    in_order = first.merged(second, 2).result()
    reversed_ = _core.ParityAccum().merged(second, 2).merged(first, 0).result()
    assert in_order["max_abs_index"] == reversed_["max_abs_index"] == 1
    assert in_order["max_rel_index"] == reversed_["max_rel_index"] == 1
    nan_a = np.array([np.nan, 1.0, np.nan], np.float32)
    p1 = fp.parity(nan_a[:1], np.zeros(1, np.float32))._acc
    p2 = fp.parity(nan_a[1:], np.zeros(2, np.float32))._acc
    assert _core.ParityAccum().merged(p2, 1).merged(p1, 0).result()["max_abs_index"] == 0


@pytest.mark.parametrize("level", LEVELS)
def test_relative_max_across_blocks(level, monkeypatch):
    # The block kernels screen ratios against the running maximum of earlier blocks: a later block
    # must still win with a larger ratio, lose a tie, and a zero or subnormal reference must count.
    use_level(level, monkeypatch)
    rng = np.random.default_rng(10)
    b = rng.uniform(1.0, 2.0, 5 * 4096 + 3).astype(np.float32)
    a = (b * (1 + 1e-3 * rng.uniform(-1, 1, b.size))).astype(np.float32)
    a[100], b[100] = 3.0, 2.0                  # ratio 0.5 in block 0
    a[3 * 4096 + 7], b[3 * 4096 + 7] = 3.0, 2.0  # the same ratio later: a tie, block 0 keeps it
    s = fp.parity(a, b)
    assert s.max_rel_diff == 0.5 and s.max_rel_index == (100,)
    a[4 * 4096 + 9] = np.float32(1.5) * b[4 * 4096 + 9] * np.float32(1 + 2**-20)  # just above 0.5
    check_against_oracle(fp.parity(a, b), a, b)
    tiny = a.copy(), b.copy()
    tiny[1][2 * 4096 + 5] = np.float32(1e-45)  # subnormal reference: a huge ratio
    check_against_oracle(fp.parity(*tiny), *tiny)
    zero = a.copy(), b.copy()
    zero[1][5 * 4096 + 1] = 0.0  # zero reference in the tail: +inf
    s = fp.parity(*zero)
    assert s.max_rel_diff == math.inf and s.max_rel_index == (5 * 4096 + 1,)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("last", [5000, 3 * 4096 + 18])
def test_max_abs_of_differences_float32_cannot_hold(level, last, monkeypatch):
    # Narrow pairs bound each block's maximum by its differences in float32 and compute the exact
    # one only when that bound reaches the running maximum. These float32 differences need more
    # than float32's 24 bits: equal once truncated to float32, different in float64. The exact
    # maximum (in a block or in the last block's scalar tail) and its first index must win.
    use_level(level, monkeypatch)
    n = 3 * 4096 + 21
    rng = np.random.default_rng(31)
    b = rng.uniform(-1e-3, 1e-3, n).astype(np.float32)
    a = (b + 1e-4 * rng.standard_normal(n)).astype(np.float32)
    one = np.float32(1 + 2**-23)
    for i, tiny in [(10, 2**-30), (last, 2**-29), (last + 1, 2**-29), (4096 + 7, 2**-31)]:
        a[i], b[i] = one, -np.float32(tiny)
    want = 1 + 2**-23 + 2**-29
    for threads in ("1", "2", "8"):
        monkeypatch.setenv("FLASHPARITY_NUM_THREADS", threads)
        s = fp.parity(a, b)
        assert (s.max_abs_diff, s.max_abs_index) == (want, (last,))
    check_against_oracle(s, a, b)


@pytest.mark.parametrize("level", LEVELS)
def test_histogram_edges_at_every_level(level, monkeypatch):
    # Zeros, float64 differences below float32's subnormals (1e-300: nonzero, the "< 2^-40" bin),
    # below 2^-126, the bin edges 2^-40 and 2^18, and past float32's range, in the vector part of a
    # block and in its tail: the same counts as the float64 oracle on every SIMD level.
    use_level(level, monkeypatch)
    rng = np.random.default_rng(12)
    b = rng.standard_normal(2 * 4096 + 5)
    a = b.copy()
    a[:3000] += 1e-3 * rng.standard_normal(3000)
    for i, d in [(5, 1e-300), (4096 + 17, 1e-300), (8196, 1e-300), (6, 1e-40), (7, 2.0**-40), (8, 2.0**18),
                 (9, 2.0**18 * 0.999), (10, 1e30), (4096 + 18, 1e-45), (11, 2.0**-126)]:
        a[i], b[i] = d, 0.0
    s = fp.parity(a, b)
    check_against_oracle(s, a, b)
    assert s.mismatches == int(np.count_nonzero(a != b))
    s32 = fp.parity(a.astype(np.float32), b.astype(np.float32))
    check_against_oracle(s32, a.astype(np.float32), b.astype(np.float32))
    # float32 differences of 2^128 and more (opposite signs near FLT_MAX), in a block and its tail
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    big = np.finfo(np.float32).max
    for i in (12, 4096 + 19, 8196):
        a32[i], b32[i] = big, -big
    a32[13], b32[13] = big, -2.0**104
    check_against_oracle(fp.parity(a32, b32), a32, b32)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("da,db", [("float32", "float32"), ("float64", "float64"), ("float16", "bfloat16")])
def test_histogram_with_every_exponent(level, da, db, monkeypatch):
    # Blocks whose differences take every binary exponent the pair can hold (float32: 2^-149 to
    # 2^127; float64 far past both ends), few or many per block, exponents crossing the counting
    # groups' edges, next to zeros: each block's histogram is counted from per-element codes, eight
    # exponents per pass on avx512icl, and must equal the oracle's.
    use_level(level, monkeypatch)
    rng = np.random.default_rng(16)
    n = 9 * 4096 + 77
    narrow = min((DTYPES[da], DTYPES[db]), key=lambda t: ml_dtypes.finfo(t).bits)
    finfo = ml_dtypes.finfo(narrow)
    # every exponent, subnormals included (float64: up to 2^400, so that the oracle's sums stay finite)
    k = rng.integers(finfo.minexp - finfo.nmant, min(finfo.maxexp, 400), n)
    k[: 2 * 4096] = rng.integers(-30, -20, 2 * 4096)  # a narrow range, under one group, in two blocks
    k[4 * 4096: 5 * 4096] = rng.integers(-1, 9, 4096)  # ten exponents: over a group's edge
    d = np.ldexp(rng.uniform(1, 1.5, n), k).astype(narrow).astype(np.float64)  # below the top's overflow
    d[rng.integers(n, size=n // 5)] = 0
    b = np.zeros(n, DTYPES[db])  # |a - b| = |a|, exact in a's dtype
    a = (d * np.where(rng.integers(2, size=n) == 1, 1, -1)).astype(DTYPES[da])
    s = fp.parity(a, b, atol=1e-3, rtol=1e-3)
    check_against_oracle(s, a, b, 1e-3, 1e-3)
    hist = dict(s.abs_diff_histogram)
    assert sum(hist.values()) == n and hist["0"] >= n // 6
    assert sum(1 for c in hist.values() if c) >= 30  # most bins are hit


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cosine_and_pcc_of_tensors_of_different_scale(level, dtype, monkeypatch):
    # A block takes Σab from Σa² + Σb² - Σ(a-b)² only while the two norms² are within a factor 4;
    # pairs of very different scale (where that form loses about 8 digits at 1e8) and negatively
    # correlated pairs (where the cosine is read off Σab) must still match the oracle to 1e-12.
    use_level(level, monkeypatch)
    rng = np.random.default_rng(17)
    n = 3 * 4096 + 5
    b = (rng.standard_normal(n) + 0.1).astype(DTYPES[dtype])
    for scale in (1e8, -1e8, 1e-8, 2.1, -2.1, 1.9, 1.0, -1.0):
        a = (scale * b.astype(np.float64) + 0.3 * abs(scale) * rng.standard_normal(n)).astype(DTYPES[dtype])
        check_against_oracle(fp.parity(a, b), a, b)


@pytest.mark.parametrize("level", LEVELS)
def test_cosine_when_the_squared_differences_overflow(level, monkeypatch):
    # Σa² and Σb² in range but Σ(a-b)² past it (|a-b| ~ 1.4e154): Σab cannot come from the squares;
    # the cosine (scale-free) must match the one of the same data scaled down.
    use_level(level, monkeypatch)
    rng = np.random.default_rng(19)
    b = rng.standard_normal(4096 + 3) * 1e140
    a = b * 1.01
    a[10], b[10] = 9e153, -5e153  # (a-b)² = 1.96e308: past float64's range
    a[20], b[20] = 3e153, 3e153   # Σa² = 9e307, Σb² = 3.4e307, cosine -0.65
    s = fp.parity(a, b)
    scaled = fp.parity(a / 1e150, b / 1e150)
    assert s.rmse == math.inf
    assert math.isclose(s.cosine_sim, scaled.cosine_sim, rel_tol=0, abs_tol=1e-12)
    assert -0.99 < s.cosine_sim < -0.5


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_infinite_ratio_and_equal_zeros(level, dtype, monkeypatch):
    # A zero reference under a nonzero value makes the relative maximum +inf early; later blocks
    # (more infinities, equal zero pairs as in ReLU outputs) cannot move it, and every other field
    # still matches the oracle.
    use_level(level, monkeypatch)
    rng = np.random.default_rng(13)
    b = np.maximum(rng.standard_normal(6 * 4096 + 9), 0).astype(DTYPES[dtype])  # half exact zeros
    a = (b.astype(np.float64) + 1e-2 * rng.standard_normal(b.size) * (b > 0)).astype(DTYPES[dtype])
    a[10], b[10] = 0.5, 0.0
    a[3 * 4096 + 1], b[3 * 4096 + 1] = 0.25, 0.0
    s = fp.parity(a, b)
    assert s.max_rel_diff == math.inf and s.max_rel_index == (10,)
    check_against_oracle(s, a, b)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("da,db", [("float32", "float32"), ("float16", "float16"), ("bfloat16", "bfloat16"),
                                   ("float16", "float32"), ("float32", "bfloat16")])
@pytest.mark.parametrize("atol,rtol", [(1e-3, 1e-3), (0.0, 1e-2), (2.0**-7, 0.0), (1e-45, 1e-7), (1e-300, 0.25),
                                       (0.0, 0.75), (1e38, 0.0), (3.0, 2.0)])
def test_isclose_boundary_at_every_level(level, da, db, atol, rtol, monkeypatch):
    # Narrow pairs screen isclose in float32 and recount undecided blocks in float64: differences on
    # the float32 grid right below, at and above atol + rtol * |b|, zero pairs, subnormal and huge
    # references, and tolerances past the screen's range must all count as the float64 definition.
    use_level(level, monkeypatch)
    rng = np.random.default_rng(14)
    n = 3 * 4096 + 11
    b = rng.standard_normal(n).astype(DTYPES[db])
    bf = b.astype(np.float64)
    limit = atol + rtol * np.abs(bf)
    target = bf + np.where(rng.integers(2, size=n) == 1, limit, -limit)
    step = rng.integers(-1, 2, size=n)  # one step of the grid down, none, or up from the nearest
    with np.errstate(over="ignore"):  # a huge atol leaves float16's range: inf, a plain mismatch
        a32 = target.astype(DTYPES[da]).astype(np.float32)
        a = np.where(step < 0, np.nextafter(a32, np.float32(-np.inf)),
                     np.where(step > 0, np.nextafter(a32, np.float32(np.inf)), a32)).astype(DTYPES[da])
    a[::7] = b[::7].astype(DTYPES[da])  # exact matches, zero pairs among them
    b[::11] = 0
    a[::22] = 0
    if np.float16 not in (DTYPES[da], DTYPES[db]):
        b[5], a[5] = 1e-40, 3e-40    # subnormal reference (float32 range)
        b[6], a[6] = 3e38, -3e38     # a difference past FLT_MAX
    check_against_oracle(fp.parity(a, b, atol=atol, rtol=rtol), a, b, atol, rtol)


def blocks_after_a_running_ratio(rng, ratio):
    """Four blocks (4096 elements each) of float32 pairs with ratios near 0.001, but for one of
    `ratio` at index 10: the running relative maximum the later blocks are screened against."""
    b = rng.uniform(1.0, 2.0, 4 * 4096).astype(np.float32)
    a = (b * np.float32(1.001)).astype(np.float32)
    a[10], b[10] = 1.0 + ratio, 1.0
    return a, b


@pytest.mark.parametrize("level", LEVELS)
def test_ratio_screen_on_denormal_inputs(level, monkeypatch):
    # The float32 ratio screen bounds thr * |b| with no margin (a margin, being a normal number, would
    # flag every lane of a denormal b): in the subnormal range its rounding is absorbed by comparing
    # multiples of 2^-149. After a running maximum of 1.5, denormal pairs with ratios just below,
    # equal to (a tie, which loses to the earlier index) and just above it, in later blocks.
    use_level(level, monkeypatch)
    rng = np.random.default_rng(28)
    a, b = blocks_after_a_running_ratio(rng, 1.5)
    tiny = lambda m: np.uint32(m).view(np.float32)  # noqa: E731  (m * 2^-149)
    for at, (m, k) in zip((4096 + 3, 4096 + 40, 2 * 4096 + 17, 3 * 4096 + 5, 3 * 4096 + 6),
                          ((2, 2), (2, 3), (1_000_001, 1_499_999), (1_000_001, 1_500_002), (1, 2))):
        b[at], a[at] = tiny(m), tiny(m + k)  # ratio k / m: 1, 1.5 (tie), below, above, 2
    s = fp.parity(a, b)
    assert s.max_rel_diff == 2.0 and s.max_rel_index == (3 * 4096 + 6,)
    check_against_oracle(s, a, b)
    a[3 * 4096 + 6] = b[3 * 4096 + 6]  # without the ratio of 2, the one just above 1.5 wins
    s = fp.parity(a, b)
    assert s.max_rel_diff == 1_500_002 / 1_000_001 and s.max_rel_index == (3 * 4096 + 5,)
    check_against_oracle(s, a, b)
    # A difference equal to the bound: after a maximum of 0.75, ratio 4/5 = 0.8 rounds its bound
    # fl(0.75 (1 - 2^-16) 5 2^-149) to 4 units, the difference itself: a lane must be flagged at >=.
    a, b = blocks_after_a_running_ratio(rng, 0.75)
    b[2 * 4096 + 17], a[2 * 4096 + 17] = tiny(5), tiny(9)
    s = fp.parity(a, b)
    assert s.max_rel_diff == 0.8 and s.max_rel_index == (2 * 4096 + 17,)
    check_against_oracle(s, a, b)


@pytest.mark.parametrize("level", LEVELS)
def test_ratio_screen_with_a_difference_past_float32_range(level, monkeypatch):
    # After a running relative maximum of 1.5, a later block holds a = -3e38, b = 3e38: ratio 2,
    # |a-b| = 6e38 past FLT_MAX and 1.5 * |b| past it too; the screen must still send that block to
    # the exact ratio pass.
    use_level(level, monkeypatch)
    a, b = blocks_after_a_running_ratio(np.random.default_rng(15), 1.5)
    a[3 * 4096 + 5], b[3 * 4096 + 5] = -3e38, 3e38
    s = fp.parity(a, b)
    assert s.max_rel_diff == 2.0 and s.max_rel_index == (3 * 4096 + 5,)
    check_against_oracle(s, a, b)


def test_inputs_at_odd_byte_offsets_are_read_safely():
    # a contiguous view at an odd byte offset is gathered like a strided one: the same stats
    rng = np.random.default_rng(13)
    for dtype in (np.float32, np.float64, np.float16):
        a = rng.standard_normal(1001).astype(dtype)
        b = (a + dtype(1e-2)).astype(dtype)
        raw = np.zeros(a.nbytes + 1, np.uint8)
        raw[1:] = np.frombuffer(a.tobytes(), np.uint8)
        odd = raw[1:].view(dtype)
        assert not odd.flags.aligned
        assert fp.parity(odd, b).to_dict() == fp.parity(a, b).to_dict()
