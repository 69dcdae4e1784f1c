"""A stand-in for FlashAttention-3's ``flash_attn_interface`` (hopper/): FA2's calls without dropout
and ALiBi; float8_e4m3fn inputs with ``q_descale``/``k_descale``/``v_descale`` (float32
``[batch, heads_kv]``; q's indexed by its kv head) giving bfloat16; ``page_table`` for the paged
cache (any page size); ``flash_attn_with_kvcache`` returning ``(out, lse, out_accum, lse_accum)``
with ``return_softmax_lse``; -inf as the LSE of a row that sees no key. CPU torch float32 math."""

import math

import torch

from _standin_core import BROKEN, attend, mask


def _one(q, k, v, b, descales, scale, causal, window_size, softcap):
    """One sequence: q [sq, hq, d], k and v [sk, hk, d] -> out (bfloat16 for FP8), lse [hq, sq]."""
    out_dtype = q.dtype
    if q.dtype == torch.float8_e4m3fn:
        if "fp8-no-descale" in BROKEN:
            descales = (None, None, None)
        qd, kd, vd = (torch.ones(b + 1, k.shape[1]) if d is None else d for d in descales)
        heads = torch.arange(q.shape[1]) // (q.shape[1] // k.shape[1])
        q = q.float() * qd[b][heads][None, :, None]
        k, v = k.float() * kd[b][None, :, None], v.float() * vd[b][None, :, None]
        out_dtype = torch.bfloat16
    out, lse = attend(q, k, v, scale, mask(q.shape[0], k.shape[0], causal, tuple(window_size)), None, softcap)
    return out.to(out_dtype), lse


def _check(q):
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float8_e4m3fn):
        raise RuntimeError("FlashAttention-3 only supports fp16, bf16 and fp8_e4m3")


def _scale(q, softmax_scale):
    return softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                    v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                    pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
    _check(q)
    d = (q_descale, k_descale, v_descale)
    outs, lses = zip(*(_one(q[b], k[b], v[b], b, d, _scale(q, softmax_scale), causal, window_size, softcap)
                       for b in range(q.shape[0])))
    out, lse = torch.stack(outs), torch.stack(lses)
    return (out, lse) if return_attn_probs else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q=None,
                           seqused_k=None, softmax_scale=None, causal=False, qv=None, q_descale=None,
                           k_descale=None, v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0,
                           num_splits=1, pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
    _check(q)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    d = (q_descale, k_descale, v_descale)
    outs, lses = zip(*(_one(q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]], b, d,
                            _scale(q, softmax_scale), causal, window_size, softcap) for b in range(len(cq) - 1)))
    out, lse = torch.cat(outs), torch.cat(lses, dim=1)
    return (out, lse) if return_attn_probs else out


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, qv=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, page_table=None,
                            cu_seqlens_q=None, cu_seqlens_k_new=None, max_seqlen_q=None, rotary_seqlens=None,
                            q_descale=None, k_descale=None, v_descale=None, softmax_scale=None, causal=False,
                            window_size=(-1, -1), attention_chunk=0, softcap=0.0, rotary_interleaved=True,
                            scheduler_metadata=None, num_splits=0, pack_gqa=None, sm_margin=0,
                            return_softmax_lse=False):
    _check(q)
    if k is not None or v is not None:
        raise NotImplementedError("the stand-in does not append to the cache")
    d = (q_descale, k_descale, v_descale)
    outs, lses = [], []
    for b in range(q.shape[0]):
        n = int(cache_seqlens[b]) if cache_seqlens is not None else k_cache.shape[1]
        if page_table is not None:  # key s of sequence b: page page_table[b, s // page], slot s % page
            page = k_cache.shape[1]
            rows = page_table[b, : -(-n // page)].long()
            kb, vb = (c[rows].reshape(-1, *c.shape[2:])[:n] for c in (k_cache, v_cache))
        else:
            kb, vb = k_cache[b, :n], v_cache[b, :n]
        o, lse = _one(q[b], kb, vb, b, d, _scale(q, softmax_scale), causal, window_size, softcap)
        outs.append(o)
        lses.append(lse)
    out, lse = torch.stack(outs), torch.stack(lses)
    return (out, lse, None, None) if return_softmax_lse else out
