"""A stand-in for FlashAttention-3's ``flash_attn_interface`` (hopper/): FA2's calls without dropout
and ALiBi, ``page_table`` for the paged cache (any page size), ``flash_attn_with_kvcache`` returning
``(out, lse, out_accum, lse_accum)`` with ``return_softmax_lse``. CPU torch float32 math."""

import flash_attn as _fa2
import torch


def _lse(lse):  # (FA3 writes -inf, not FA2's +inf, for a row that sees no key)
    return torch.where(torch.isposinf(lse), torch.full_like(lse, float("-inf")), lse)


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                    v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                    pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
    out, lse, _ = _fa2.flash_attn_func(q, k, v, 0.0, softmax_scale, causal, window_size, softcap,
                                       return_attn_probs=True)
    return (out, _lse(lse)) if return_attn_probs else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q=None,
                           seqused_k=None, softmax_scale=None, causal=False, qv=None, q_descale=None,
                           k_descale=None, v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0,
                           num_splits=1, pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
    out, lse, _ = _fa2.flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                              softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                                              softcap=softcap, return_attn_probs=True)
    return (out, _lse(lse)) if return_attn_probs else out


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, qv=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, page_table=None,
                            cu_seqlens_q=None, cu_seqlens_k_new=None, max_seqlen_q=None, rotary_seqlens=None,
                            q_descale=None, k_descale=None, v_descale=None, softmax_scale=None, causal=False,
                            window_size=(-1, -1), attention_chunk=0, softcap=0.0, rotary_interleaved=True,
                            scheduler_metadata=None, num_splits=0, pack_gqa=None, sm_margin=0,
                            return_softmax_lse=False):
    if k is not None or v is not None:
        raise NotImplementedError("the stand-in does not append to the cache")
    # (FA3 takes any page size: the FA2 stand-in's 256 rule is lifted by padding pages to 256 slots)
    if page_table is not None and k_cache.shape[1] % 256:
        page = k_cache.shape[1]
        n = cache_seqlens.long()
        outs = []
        for b in range(q.shape[0]):
            rows = page_table[b, : -(-int(n[b]) // page)].long()
            kb = k_cache[rows].reshape(-1, *k_cache.shape[2:])[: int(n[b])]
            vb = v_cache[rows].reshape(-1, *v_cache.shape[2:])[: int(n[b])]
            outs.append(_fa2.flash_attn_with_kvcache(q[b:b + 1], kb[None], vb[None], softmax_scale=softmax_scale,
                                                     causal=causal, window_size=window_size, softcap=softcap,
                                                     return_softmax_lse=True))
        out, lse = torch.cat([o for o, _ in outs]), torch.cat([x for _, x in outs])
    else:
        out, lse = _fa2.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=cache_seqlens,
                                                block_table=page_table, softmax_scale=softmax_scale, causal=causal,
                                                window_size=window_size, softcap=softcap, return_softmax_lse=True)
    return (out, _lse(lse), None, None) if return_softmax_lse else out
