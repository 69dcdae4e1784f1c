"""A stand-in for ``xformers.ops.memory_efficient_attention``: BMHK (3-D: one head; 5-D BMGHK for
GQA, K and V expanded over each group's heads), biases from ``fmha.attn_bias`` or a float tensor,
no LSE. CPU torch float32 math."""

import math

import torch

from _standin_core import attend


def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None,
                               output_dtype=None):
    from .fmha.attn_bias import AttentionBias

    five = query.dim() == 5
    if five:  # [B, M, G, H, K] -> [B, M, G*H, K] (k and v expanded: each query head has its kv head)
        groups, heads = query.shape[2], query.shape[3]
        query, key, value = (t.flatten(2, 3) for t in (query, key, value))
    if isinstance(attn_bias, torch.Tensor) and attn_bias.dim() == 5:
        attn_bias = attn_bias.flatten(1, 2)
    scale = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    outs = []
    for b in range(query.shape[0]):
        q, k, v = query[b], key[b], value[b]
        m, n = q.shape[0], k.shape[0]
        if attn_bias is None:
            ok, bias = torch.ones(m, n, dtype=torch.bool), None
        elif isinstance(attn_bias, AttentionBias):
            ok, bias = attn_bias.seen(m, n), None
        else:
            t = attn_bias[b].float()
            ok, bias = torch.isfinite(t), torch.where(torch.isfinite(t), t, torch.zeros_like(t))
        outs.append(attend(q, k, v, scale, ok, bias)[0])
    out = torch.stack(outs)
    if five:
        out = out.unflatten(2, (groups, heads))
    return out
