"""Torch attention kernels for the gradient-parity tests (tests/test_kernel_parity_backward.py), in
the ``bshd`` convention (BSHD torch tensors, bottom-right causal): a correct eager one, one whose
backward scales dv by 1.01, one that leaks a tiny gradient into keys no query sees, and one whose
output has no autograd graph. Named by "grad_kernels:<function>" strings."""

from __future__ import annotations

import torch


def _visible(sq: int, sk: int, causal: bool, window) -> torch.Tensor:
    i = torch.arange(sq)[:, None] + sk - sq
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


def eager(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1)):
    """Attention in float32 torch ops (differentiable), the output in q's dtype."""
    hq, hk, d = q.shape[2], k.shape[2], q.shape[3]
    scale = d ** -0.5 if softmax_scale is None else softmax_scale
    q32, k32, v32 = q.float(), k.float().repeat_interleave(hq // hk, dim=2), v.float().repeat_interleave(hq // hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q32, k32) * scale
    s = s.masked_fill(~_visible(q.shape[1], k.shape[1], causal, window_size), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, dim=-1), v32).to(q.dtype)


class _Perturbed(torch.autograd.Function):
    """eager's forward; its backward's gradients changed by ``tweak(dq, dk, dv)``."""

    @staticmethod
    def forward(ctx, q, k, v, options, tweak):
        ctx.save_for_backward(q, k, v)
        ctx.options, ctx.tweak = options, tweak
        with torch.no_grad():
            return eager(q, k, v, **options)

    @staticmethod
    def backward(ctx, dout):
        q, k, v = (x.detach().requires_grad_(True) for x in ctx.saved_tensors)
        with torch.enable_grad():
            out = eager(q, k, v, **ctx.options)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
        return (*ctx.tweak(dq, dk, dv), None, None)


def bad_dv(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1)):
    """Right forward, dv 1% too large."""
    options = dict(causal=causal, softmax_scale=softmax_scale, window_size=window_size)
    return _Perturbed.apply(q, k, v, options, lambda dq, dk, dv: (dq, dk, dv * 1.01))


def leaky_keys(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1)):
    """Right forward and gradients, except 1e-30 in dk of key 0 (which a window hides from every query)."""
    def tweak(dq, dk, dv):
        dk = dk.clone()
        dk[:, 0] += 1e-30
        return dq, dk, dv

    options = dict(causal=causal, softmax_scale=softmax_scale, window_size=window_size)
    return _Perturbed.apply(q, k, v, options, tweak)


def detached(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1)):
    """Right forward, computed under no_grad: no gradients to take."""
    with torch.no_grad():
        return eager(q, k, v, causal=causal, softmax_scale=softmax_scale, window_size=window_size)



class _FA2Rounding(torch.autograd.Function):
    """Attention with FlashAttention-2's kernel arithmetic in a 16-bit dtype, in torch ops: float32
    scores and softmax, P rounded to the dtype for P·V; the backward from the saved output: dP and
    D = rowsum(dO·O) in float32, dS rounded to the dtype for dQ and dK, P for dV; per query head dK
    and dV rounded, then the GQA group summed in the dtype (as flash_attn's interface does)."""

    @staticmethod
    def forward(ctx, q, k, v, options):
        hq, hk, d = q.shape[2], k.shape[2], q.shape[3]
        scale = d ** -0.5 if options["softmax_scale"] is None else options["softmax_scale"]
        kf, vf = (x.float().repeat_interleave(hq // hk, dim=2) for x in (k, v))
        s = torch.einsum("bqhd,bkhd->bhqk", q.float() * scale, kf)
        s = s.masked_fill(~_visible(q.shape[1], k.shape[1], options["causal"], options["window_size"]), float("-inf"))
        p = torch.softmax(s, dim=-1)
        out = torch.einsum("bhqk,bkhd->bqhd", p.to(q.dtype).float(), vf).to(q.dtype)
        ctx.save_for_backward(q, kf, vf, p, out)
        ctx.scale, ctx.group = scale, hq // hk
        return out

    @staticmethod
    def backward(ctx, dout):
        q, kf, vf, p, out = ctx.saved_tensors
        dt, do = q.dtype, dout.float()
        dv = torch.einsum("bhqk,bqhd->bkhd", p.to(dt).float(), do).to(dt)
        dp = torch.einsum("bqhd,bkhd->bhqk", do, vf)
        delta = (do * out.float()).sum(-1).transpose(1, 2)[..., None]  # [b, h, q, 1]
        ds = (p * (dp - delta)).to(dt).float()
        dq = (torch.einsum("bhqk,bkhd->bqhd", ds, kf) * ctx.scale).to(dt)
        dk = (torch.einsum("bhqk,bqhd->bkhd", ds, q.float()) * ctx.scale).to(dt)
        b, sk, hq, d = dk.shape
        dk, dv = (x.view(b, sk, hq // ctx.group, ctx.group, d).sum(3) for x in (dk, dv))
        return dq, dk, dv, None


def fa2_rounding(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1)):
    """FlashAttention-2's kernel arithmetic in the inputs' dtype (:class:`_FA2Rounding`)."""
    return _FA2Rounding.apply(q, k, v, dict(causal=causal, softmax_scale=softmax_scale, window_size=window_size))


def _tweaked(x, tweak):
    """x (a view), its gradient changed by ``tweak(grad)`` on the way back (a tensor hook, where it
    requires grad)."""
    y = x.view_as(x)
    if y.requires_grad:
        y.register_hook(tweak)
    return y


def _eager_blind_rows(q, k, v, causal, softmax_scale, window_size):
    """One packed sequence's attention as :func:`eager`, rows that see no key giving 0 (and no NaN
    gradients): masked scores -1e30 (exp gives exactly 0 where a row sees a key), blind rows zeroed."""
    hq, hk, d = q.shape[1], k.shape[1], q.shape[2]
    scale = d ** -0.5 if softmax_scale is None else softmax_scale
    k32, v32 = (x.float().repeat_interleave(hq // hk, dim=1) for x in (k, v))
    seen = _visible(q.shape[0], k.shape[0], causal, window_size)
    s = torch.einsum("qhd,khd->hqk", q.float(), k32).mul(scale).masked_fill(~seen, -1e30)
    p = torch.softmax(s, dim=-1) * seen.any(-1, keepdim=True)
    return torch.einsum("hqk,khd->qhd", p, v32).to(q.dtype)


def varlen_eager(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                 softmax_scale=None, causal=False, window_size=(-1, -1)):
    """The fa2-varlen convention's call (packed [total, heads, head_dim] torch tensors): eager attention
    sequence by sequence (differentiable; :func:`_eager_blind_rows`); a sequence without keys gives zeros."""
    outs = []
    for i in range(len(cu_seqlens_q) - 1):
        a, b, c, d = (int(x) for x in (cu_seqlens_q[i], cu_seqlens_q[i + 1], cu_seqlens_k[i], cu_seqlens_k[i + 1]))
        if c == d:
            outs.append(torch.zeros_like(q[a:b]))
        elif a < b:
            outs.append(_eager_blind_rows(q[a:b], k[c:d], v[c:d], causal, softmax_scale, window_size))
    return torch.cat(outs)


def varlen_bad_dv(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                  softmax_scale=None, causal=False, window_size=(-1, -1)):
    """varlen_eager's forward, dv 1% too large."""
    return varlen_eager(q, k, _tweaked(v, lambda g: g * 1.01), cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                        max_seqlen_k, softmax_scale=softmax_scale, causal=causal, window_size=window_size)


def varlen_leaky_keys(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                      softmax_scale=None, causal=False, window_size=(-1, -1)):
    """varlen_eager, except 1e-30 in dk of the first key of the first sequence without queries."""
    empty = next(i for i in range(len(cu_seqlens_q) - 1) if cu_seqlens_q[i] == cu_seqlens_q[i + 1])
    first = int(cu_seqlens_k[empty])

    def tweak(g):
        g = g.clone()
        g[first] += 1e-30
        return g

    return varlen_eager(q, _tweaked(k, tweak), v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                        softmax_scale=softmax_scale, causal=causal, window_size=window_size)
