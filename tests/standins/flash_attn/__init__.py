"""A stand-in for FlashAttention-2's Python API (flash_attn 2.8), CPU torch float32 math: the
calling convention exactly (BSHD, bottom-right causal, +inf LSE for rows that see no key, fp16 and
bf16 only, paged block size a multiple of 256), not its speed."""

import math

import torch

from _standin_core import BROKEN, alibi, attend, mask


def _check(q):
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")


def _one(q, k, v, scale, causal, window_size, softcap, slopes, sk_valid=None):
    sq, sk = q.shape[0], k.shape[0]
    ok = mask(sq, sk, causal, tuple(window_size))
    bias = alibi(slopes, sq, sk) if slopes is not None else None
    out, lse = attend(q, k, v, scale, ok, bias, softcap)
    return out, torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)  # (FA2: +inf)


def _slopes(alibi_slopes, b):
    if alibi_slopes is None:
        return None
    return alibi_slopes if alibi_slopes.dim() == 1 else alibi_slopes[b]


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    _check(q)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    outs, lses = zip(*(_one(q[b], k[b], v[b], scale, causal, window_size, softcap, _slopes(alibi_slopes, b))
                       for b in range(q.shape[0])))
    out, lse = torch.stack(outs), torch.stack(lses)
    return (out, lse, None) if return_attn_probs else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    _check(q)
    if cu_seqlens_q.dtype != torch.int32 or cu_seqlens_k.dtype != torch.int32:
        raise RuntimeError("cu_seqlens_q must have dtype int32")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    if "cu-swap" in BROKEN:
        cq, ck = ck, cq
    outs, lses = [], []
    for b in range(len(cq) - 1):
        o, lse = _one(q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]], scale, causal, window_size,
                      softcap, _slopes(alibi_slopes, b))
        outs.append(o)
        lses.append(lse)
    out, lse = torch.cat(outs), torch.cat(lses, dim=1)
    return (out, lse, None) if return_attn_probs else out


def _gather(cache, table_row, n):
    page = cache.shape[1]
    pages = table_row[: -(-n // page)] if "read-past-seqlen" not in BROKEN else table_row
    flat = cache[pages.long()].reshape(-1, *cache.shape[2:])
    return flat if "read-past-seqlen" in BROKEN else flat[:n]


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    _check(q)
    if k is not None or v is not None or rotary_cos is not None:
        raise NotImplementedError("the stand-in does not append to the cache")
    if block_table is not None and k_cache.shape[1] % 256:
        raise RuntimeError("Paged KV cache block size must be divisible by 256")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    outs, lses = [], []
    for b in range(q.shape[0]):
        n = int(cache_seqlens[b]) if cache_seqlens is not None else k_cache.shape[1]
        if block_table is not None:
            kb, vb = _gather(k_cache, block_table[b], n), _gather(v_cache, block_table[b], n)
        else:
            kb, vb = k_cache[b, :n], v_cache[b, :n]
        o, lse = _one(q[b], kb, vb, scale, causal, window_size, softcap, _slopes(alibi_slopes, b))
        outs.append(o)
        lses.append(lse)
    out, lse = torch.stack(outs), torch.stack(lses)
    return (out, lse) if return_softmax_lse else out
