"""A stand-in for FlashInfer's attention calls (flashinfer 0.7): NHD layout, bottom-right causal,
``window_left`` inclusive, LSE in base 2 (-inf for a row that sees no key), fp16 and bf16 only;
the single-request prefill and decode calls and the ragged and paged batch prefill wrappers. CPU
torch float32 math."""

import math

import torch

from _standin_core import BROKEN, attend, mask

LOG2E = 1.0 / math.log(2.0)


def _one(q, k, v, causal, sm_scale, window_left, logits_soft_cap):
    if causal and q.shape[0] > k.shape[0]:  # (FlashInfer's tests skip it: "not supported")
        raise ValueError(f"causal attention with qo_len {q.shape[0]} > kv_len {k.shape[0]} is not supported")
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    ok = mask(q.shape[0], k.shape[0], causal, (window_left, -1))
    out, lse = attend(q, k, v, scale, ok, None, logits_soft_cap or 0.0)
    lse = lse.T.contiguous()  # [qo_len, heads]
    return out, (lse if "lse-natural" in BROKEN else lse * LOG2E)


def _check(q):
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"Unsupported dtype {q.dtype}")


def single_prefill_with_kv_cache(q, k, v, custom_mask=None, packed_custom_mask=None, causal=False, kv_layout="NHD",
                                 pos_encoding_mode="NONE", use_fp16_qk_reduction=False, sm_scale=None,
                                 window_left=-1, logits_soft_cap=None, rope_scale=None, rope_theta=None,
                                 return_lse=False):
    _check(q)
    if kv_layout != "NHD" or pos_encoding_mode != "NONE" or custom_mask is not None:
        raise NotImplementedError("the stand-in takes NHD, no positional encoding, no custom mask")
    out, lse = _one(q, k, v, causal, sm_scale, window_left, logits_soft_cap)
    return (out, lse) if return_lse else out


def single_decode_with_kv_cache(q, k, v, kv_layout="NHD", pos_encoding_mode="NONE", use_tensor_cores=False,
                                q_scale=None, k_scale=None, v_scale=None, window_left=-1, logits_soft_cap=None,
                                sm_scale=None, rope_scale=None, rope_theta=None, return_lse=False):
    out, lse = single_prefill_with_kv_cache(q[None], k, v, sm_scale=sm_scale, window_left=window_left,
                                            logits_soft_cap=logits_soft_cap, return_lse=True)
    return (out[0], lse[0]) if return_lse else out[0]


class _Batch:
    def __init__(self, float_workspace_buffer, kv_layout="NHD"):
        if kv_layout != "NHD":
            raise NotImplementedError("the stand-in takes NHD")
        self._plan = None

    def _run(self, q, kvs, return_lse):
        _check(q)
        p = self._plan
        if q.dtype != p["q_data_type"]:
            raise ValueError("q's dtype differs from the planned q_data_type")
        qo = p["qo_indptr"].tolist()
        outs, lses = [], []
        for b, (k, v) in enumerate(kvs):
            o, lse = _one(q[qo[b]:qo[b + 1]], k, v, p["causal"], p["sm_scale"], p["window_left"],
                          p["logits_soft_cap"])
            outs.append(o)
            lses.append(lse)
        out, lse = torch.cat(outs), torch.cat(lses)
        return (out, lse) if return_lse else out


class BatchPrefillWithRaggedKVCacheWrapper(_Batch):
    def plan(self, qo_indptr, kv_indptr, num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo=None,
             custom_mask=None, packed_custom_mask=None, causal=False, pos_encoding_mode="NONE",
             use_fp16_qk_reduction=False, window_left=-1, logits_soft_cap=None, sm_scale=None, rope_scale=None,
             rope_theta=None, q_data_type="float16", kv_data_type=None):
        self._plan = dict(qo_indptr=qo_indptr, kv_indptr=kv_indptr, causal=causal, window_left=window_left,
                          logits_soft_cap=logits_soft_cap, sm_scale=sm_scale, q_data_type=q_data_type)

    def run(self, q, k, v, return_lse=False):
        kv = self._plan["kv_indptr"].tolist()
        return self._run(q, [(k[kv[b]:kv[b + 1]], v[kv[b]:kv[b + 1]]) for b in range(len(kv) - 1)], return_lse)


class BatchPrefillWithPagedKVCacheWrapper(_Batch):
    def plan(self, qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads,
             num_kv_heads, head_dim_qk, page_size, head_dim_vo=None, custom_mask=None, packed_custom_mask=None,
             causal=False, pos_encoding_mode="NONE", use_fp16_qk_reduction=False, sm_scale=None, window_left=-1,
             logits_soft_cap=None, rope_scale=None, rope_theta=None, q_data_type="float16", kv_data_type=None):
        self._plan = dict(qo_indptr=qo_indptr, indptr=paged_kv_indptr, indices=paged_kv_indices,
                          last=paged_kv_last_page_len, page_size=page_size, causal=causal, window_left=window_left,
                          logits_soft_cap=logits_soft_cap, sm_scale=sm_scale, q_data_type=q_data_type)

    def run(self, q, paged_kv_cache, return_lse=False):
        k_cache, v_cache = paged_kv_cache
        p = self._plan
        ind, pages, last = p["indptr"].tolist(), p["indices"].long(), p["last"].tolist()
        kvs = []
        for b in range(len(ind) - 1):
            rows = pages[ind[b]:ind[b + 1]]
            n = max(len(rows) - 1, 0) * p["page_size"] + last[b]  # (flashinfer.page.get_seq_lens)
            if not 0 <= last[b] <= p["page_size"] or n > len(rows) * p["page_size"]:  # (it would read past its pages)
                raise IndexError(f"request {b}: last_page_len {last[b]} with {len(rows)} pages of {p['page_size']}")
            kvs.append(tuple(c[rows].reshape(-1, *c.shape[2:])[:n] for c in (k_cache, v_cache)))
        return self._run(q, kvs, return_lse)
