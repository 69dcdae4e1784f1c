"""The AMX level (avx512amx): bfloat16 flash2 with both products on AMX tiles.

Each test runs twice: with the tiles emulated (FLASHPARITY_AMX_EMULATE=1: the AMX kernels' tiling,
packing and softmax, with each tile instruction in plain code, on any CPU with AVX-512 BF16), and on
the tile instructions themselves (FLASHPARITY_SIMD=avx512amx), which needs an AMX CPU and skips
elsewhere. Against the float64 oracle under FlashAttention-2's rule, as every level.
"""

from __future__ import annotations

import numpy as np
import pytest

import flashparity as fp
from attention_ref import reference
from flashparity import _core
from test_attention import BF16, err, lse_err, rounding

INFO = fp.build_info()
X86 = "avx512amx" in _core.simd_levels()


def _skip_reason(mode: str) -> str | None:
    if not X86:
        return "AMX is x86-64's"
    if mode == "hardware":
        return None if INFO["amx"] == "available" else f"no AMX CPU (amx: {INFO['amx']})"
    if "avx512bf16" not in INFO["cpu_features"] or _core.simd_levels().index(INFO["simd_detected"]) < 2:
        return "the emulation runs in the AVX-512 BF16 unit: this CPU lacks AVX-512 BF16"
    return None


@pytest.fixture(params=["emulated", "hardware"])
def amx(request, monkeypatch):
    why = _skip_reason(request.param)
    if why:
        pytest.skip(why)
    if request.param == "emulated":
        monkeypatch.setenv("FLASHPARITY_AMX_EMULATE", "1")
        monkeypatch.delenv("FLASHPARITY_SIMD", raising=False)
    else:
        monkeypatch.setenv("FLASHPARITY_SIMD", "avx512amx")
        monkeypatch.delenv("FLASHPARITY_AMX_EMULATE", raising=False)
        if _core.simd_level() != "avx512amx":  # the tile state, asked for now, was refused
            pytest.skip(f"AMX: {fp.build_info()['amx']}")
    return request.param


def make(rng, b, sq, sk, hq, hk, d):
    return tuple(rng.standard_normal((b, s, h, d)).astype(BF16) for s, h in ((sq, hq), (sk, hk), (sk, hk)))


def fa2_rule(out, naive, ref):
    """FlashAttention-2's rule: error vs float64 <= 2x the naive kernel's in bfloat16 (+ one rounding)."""
    assert err(out, ref) <= 2 * err(naive, ref) + rounding(BF16, ref)


def check_lse(lse, ref_lse):
    assert lse_err(lse, ref_lse) < 1e-2  # (and rows that see nothing: -inf)


CASES = [  # (b, sq, sk, hq, hk, d, options)
    (1, 130, 200, 4, 2, 64, {}),                                  # GQA, several query and key tiles
    (2, 37, 53, 4, 2, 40, {"causal": True}),                      # odd tails, one partial row tile
    (1, 70, 50, 2, 1, 128, {"causal": True}),                     # MQA, first rows see nothing
    (1, 65, 130, 3, 3, 17, {"window": (5, 3), "softcap": 10.0}),  # head_dim 17: one K step, mostly padding
    (1, 1, 200, 8, 1, 128, {"causal": True}),                     # decode: one query row
    (1, 3, 1, 1, 1, 96, {}),                                      # one key
    (1, 40, 80, 2, 2, 33, {"window": (0, 0)}),                    # a one-key diagonal; head_dim 33
    (1, 96, 96, 2, 2, 256, {"causal": True}),                     # the largest head_dim: 8 K steps
    (1, 48, 70, 2, 2, 80, {"alibi": True, "causal": True}),       # ALiBi
    (1, 33, 65, 2, 2, 16, {}),                                    # head_dim 16: half an A row
]


@pytest.mark.parametrize("case", CASES, ids=[str(c[:6]) for c in CASES])
def test_bfloat16_flash2_on_tiles_matches_the_oracle(amx, case):
    b, sq, sk, hq, hk, d, opts = case
    rng = np.random.default_rng(sum(case[:6]))
    q, k, v = make(rng, b, sq, sk, hq, hk, d)
    opts = dict(opts)
    if opts.pop("alibi", False):
        opts["alibi_slopes"] = rng.uniform(0.01, 0.5, hq).astype(np.float32)
    ref_out, ref_lse = reference(q, k, v, **opts)
    out, lse = fp.attention(q, k, v, impl="flash2", return_lse=True, **opts)
    naive = fp.attention(q, k, v, impl="naive", **opts)
    assert out.dtype == BF16 and out.shape == q.shape
    fa2_rule(out, naive, ref_out)
    check_lse(lse, ref_lse)


def test_every_head_dim_tail(amx):
    # head_dim 1..9 and either side of each multiple of 32 (the A row): every padding of the K steps
    rng = np.random.default_rng(5)
    for d in [*range(1, 10), 31, 32, 63, 64, 65, 95, 127, 129]:
        q, k, v = make(rng, 1, 35, 77, 2, 1, d)
        ref_out, ref_lse = reference(q, k, v, causal=True)
        out, lse = fp.attention(q, k, v, impl="flash2", causal=True, return_lse=True)
        fa2_rule(out, fp.attention(q, k, v, impl="naive", causal=True), ref_out)
        check_lse(lse, ref_lse)


def test_empty_and_size_one(amx):
    rng = np.random.default_rng(6)
    for shape in [(1, 0, 5, 1, 1, 8), (1, 5, 0, 1, 1, 8), (1, 1, 1, 1, 1, 1), (0, 3, 3, 1, 1, 8)]:
        q, k, v = make(rng, *shape)
        ref_out, ref_lse = reference(q, k, v)
        out, lse = fp.attention(q, k, v, impl="flash2", return_lse=True)
        assert out.shape == q.shape
        fa2_rule(out, fp.attention(q, k, v, impl="naive"), ref_out)
        check_lse(lse, ref_lse)


def test_masked_keys_contribute_nothing_whatever_their_values(amx):
    rng = np.random.default_rng(7)
    q, k, v = make(rng, 1, 70, 90, 2, 2, 48)
    v = v.copy()
    v[0, 80:, :, 3] = np.inf   # keys no row sees under the causal mask (rows 0..69 see keys <= row + 20)
    v[0, 85:, :, 7] = np.nan
    out = fp.attention(q, k, v, impl="flash2", causal=True)
    clean = v.copy()
    clean[0, 80:] = 0
    ref_out, _ = reference(q, k, clean, causal=True)
    assert np.isfinite(np.asarray(out, np.float32)[:, :60]).all()
    fa2_rule(out[:, :60], fp.attention(q, k, clean, impl="naive", causal=True)[:, :60], ref_out[:, :60])
    # rows that do see those keys get the non-finite values: inf (or NaN where inf meets -inf) and NaN
    o = np.asarray(out, np.float32)
    assert not np.isfinite(o[0, 60:, :, 3]).any() and np.isnan(o[0, 65:, :, 7]).all()


def test_varlen_and_paged_cache(amx):
    rng = np.random.default_rng(8)
    lens_q, lens_k, hq, hk, d = [3, 0, 40, 1], [5, 4, 90, 37], 4, 2, 64
    cu_q = np.cumsum([0, *lens_q]).astype(np.int32)
    cu_k = np.cumsum([0, *lens_k]).astype(np.int32)
    q = rng.standard_normal((cu_q[-1], hq, d)).astype(BF16)
    k = rng.standard_normal((cu_k[-1], hk, d)).astype(BF16)
    v = rng.standard_normal((cu_k[-1], hk, d)).astype(BF16)
    out, lse = fp.attention_varlen(q, k, v, cu_q, cu_k, impl="flash2", causal=True, return_lse=True)
    naive = fp.attention_varlen(q, k, v, cu_q, cu_k, impl="naive", causal=True)
    for i in range(len(lens_q)):
        sq, sk = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
        ref_out, ref_lse = reference(q[None, sq], k[None, sk], v[None, sk], causal=True)
        fa2_rule(out[None, sq], naive[None, sq], ref_out)
        check_lse(lse[:, sq][None] if lse.ndim == 2 else lse[None, :, sq], ref_lse)
    # a paged cache: 3 sequences over blocks of 16 rows, the pages out of order
    lens = np.array([37, 1, 64], np.int32)
    nb = 4
    table = rng.permutation(3 * nb).reshape(3, nb).astype(np.int32)
    pool_k = rng.standard_normal((3 * nb, 16, hk, d)).astype(BF16)
    pool_v = rng.standard_normal((3 * nb, 16, hk, d)).astype(BF16)
    qd = rng.standard_normal((3, 2, hq, d)).astype(BF16)
    out = fp.attention_kvcache(qd, pool_k, pool_v, lens, block_table=table, impl="flash2", causal=True)
    naive = fp.attention_kvcache(qd, pool_k, pool_v, lens, block_table=table, impl="naive", causal=True)
    for i in range(3):
        ks = pool_k[table[i]].reshape(-1, hk, d)[: lens[i]]
        vs = pool_v[table[i]].reshape(-1, hk, d)[: lens[i]]
        ref_out, _ = reference(qd[i:i + 1], ks[None], vs[None], causal=True)
        fa2_rule(out[i:i + 1], naive[i:i + 1], ref_out)


def test_views_threads_and_repeats_give_the_same_bits(amx, monkeypatch):
    rng = np.random.default_rng(9)
    base = rng.standard_normal((2, 4, 150, 128)).astype(BF16)
    q = base[:, :, :, ::2].transpose(0, 2, 1, 3)  # strided head_dim, BHSD memory seen as BSHD
    k, v = base[:, :2, :120, 1::2].transpose(0, 2, 1, 3), base[:, 2:, :120, :64].transpose(0, 2, 1, 3)
    assert not q.flags.c_contiguous
    outs = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("FLASHPARITY_NUM_THREADS", threads)
        outs.append(fp.attention(q, k, v, impl="flash2", causal=True))
    for o in outs[1:]:
        assert np.array_equal(np.asarray(o).view(np.uint16), np.asarray(outs[0]).view(np.uint16))
    contiguous = fp.attention(*map(np.ascontiguousarray, (q, k, v)), impl="flash2", causal=True)
    assert np.array_equal(np.asarray(contiguous).view(np.uint16), np.asarray(outs[0]).view(np.uint16))
    ref_out, _ = reference(q, k, v, causal=True)
    fa2_rule(outs[0], fp.attention(q, k, v, impl="naive", causal=True), ref_out)


def test_backward_at_the_amx_level(amx, monkeypatch):
    # the level has no backward of its own: the AVX-512 BF16 unit's runs, the very kernel of avx512icl
    # (on tiles this checks the dispatch; emulated, the level is avx512icl already and the gold check
    # is what counts)
    from attention_ref import reference_backward

    rng = np.random.default_rng(10)
    q, k, v = make(rng, 1, 40, 50, 2, 1, 32)
    out, lse = fp.attention(q, k, v, impl="flash2", causal=True, return_lse=True)
    dout = rng.standard_normal(q.shape).astype(BF16)
    grads = fp.attention_backward(q, k, v, out, lse, dout, impl="flash2", causal=True)
    monkeypatch.setenv("FLASHPARITY_SIMD", "avx512icl")
    monkeypatch.delenv("FLASHPARITY_AMX_EMULATE", raising=False)
    again = fp.attention_backward(q, k, v, out, lse, dout, impl="flash2", causal=True)
    for g, h, x in zip(grads, again, (q, k, v)):
        assert g.shape == x.shape and np.array_equal(np.asarray(g).view(np.uint16), np.asarray(h).view(np.uint16))
    gold = reference_backward(q, k, v, dout, causal=True)
    for g, r in zip(grads, gold):
        assert err(g, r) < 0.05 * float(np.max(np.abs(r)))


def test_emulated_tiles_add_each_pair_as_tdpbf16ps_does(monkeypatch):
    # TDPBF16PS adds a pair's even product, then its odd one, rounding each time (Intel's pseudo-code);
    # VDPBF16PS adds the odd one first. A one-key row's LSE is its score exactly (times the scale, 1/2
    # here), so it shows the order: q.k = 1 + 0 + 2^-24 + 2^-23, summed as ((1 + 0) + 2^-24) + 2^-23 =
    # 1 + 2^-23 on tiles (the tie 1 + 2^-24 rounds to even, 1) but ((1 + 0) + 2^-23) + 2^-24 = 1 + 2^-22
    # in odd-first order. That the emulated run gives the first proves it ran the tile kernels.
    why = _skip_reason("emulated")
    if why:
        pytest.skip(why)
    q = np.array([1, 0, 2**-12, 2**-12], np.float32).reshape(1, 1, 1, 4).astype(BF16)
    k = np.array([1, 0, 2**-12, 2**-11], np.float32).reshape(1, 1, 1, 4).astype(BF16)
    v = np.ones((1, 1, 1, 4), BF16)
    monkeypatch.setenv("FLASHPARITY_SIMD", "avx512icl")  # (the dot-product kernel below, even on an AMX CPU)
    monkeypatch.setenv("FLASHPARITY_AMX_EMULATE", "1")
    assert fp.build_info()["amx_emulation"]
    _, lse = fp.attention(q, k, v, impl="flash2", return_lse=True)
    assert float(lse.ravel()[0]) * 2 == 1 + 2.0**-23
    monkeypatch.setenv("FLASHPARITY_AMX_EMULATE", "0")
    assert not fp.build_info()["amx_emulation"]
    _, lse = fp.attention(q, k, v, impl="flash2", return_lse=True)
    assert float(lse.ravel()[0]) * 2 == 1 + 2.0**-22  # the dot-product kernel: odd first
    monkeypatch.setenv("FLASHPARITY_AMX_EMULATE", "yes")
    with pytest.raises(ValueError, match="^FLASHPARITY_AMX_EMULATE must be 0 or 1, got 'yes'$"):
        fp.attention(q, k, v, impl="flash2")


@pytest.mark.skipif(not X86, reason="AMX is x86-64's")
def test_amx_is_an_opt_in_level(monkeypatch):
    levels = _core.simd_levels()
    assert levels[-1] == "avx512amx"
    monkeypatch.delenv("FLASHPARITY_SIMD", raising=False)
    assert _core.simd_level() != "avx512amx"  # never without asking, even on an AMX CPU
    monkeypatch.setenv("FLASHPARITY_SIMD", "avx512amx")
    level = _core.simd_level()  # (on an AMX CPU this asks for the tile state)
    info = fp.build_info()
    # a cap: the CPU's level where it has no AMX (or the OS refused the tile state: avx512icl)
    assert level == ("avx512amx" if info["amx"] == "available" else info["simd_detected"])
    assert (info["simd_detected"] == "avx512amx") == (info["amx"] == "available")
    assert info["amx"] == "available" or info["amx"].startswith(("not ", "refused by the kernel"))
