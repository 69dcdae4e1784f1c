"""fp.attention_varlen and fp.attention_kvcache (dense and paged) against a float64 NumPy oracle run
per sequence (itself checked against torch SDPA with an explicit bias), every dtype, odd lengths
including 0 and 1, random block tables; bad metadata is a ValueError naming the value."""

from __future__ import annotations

import numpy as np
import pytest

import flashparity as fp
from attention_ref import alibi_bias, reference, visible
from simd import LEVELS, use_level
from test_attention import BF16, DTYPES, IMPLS, alibi_slopes, err, rounding

LOW = {"float16", "bfloat16"}
WHERE = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def placed(where):
    """(put, get): inputs onto `where` (metadata too: the kernels copy what they need) and results
    back to NumPy arrays of a given dtype."""
    if where == "cpu":
        return (lambda x: x), (lambda x, dt: x)
    from flashparity.kernels.kernel_parity import to_host
    from test_attention_gpu import dev

    return dev, to_host


def offsets(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def varlen_reference(q, k, v, cu_q, cu_k, slopes=None, **kw):
    """Per sequence: (out [total_q, H, D], lse [H, total_q]) in float64."""
    out = np.zeros(q.shape, np.float64)
    lse = np.full((q.shape[1], q.shape[0]), -np.inf)
    for b in range(len(cu_q) - 1):
        qs, ks, vs = q[cu_q[b]:cu_q[b + 1]], k[cu_k[b]:cu_k[b + 1]], v[cu_k[b]:cu_k[b + 1]]
        s = None if slopes is None else (slopes if slopes.ndim == 1 else slopes[b])
        o, l = reference(qs[None], ks[None], vs[None], alibi_slopes=s, **kw)
        out[cu_q[b]:cu_q[b + 1]] = o[0]
        lse[:, cu_q[b]:cu_q[b + 1]] = l[0]
    return out, lse


def cache_keys(cache, lens, b, table=None):
    """Sequence b's valid keys [lens[b], H, D] from a dense cache or through a block table."""
    if table is None:
        return cache[b, :lens[b]]
    page = cache.shape[1]
    rows = [cache[table[b, s // page], s % page] for s in range(lens[b])]
    return np.stack(rows) if rows else cache[:0, 0]


def kvcache_reference(q, kc, vc, lens, table=None, slopes=None, **kw):
    out = np.zeros(q.shape, np.float64)
    lse = np.full((q.shape[0], q.shape[2], q.shape[1]), -np.inf)
    for b in range(q.shape[0]):
        ks, vs = cache_keys(kc, lens, b, table), cache_keys(vc, lens, b, table)
        s = None if slopes is None else (slopes if slopes.ndim == 1 else slopes[b])
        o, l = reference(q[b:b + 1], ks[None], vs[None], alibi_slopes=s, **kw)
        out[b], lse[b] = o[0], l[0]
    return out, lse


def check(out, lse, ref_out, ref_lse, dtype, naive_out=None):
    assert out.dtype == np.dtype(DTYPES[dtype])
    if dtype in LOW:
        assert err(out, ref_out) <= 2 * err(naive_out, ref_out) + rounding(DTYPES[dtype], ref_out)
    else:
        assert err(out, ref_out) < (1e-12 if dtype == "float64" else 2e-5)
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    fin = np.isfinite(ref_lse)
    assert (np.max(np.abs(lse[fin] - ref_lse[fin]), initial=0.0)) < (1e-2 if dtype in LOW else 2e-5)


VARLEN = [  # (lens_q, lens_k, hq, hk, d, causal, window, softcap, alibi)
    ([3, 0, 7, 1, 70], [5, 4, 9, 1, 133], 4, 2, 40, True, (-1, -1), 0.0, False),
    ([1, 1, 1], [200, 1, 37], 8, 1, 64, True, (-1, -1), 0.0, True),   # decode over varied caches
    ([65, 2], [65, 90], 3, 3, 17, False, (5, 3), 8.0, True),          # window + softcap + ALiBi
    ([0, 0], [0, 3], 2, 1, 8, False, (-1, -1), 0.0, False),           # nothing to attend
    ([9], [0], 2, 2, 8, False, (-1, -1), 0.0, False),                 # keys: none
]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", VARLEN, ids=[str(c[0]) for c in VARLEN])
def test_varlen_matches_reference(impl, dtype, case, where):
    put, get = placed(where)
    lens_q, lens_k, hq, hk, d, causal, window, softcap, use_alibi = case
    rng = np.random.default_rng(sum(lens_q) + 3 * sum(lens_k) + d)
    cu_q, cu_k = offsets(lens_q), offsets(lens_k)
    dt = DTYPES[dtype]
    q = rng.standard_normal((cu_q[-1], hq, d)).astype(dt)
    k = rng.standard_normal((cu_k[-1], hk, d)).astype(dt)
    v = rng.standard_normal((cu_k[-1], hk, d)).astype(dt)
    slopes = alibi_slopes(rng, len(lens_q), hq, True) if use_alibi else None
    kw = dict(causal=causal, window=window, softcap=softcap)
    out, lse = fp.attention_varlen(put(q), put(k), put(v), put(cu_q), put(cu_k), impl=impl, return_lse=True,
                                   alibi_slopes=slopes, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k), **kw)
    out, lse = get(out, dt), get(lse, np.float32)
    assert out.shape == q.shape and lse.shape == (hq, cu_q[-1]) and lse.dtype == np.float32
    ref_out, ref_lse = varlen_reference(q, k, v, cu_q, cu_k, slopes, **kw)
    naive = fp.attention_varlen(q, k, v, cu_q, cu_k, impl="naive", alibi_slopes=slopes, **kw) if dtype in LOW else None
    check(out, lse, ref_out, ref_lse, dtype, naive)


def test_varlen_equals_attention_per_sequence_bit_for_bit():
    # one kernel, one problem per sequence: the same bits as fp.attention on each sequence alone
    rng = np.random.default_rng(21)
    lens_q, lens_k = [5, 17, 1], [9, 40, 3]
    cu_q, cu_k = offsets(lens_q), offsets(lens_k)
    q = rng.standard_normal((cu_q[-1], 4, 32)).astype(np.float32)
    kv = rng.standard_normal((2, cu_k[-1], 2, 32)).astype(np.float32)
    out, lse = fp.attention_varlen(q, kv[0], kv[1], cu_q, cu_k, causal=True, return_lse=True)
    for b in range(3):
        o, l = fp.attention(q[None, cu_q[b]:cu_q[b + 1]], kv[0][None, cu_k[b]:cu_k[b + 1]],
                            kv[1][None, cu_k[b]:cu_k[b + 1]], causal=True, return_lse=True)
        assert np.array_equal(out[cu_q[b]:cu_q[b + 1]], o[0]) and np.array_equal(lse[:, cu_q[b]:cu_q[b + 1]], l[0])


def test_varlen_views_out_and_lists():
    rng = np.random.default_rng(22)
    cu = [0, 4, 11]
    big = rng.standard_normal((11, 3, 2, 16)).astype(np.float32)
    q, k, v = big[:, :, 0], big[:, :, 1], big[:, :, 1] * 2  # strided heads
    ref = fp.attention_varlen(np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v),
                              np.int32(cu), np.int32(cu))
    buf = np.empty((11, 3, 16), np.float32)
    got = fp.attention_varlen(q, k, v, cu, cu, out=buf)
    assert got is buf and np.array_equal(buf, ref)


PAGED = [  # (lens, sq, page_size, hq, hk, d, causal, window, alibi)
    ([7, 0, 13, 1], 4, 5, 4, 2, 24, True, (-1, -1), False),
    ([33, 16, 1], 1, 16, 8, 2, 64, True, (-1, -1), True),     # vLLM's page size, decode
    ([300, 5], 3, 256, 2, 2, 32, False, (7, 0), True),        # FlashAttention-2's page size
    ([9, 4], 2, 1, 2, 1, 8, False, (-1, -1), False),          # one key per page
    ([0, 0], 2, 3, 2, 2, 8, True, (-1, -1), False),
]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", PAGED, ids=[f"{c[0]}-page{c[2]}" for c in PAGED])
def test_paged_cache_matches_reference(impl, dtype, case, where):
    put, get = placed(where)
    lens, sq, page, hq, hk, d, causal, window, use_alibi = case
    rng = np.random.default_rng(sum(lens) + page + d)
    dt = DTYPES[dtype]
    batch = len(lens)
    max_blocks = max(1, max((n + page - 1) // page for n in lens)) + 1  # a spare column of garbage
    num_blocks = batch * max_blocks + 3
    kc = rng.standard_normal((num_blocks, page, hk, d)).astype(dt)
    vc = rng.standard_normal((num_blocks, page, hk, d)).astype(dt)
    table = rng.permutation(num_blocks)[:batch * max_blocks].reshape(batch, max_blocks).astype(np.int32)
    lens = np.int32(lens)
    # slots past each sequence's length hold NaN and inf, and unused table entries are -1 (as vLLM
    # pads): none of it may reach the output
    for b in range(batch):
        used = (lens[b] + page - 1) // page
        for j in range(max_blocks):
            start = max(0, lens[b] - j * page)
            if start < page:
                kc[table[b, j], start:] = np.nan
                vc[table[b, j], start:] = np.inf
        table[b, used:] = -1
    q = rng.standard_normal((batch, sq, hq, d)).astype(dt)
    slopes = alibi_slopes(rng, batch, hq, True) if use_alibi else None
    kw = dict(causal=causal, window=window)
    out, lse = fp.attention_kvcache(put(q), put(kc), put(vc), put(lens), block_table=put(table), impl=impl,
                                    return_lse=True, alibi_slopes=None if slopes is None else put(slopes), **kw)
    out, lse = get(out, dt), get(lse, np.float32)
    assert out.shape == q.shape and lse.shape == (batch, hq, sq)
    ref_out, ref_lse = kvcache_reference(q, kc, vc, lens, table, slopes, **kw)
    assert not np.isnan(out.astype(np.float64)).any()
    naive = fp.attention_kvcache(q, kc, vc, lens, block_table=table, impl="naive", alibi_slopes=slopes,
                                 **kw) if dtype in LOW else None
    check(out, lse, ref_out, ref_lse, dtype, naive)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dense_cache_matches_reference_and_paged(impl, dtype):
    rng = np.random.default_rng(31)
    dt = DTYPES[dtype]
    batch, smax, sq, hq, hk, d = 3, 50, 5, 4, 2, 32
    kc = rng.standard_normal((batch, smax, hk, d)).astype(dt)
    vc = rng.standard_normal((batch, smax, hk, d)).astype(dt)
    lens = np.int32([50, 1, 23])
    kc[1, 1:] = np.nan  # past the valid keys
    q = rng.standard_normal((batch, sq, hq, d)).astype(dt)
    out, lse = fp.attention_kvcache(q, kc, vc, lens, impl=impl, causal=True, return_lse=True)
    ref_out, ref_lse = kvcache_reference(q, kc, vc, lens, causal=True)
    naive = fp.attention_kvcache(q, kc, vc, lens, impl="naive", causal=True) if dtype in LOW else None
    check(out, lse, ref_out, ref_lse, dtype, naive)
    # the same cache as pages of 10 (block b*5 + j is sequence b's j-th page): the same bits
    pool_k, pool_v = kc.reshape(batch * 5, 10, hk, d), vc.reshape(batch * 5, 10, hk, d)
    table = np.arange(batch * 5, dtype=np.int32).reshape(batch, 5)
    paged = fp.attention_kvcache(q, pool_k, pool_v, lens, block_table=table, impl=impl, causal=True)
    assert np.array_equal(paged, out)


@pytest.mark.parametrize("level", LEVELS)
def test_serving_every_simd_level(level, monkeypatch):
    use_level(level, monkeypatch)
    rng = np.random.default_rng(41)
    for dt in (np.float32, BF16):
        cu = offsets([70, 3, 130])
        q = rng.standard_normal((cu[-1], 4, 48)).astype(dt)
        k = rng.standard_normal((cu[-1], 2, 48)).astype(dt)
        v = rng.standard_normal((cu[-1], 2, 48)).astype(dt)
        ref_out, _ = varlen_reference(q, k, v, cu, cu, causal=True)
        naive = fp.attention_varlen(q, k, v, cu, cu, impl="naive", causal=True)
        flash = fp.attention_varlen(q, k, v, cu, cu, impl="flash2", causal=True)
        assert err(flash, ref_out) <= 2 * err(naive, ref_out) + rounding(dt, ref_out) + 2e-6


def test_reference_matches_torch_sdpa_with_explicit_bias():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(51)
    q, k, v = (rng.standard_normal(s) for s in ((1, 13, 4, 16), (1, 29, 2, 16), (1, 29, 2, 16)))
    slopes = alibi_slopes(rng, 1, 4, False)
    ref_out, _ = reference(q, k, v, causal=True, window=(6, -1), alibi_slopes=slopes)
    ok = visible(13, 29, True, (6, -1))
    bias = np.stack([np.where(ok, alibi_bias(slopes, 0, h, 13, 29), -np.inf) for h in range(4)])[None]
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))
    got = torch.nn.functional.scaled_dot_product_attention(
        t(q.transpose(0, 2, 1, 3)), t(np.repeat(k, 2, axis=2).transpose(0, 2, 1, 3)),
        t(np.repeat(v, 2, axis=2).transpose(0, 2, 1, 3)), attn_mask=t(bias), scale=1 / 4.0)
    assert np.max(np.abs(got.numpy().transpose(0, 2, 1, 3) - ref_out)) < 1e-12


def test_bad_metadata_names_the_value():
    rng = np.random.default_rng(61)
    q = rng.standard_normal((10, 2, 8)).astype(np.float32)
    k = rng.standard_normal((12, 2, 8)).astype(np.float32)
    good_q, good_k = np.int32([0, 4, 10]), np.int32([0, 5, 12])
    bad = [
        (np.int32([1, 4, 10]), good_k, r"cu_seqlens_q must start at 0, got cu_seqlens_q\[0\] = 1"),
        (np.int32([0, 6, 5, 10]), np.int32([0, 5, 6, 12]),
         r"cu_seqlens_q must not decrease, got cu_seqlens_q\[2\] = 5 after cu_seqlens_q\[1\] = 6"),
        (np.int32([0, 4, 9]), good_k, r"cu_seqlens_q must end at q's packed length 10, got cu_seqlens_q\[2\] = 9"),
        (good_q, np.int32([0, 12]), r"cu_seqlens_k must have as many offsets as cu_seqlens_q \(3\), got 2"),
    ]
    for cq, ck, msg in bad:
        with pytest.raises(ValueError, match=msg):
            fp.attention_varlen(q, k, k, cq, ck)
    with pytest.raises(TypeError, match="cu_seqlens_q must be int32, got int64"):
        fp.attention_varlen(q, k, k, good_q.astype(np.int64), good_k)
    with pytest.raises(ValueError, match=r"max_seqlen_q \(5\) is below the longest sequence \(6\)"):
        fp.attention_varlen(q, k, k, good_q, good_k, max_seqlen_q=5)
    with pytest.raises(ValueError, match=r"alibi_slopes must have shape \(2,\) or \(2, 2\)"):
        fp.attention_varlen(q, k, k, good_q, good_k, alibi_slopes=np.ones(3, np.float32))

    qc = rng.standard_normal((2, 3, 2, 8)).astype(np.float32)
    pool = rng.standard_normal((6, 4, 2, 8)).astype(np.float32)
    table = np.int32([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match=r"block_table\[1, 1\] = 6 is out of range for 6 blocks"):
        fp.attention_kvcache(qc, pool, pool, np.int32([3, 8]), block_table=np.int32([[0, 1], [2, 6]]))
    fp.attention_kvcache(qc, pool, pool, np.int32([3, 4]), block_table=np.int32([[0, -1], [2, 6]]))  # unused: fine
    with pytest.raises(ValueError, match=r"cache_seqlens\[0\] = 9 exceeds what the block table holds "
                                         r"\(2 blocks of 4 = 8 keys\)"):
        fp.attention_kvcache(qc, pool, pool, np.int32([9, 1]), block_table=table)
    with pytest.raises(ValueError, match=r"cache_seqlens must be >= 0, got cache_seqlens\[1\] = -1"):
        fp.attention_kvcache(qc, pool, pool, np.int32([1, -1]), block_table=table)
    with pytest.raises(ValueError, match=r"cache_seqlens must have shape \(2,\)"):
        fp.attention_kvcache(qc, pool, pool, np.int32([1]), block_table=table)
    with pytest.raises(ValueError, match=r"block_table must have shape \(2, max_blocks\)"):
        fp.attention_kvcache(qc, pool, pool, np.int32([1, 1]), block_table=np.int32([0, 1]))
    dense = rng.standard_normal((2, 5, 2, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"cache_seqlens\[1\] = 6 exceeds the cache length 5"):
        fp.attention_kvcache(qc, dense, dense, np.int32([5, 6]))
    with pytest.raises(ValueError, match="k_cache must have q's batch size 2, got 6"):
        fp.attention_kvcache(qc, pool, pool, np.int32([1, 1]))


@pytest.mark.gpu
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gpu_varlen_and_paged(impl, dtype):
    from flashparity.kernels.kernel_parity import to_host
    from test_attention_gpu import dev

    rng = np.random.default_rng(71)
    dt = DTYPES[dtype]
    cu_q, cu_k = offsets([3, 0, 70, 1]), offsets([5, 4, 133, 200])
    q = rng.standard_normal((cu_q[-1], 4, 64)).astype(dt)
    k = rng.standard_normal((cu_k[-1], 2, 64)).astype(dt)
    v = rng.standard_normal((cu_k[-1], 2, 64)).astype(dt)
    slopes = alibi_slopes(rng, 4, 4, True)
    out, lse = fp.attention_varlen(dev(q), dev(k), dev(v), dev(cu_q), dev(cu_k), impl=impl, causal=True,
                                   alibi_slopes=slopes, return_lse=True)
    ref_out, ref_lse = varlen_reference(q, k, v, cu_q, cu_k, slopes, causal=True)
    naive = fp.attention_varlen(q, k, v, cu_q, cu_k, impl="naive", causal=True, alibi_slopes=slopes)
    check(to_host(out, dt), to_host(lse, np.float32), ref_out, ref_lse, dtype, naive)

    lens, page = np.int32([7, 0, 300]), 16
    pool_k = rng.standard_normal((64, page, 2, 64)).astype(dt)
    pool_v = rng.standard_normal((64, page, 2, 64)).astype(dt)
    table = rng.permutation(64)[:3 * 20].reshape(3, 20).astype(np.int32)
    qc = rng.standard_normal((3, 2, 4, 64)).astype(dt)
    out, lse = fp.attention_kvcache(dev(qc), dev(pool_k), dev(pool_v), dev(lens), block_table=dev(table), impl=impl,
                                    causal=True, return_lse=True)
    ref_out, ref_lse = kvcache_reference(qc, pool_k, pool_v, lens, table, causal=True)
    naive = fp.attention_kvcache(qc, pool_k, pool_v, lens, block_table=table, impl="naive", causal=True)
    check(to_host(out, dt), to_host(lse, np.float32), ref_out, ref_lse, dtype, naive)


def test_sequences_sharing_keys_keep_their_own_values(monkeypatch):
    # every sequence's K is the same memory (a broadcast cache), its V its own: one worker runs them
    # all, and its converted K/V rows must be per sequence, not per K pointer
    monkeypatch.setenv("FLASHPARITY_NUM_THREADS", "1")
    rng = np.random.default_rng(81)
    for dt in (np.float32, BF16):
        k1 = rng.standard_normal((1, 40, 2, 16)).astype(dt)
        kc = np.broadcast_to(k1, (3, 40, 2, 16))
        vc = rng.standard_normal((3, 40, 2, 16)).astype(dt)
        q = rng.standard_normal((3, 2, 4, 16)).astype(dt)
        lens = np.int32([40, 40, 40])
        for impl in IMPLS:
            out = fp.attention_kvcache(q, kc, vc, lens, impl=impl)
            ref_out, _ = kvcache_reference(q, np.ascontiguousarray(kc), vc, lens)
            naive = fp.attention_kvcache(q, np.ascontiguousarray(kc), vc, lens, impl="naive")
            assert err(out, ref_out) <= 2 * err(naive, ref_out) + rounding(dt, ref_out) + 2e-6
