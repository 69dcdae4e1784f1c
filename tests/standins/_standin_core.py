"""The math every stand-in kernel shares: float32 attention in torch of one sequence, with a boolean
mask of the keys each query sees and an additive float bias. (Stand-ins follow third-party
kernels' calling conventions exactly, so that flashparity's adapters for them are tested where the
real packages cannot run: they need a GPU.) ``BROKEN`` names the faults a test switches on."""

import torch

BROKEN: set = set()


def mask(sq, sk, causal, window=(-1, -1), top_left=False):
    """[sq, sk] bool: FlashAttention-2's bottom-right causal and window masks (top-left: shift 0)."""
    i = torch.arange(sq)[:, None] + (0 if top_left else sk - sq)
    j = torch.arange(sk)[None, :]
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    ok = torch.ones(sq, sk, dtype=torch.bool)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    return ok


def alibi(slopes, sq, sk):
    """FlashAttention-2's ALiBi bias -slope * |i + sk - sq - j|, [heads, sq, sk]."""
    i = torch.arange(sq)[:, None] + sk - sq
    j = torch.arange(sk)[None, :]
    return -slopes.float()[:, None, None] * (i - j).abs()[None]


def attend(q, k, v, scale, ok, bias=None, softcap=0.0):
    """q [sq, hq, d], k and v [sk, hk, d] (GQA: query head h reads kv head h // (hq // hk)) -> out
    [sq, hq, d] in q's dtype and the natural-log LSE [hq, sq] float32 (-inf, output 0, for a row that
    sees no key). ``ok`` [sq, sk] or [hq, sq, sk]; ``bias`` [hq, sq, sk] added after the softcap."""
    rep = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(rep, dim=1)
    vf = v.float().repeat_interleave(rep, dim=1)
    s = torch.einsum("qhd,khd->hqk", q.float(), kf) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias
    s = s.masked_fill(~ok.expand_as(s), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    p = torch.where(torch.isfinite(lse)[..., None], p, torch.zeros_like(p))
    if "nan-leak" in BROKEN:  # (0 * NaN is NaN: keys a row does not see leak into it)
        out = torch.einsum("hqk,khd->qhd", p, vf)
    else:  # non-finite values reach only the rows that see them
        bad = ~torch.isfinite(vf)
        out = torch.einsum("hqk,khd->qhd", p, torch.where(bad, torch.zeros_like(vf), vf))
        seen_bad = torch.einsum("hqk,khd->qhd", ok.expand_as(s).float(), bad.float()) > 0
        out = torch.where(seen_bad, torch.full_like(out, float("nan")), out)
    return out.to(q.dtype), lse
