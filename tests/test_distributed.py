"""fp.distributed.parity over real gloo process groups (2-4 processes on this machine): the stats of
sharded tensors equal fp.parity on the whole tensors; bad shards fail on every rank."""

from __future__ import annotations

import math
import os
import pickle
import subprocess

import numpy as np
import pytest
from emulation import python_command

import flashparity as fp

pytest.importorskip("torch")
HERE = os.path.dirname(os.path.abspath(__file__))

EXACT = ("numel", "max_abs_diff", "max_abs_index", "max_rel_diff", "max_rel_index", "mismatches", "nonfinite", "equal_inf",
         "max_ulp_diff", "abs_diff_histogram", "shape", "dtypes", "atol", "rtol", "ulp_dtype")
SUMS = ("cosine_sim", "mean_abs_diff", "rmse", "snr_db", "pcc")


def run_ranks(tmp_path, world, arrays, atol=0.0, rtol=0.0, timeout=120):
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **arrays)
    init = tmp_path / "init"
    procs = [subprocess.Popen([*python_command(), os.path.join(HERE, "dist_worker.py"), str(r), str(world), str(init),
                               str(inputs), str(tmp_path / f"out{r}.pkl"), repr(atol), repr(rtol)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            p.kill()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r]}"
    results = []
    for r in range(world):
        with open(tmp_path / f"out{r}.pkl", "rb") as fh:
            results.append(pickle.load(fh))
    return results


def assert_same_stats(got: fp.ParityStats, want: fp.ParityStats):
    g, w = got.to_dict(), want.to_dict()
    for k in EXACT:
        assert g[k] == w[k] or (g[k] != g[k] and w[k] != w[k]), (k, g[k], w[k])
    for k in SUMS:
        if math.isnan(w[k]):
            assert math.isnan(g[k]), k
        else:
            assert g[k] == pytest.approx(w[k], rel=1e-12, abs=1e-300), k


@pytest.mark.parametrize("world,split", [(2, [0, 1, 97]), (3, [0, 40, 41, 97]), (4, [0, 30, 30, 64, 97])],
                         ids=["2-ranks-one-row", "3-ranks-uneven", "4-ranks-one-empty"])
def test_sharded_stats_equal_the_whole_tensor(tmp_path, world, split):
    rng = np.random.default_rng(world)
    b = rng.standard_normal((97, 5, 3)).astype(np.float32)
    a = (b + 1e-4 * rng.standard_normal(b.shape)).astype(np.float32)
    a[60, 2, 1] = 0.75 + b[60, 2, 1]  # the maximum, on a later rank: its index must be global
    a[80, 0, 0] = b[80, 0, 0] + 0.75  # a tie further on: the first one wins
    results = run_ranks(tmp_path, world, {"a": a, "b": b, "split": np.array(split)}, atol=1e-4, rtol=1e-3)
    want = fp.parity(a, b, atol=1e-4, rtol=1e-3)
    for r, (kind, stats) in enumerate(results):
        assert kind == "ok", (r, stats)
        assert stats.shape == (97, 5, 3)
        assert stats.max_abs_index == want.max_abs_index
        assert_same_stats(stats, want)
        assert stats == results[0][1]  # every rank returns the same bits


def test_nan_and_mixed_dtypes_propagate_across_ranks(tmp_path):
    rng = np.random.default_rng(7)
    b = rng.standard_normal((50, 9))
    a = (b + 1e-3 * rng.standard_normal(b.shape)).astype(np.float16)
    a[33, 4] = np.nan  # on rank 1: NaN wins max_abs, at its global index
    a[40, 1] = np.inf
    results = run_ranks(tmp_path, 2, {"a": a, "b": b, "split": np.array([0, 21, 50])})
    want = fp.parity(a, b)
    for kind, stats in results:
        assert kind == "ok", stats
        assert math.isnan(stats.max_abs_diff) and stats.max_abs_index == (33, 4)
        assert stats.dtypes == ("float16", "float64") and stats.ulp_dtype == "float16"
        assert_same_stats(stats, want)


def test_equal_infinities_are_set_aside_across_ranks(tmp_path):
    rng = np.random.default_rng(9)
    b = rng.standard_normal((40, 6)).astype(np.float32)
    a = (b + 1e-3 * rng.standard_normal(b.shape)).astype(np.float32)
    a[5:9] = b[5:9] = -np.inf  # rank 0's share holds some, rank 1's nothing else: masked rows
    a[20:30] = b[20:30] = np.inf
    results = run_ranks(tmp_path, 3, {"a": a, "b": b, "split": np.array([0, 9, 20, 40])}, atol=1e-2)
    want = fp.parity(a, b, atol=1e-2)
    assert want.equal_inf == 84 and want.mismatches == 0 and math.isfinite(want.cosine_sim)
    for kind, stats in results:
        assert kind == "ok", stats
        assert_same_stats(stats, want)


def test_bfloat16_shards(tmp_path):
    import ml_dtypes

    rng = np.random.default_rng(3)
    b = rng.standard_normal((31, 17)).astype(ml_dtypes.bfloat16)
    a = (b.astype(np.float32) * 1.01).astype(ml_dtypes.bfloat16)
    results = run_ranks(tmp_path, 3, {"a": a.view(np.uint16), "b": b.view(np.uint16), "bf16": np.array(1),
                                      "split": np.array([0, 10, 11, 31])})
    want = fp.parity(a, b)
    for kind, stats in results:
        assert kind == "ok", stats
        assert_same_stats(stats, want)
        assert stats.max_ulp_diff == want.max_ulp_diff > 0


def test_trailing_shapes_that_differ_fail_on_every_rank(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"a": rng.standard_normal((6, 4)), "b": rng.standard_normal((6, 4)), "split": np.array([0, 3, 6]),
              "a1": rng.standard_normal((3, 5)), "b1": rng.standard_normal((3, 5))}
    results = run_ranks(tmp_path, 2, arrays)
    for kind, msg in results:
        assert kind == "ValueError"
        assert "trailing shapes must agree" in msg and "(3, 4)" in msg and "(3, 5)" in msg


def test_a_bad_shard_on_one_rank_fails_every_rank(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {"a": rng.standard_normal((6, 4)), "b": rng.standard_normal((6, 4)), "split": np.array([0, 3, 6]),
              "b1": rng.standard_normal((3, 3))}  # rank 1: a and b shards of different shapes
    results = run_ranks(tmp_path, 2, arrays)
    assert results[1] == ("ValueError", "a_local and b_local must have the same shape, got (3, 4) and (3, 3)")
    kind, msg = results[0]
    assert kind == "ValueError" and msg.startswith("rank 1's shard was rejected: a_local and b_local")


def test_needs_an_initialized_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        fp.distributed.parity(np.ones(3), np.ones(3))


def test_state_buffer_round_trips_every_field():
    from flashparity import distributed

    rng = np.random.default_rng(5)
    a, b = rng.standard_normal(1000), rng.standard_normal(1000)
    a[17] = np.nan
    s = fp.parity(a, b, atol=0.5, rtol=0.25)
    buf = distributed._encode((1000,), s.dtypes, 0.5, 0.25, s._acc, None)
    assert buf.nbytes == distributed._BYTES
    back = distributed._decode(buf, 0)
    assert back["shape_a"] == (1000,) and back["dtypes"] == s.dtypes and (back["atol"], back["rtol"]) == (0.5, 0.25)
    assert fp.ParityStats(back["acc"], (1000,), s.dtypes, 0.5, 0.25) == s


def test_a_bad_tolerance_on_one_rank_fails_every_rank(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {"a": rng.standard_normal((4, 2)), "b": rng.standard_normal((4, 2)), "split": np.array([0, 2, 4]),
              "atol1": np.array(-1.0)}
    results = run_ranks(tmp_path, 2, arrays)
    assert results[1] == ("ValueError", "atol must be a finite number >= 0, got -1.0")
    assert results[0] == ("ValueError", "rank 1's shard was rejected: atol must be a finite number >= 0, got -1.0")


def test_different_tolerances_across_ranks_are_an_error(tmp_path):
    rng = np.random.default_rng(4)
    arrays = {"a": rng.standard_normal((4, 2)), "b": rng.standard_normal((4, 2)), "split": np.array([0, 2, 4]),
              "atol1": np.array(0.5)}
    for kind, msg in run_ranks(tmp_path, 2, arrays):
        assert kind == "ValueError" and "different tolerances" in msg
