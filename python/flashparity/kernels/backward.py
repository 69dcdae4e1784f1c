"""Gradient verdicts: a kernel's dq, dk, dv against float64 gold gradients, FlashAttention-2's rule.

Shared by :func:`flashparity.kernels.kernel_parity.kernel_parity` and
:func:`flashparity.kernels.conformance.conformance` (``backward=True``). The gold is
:func:`flashparity.attention_backward` of the naive kernel on float64 copies of the case's rounded
inputs and output gradient (it accumulates in float64 there); the baseline is the same naive
backward in the case's dtype. For each of dq, dk and dv:

    max|dX_kernel - dX_gold| <= GRAD_RULE_FACTOR * max|dX_naive - dX_gold| + GRAD_RULE_EPS

(2x + 1e-5, as FlashAttention-2's causal and varlen gradient tests; its non-causal output test
allows 3x). Keys that no query sees must get exactly zero dk and dv from the kernel. In float16 and
bfloat16 the baseline's error is the larger of the naive kernel's (float32 throughout, one rounding
per gradient) and that of the backward as FlashAttention-2 computes it in that dtype
(:func:`lowp_gradients`: P and dS rounded to the dtype for their products), as the forward's
baseline is: a kernel that rounds where FlashAttention-2's does is not failed for it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .attention import attention, attention_backward
from ..parity import parity

__all__ = ["GRAD_RULE_FACTOR", "GRAD_RULE_FACTOR_EXTREME", "GRAD_RULE_EPS", "GRADS", "draw_dout", "own_gradients", "gold_gradients",
           "varlen_gradients", "judge_gradients", "lowp_gradients", "unsupported", "error", "unseen_keys",
           "BACKWARD_DTYPES", "CUDA_NOT_BUILT", "PAGED_NOT_BUILT"]

GRAD_RULE_FACTOR, GRAD_RULE_EPS = 2.0, 1e-5
#: the factor of the extreme cases (scores near ±1e4): FA2's 3x (its test_flash_attn_output's gradient
#: factor), for a kernel that recomputes P from the forward's float32 LSE, whose rounding there (an ulp
#: of 1e4 is ~1e-3) does not cancel against the backward's scores as the naive kernel's own softmax does
GRAD_RULE_FACTOR_EXTREME = 3.0
GRADS = ("dq", "dk", "dv")
#: the dtypes fp.attention_backward takes in a case (float64 is the gold's)
BACKWARD_DTYPES = ("float64", "float32", "float16", "bfloat16")
CUDA_NOT_BUILT = "the CUDA backward is not built yet"
PAGED_NOT_BUILT = "the paged KV-cache backward is not built"
RULE = (f"max|dX - gold| <= {GRAD_RULE_FACTOR:g} * max|dX_baseline - gold| + {GRAD_RULE_EPS:g} for dX in dq, dk, "
        f"dv ({GRAD_RULE_FACTOR_EXTREME:g}x for scores near ±1e4) (gold: the naive backward in float64 on the same "
        "rounded inputs and dout; baseline: the larger error of the naive backward in the case's dtype and, in 16 "
        "bits, FlashAttention-2's backward rounding P and dS to the dtype; keys no query sees get exactly 0)")


def draw_dout(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The output gradient of a case: standard normal draws of its generator (the ones after its
    inputs), rounded to the output's dtype."""
    return rng.standard_normal(shape).astype(dtype)


def own_gradients(impl: str, q, k, v, dout, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dq, dk, dv) of flashparity's ``impl`` (its forward's out and lse, then its backward) on
    host arrays, in their dtype. ``options``: the forward's (causal, window, softcap,
    alibi_slopes, softmax_scale)."""
    q, k, v, dout = (np.ascontiguousarray(x) for x in (q, k, v, dout))
    out, lse = attention(q, k, v, impl=impl, return_lse=True, **options)
    return attention_backward(q, k, v, out, lse, dout, impl=impl, **options)


def gold_gradients(q, k, v, dout, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The float64 gold: the naive backward on float64 copies of the (rounded) arrays."""
    return own_gradients("naive", *(np.asarray(x, np.float64) for x in (q, k, v, dout)), **options)


def varlen_gradients(impl: str, q, k, v, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
                     **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dq, dk, dv) of flashparity's ``impl`` on a packed varlen batch (:func:`flashparity.attention_varlen`
    with its LSE, then :func:`flashparity.attention_varlen_backward`), in the arrays' dtype (float64
    copies give the gold). ``options``: the forward's."""
    from .serving import attention_varlen, attention_varlen_backward

    q, k, v, dout = (np.ascontiguousarray(x) for x in (q, k, v, dout))
    lens = dict(max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, impl=impl, **options)
    out, lse = attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, return_lse=True, **lens)
    return attention_varlen_backward(q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k, **lens)


def lowp_gradients(q, k, v, dout, *, causal: bool = False, window: tuple[int, int] = (-1, -1),
                   softcap: float = 0.0, alibi_slopes: Any = None,
                   softmax_scale: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(dq, dk, dv) as FlashAttention-2's backward computes them in a 16-bit dtype, the gradients'
    counterpart of the forward's low-precision reference: scores, probabilities and dP = dO·Vᵀ in
    float32 (exact softmax); P rounded to the dtype for dV = Pᵀ·dO; D = rowsum(dO·O) from the output
    rounded to the dtype; dS = P·(dP − D) (times 1 − tanh² under softcap) rounded to the dtype for
    dQ = dS·K and dK = dSᵀ·Q (its tensor-core mma operands); sums in float32, each gradient rounded
    once, and under GQA each query head's dK and dV rounded before the group's sum is (FA2's
    interface sums per-head gradients in the dtype). None for float32 and float64 inputs (the
    naive kernel is then that computation). Per (batch, head): one [seqlen_q, seqlen_k] float32 block at a time."""
    from .attention import _numpy_dtype  # (the case dtype's NumPy type: ml_dtypes for bfloat16)

    name = str(np.asarray(q).dtype)
    if name not in ("float16", "bfloat16"):
        return None
    dt = _numpy_dtype(name)

    def rd(x):
        return np.asarray(x, np.float32).astype(dt).astype(np.float32)

    q, k, v, dout = (np.asarray(x, np.float32) for x in (q, k, v, dout))
    batch, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    group = hq // hk
    scale = np.float32(1.0 / math.sqrt(d) if softmax_scale is None else softmax_scale)
    seen = visible(sq, sk, causal, window)
    slopes = None if alibi_slopes is None else np.asarray(alibi_slopes, np.float32)
    dist = np.abs(np.arange(sq)[:, None] + sk - sq - np.arange(sk)[None, :]).astype(np.float32)
    dq = np.zeros(q.shape, np.float32)
    dk = np.zeros(k.shape, np.float32)
    dv = np.zeros(v.shape, np.float32)
    for b in range(batch):
        for h in range(hq):
            qh, kh, vh, doh = q[b, :, h], k[b, :, h // group], v[b, :, h // group], dout[b, :, h]
            s = (qh @ kh.T) * scale
            t = np.tanh(s / np.float32(softcap)) if softcap else None
            z = t * np.float32(softcap) if softcap else s
            if slopes is not None:
                z = z - (slopes[h] if slopes.ndim == 1 else slopes[b, h]) * dist
            z = np.where(seen, z, -np.inf)
            top = z.max(axis=1, keepdims=True)
            with np.errstate(invalid="ignore"):
                e = np.where(seen, np.exp(z - np.where(np.isfinite(top), top, 0)), 0).astype(np.float32)
            total = e.sum(axis=1, keepdims=True)
            p = e / np.where(total > 0, total, 1)
            out = rd(rd(p) @ vh)
            dv[b, :, h // group] += rd(rd(p).T @ doh)
            dp = doh @ vh.T
            ds = p * (dp - (doh * out).sum(axis=1, keepdims=True))
            if softcap:
                ds = ds * (1 - t * t)
            ds = rd(ds)
            dq[b, :, h] = rd((ds @ kh) * scale)
            dk[b, :, h // group] += rd((ds.T @ qh) * scale)
    return dq.astype(dt), dk.astype(dt), dv.astype(dt)  # (a GQA group's heads summed in float32, rounded once)


def visible(seqlen_q: int, seqlen_k: int, causal: bool, window: tuple[int, int]) -> np.ndarray:
    """[seqlen_q, seqlen_k] bool: which keys each query sees (bottom-right causal and window, as the
    forward)."""
    i = np.arange(seqlen_q)[:, None] + seqlen_k - seqlen_q
    j = np.arange(seqlen_k)[None, :]
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    ok = np.ones((seqlen_q, seqlen_k), bool)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    return ok


def unseen_keys(seqlen_q: int, seqlen_k: int, causal: bool, window: tuple[int, int]) -> np.ndarray:
    """[seqlen_k] bool: the keys no query sees."""
    return ~visible(seqlen_q, seqlen_k, causal, window).any(axis=0)


def unsupported(reason: str) -> dict[str, Any]:
    """The backward body of a case whose gradients are not judged (never a failure)."""
    return {"verdict": "unsupported", "reason": reason, **{g: None for g in GRADS}, "masked_keys": None,
            "masked_keys_zero": None}


def error(reason: str) -> dict[str, Any]:
    """The backward body of a case whose kernel raised while taking gradients (a failure)."""
    return dict(unsupported(reason), verdict="error")


def _ratio(err: float, bound: float) -> float:
    if err != err:
        return math.nan
    return err / bound if bound > 0 else (0.0 if err == 0 else math.inf)


def judge_gradients(grads: tuple, gold: tuple, baseline: tuple, unseen: np.ndarray | None = None,
                    lowp: tuple | None = None,
                    factor: float = GRAD_RULE_FACTOR) -> dict[str, Any]:
    """The backward body of one case: each gradient's max error against the gold, the baseline's,
    their ratio to the bound (at most 1 passes) and the verdict (``pass`` or ``fail`` with the
    reasons). ``grads``, ``gold``, ``baseline``: (dq, dk, dv) in BSHD; ``lowp``:
    :func:`lowp_gradients` (FlashAttention-2's own rounding in a 16-bit dtype), a second baseline
    (the largest error counts); ``unseen``: [seqlen_k] bool ([total_k] for a packed varlen batch),
    the keys whose dk and dv must be exactly 0."""
    body: dict[str, Any] = {"verdict": "pass", "reason": ""}
    reasons = []
    for i, (name, x, g, b) in enumerate(zip(GRADS, grads, gold, baseline)):
        x = np.asarray(x)
        if tuple(x.shape) != tuple(g.shape):
            body[name] = None
            reasons.append(f"{name} has shape {tuple(x.shape)}, expected {tuple(g.shape)}")
            continue
        err = parity(x, g)
        naive = base = parity(b, g).max_abs_diff
        lowp_err = None if lowp is None else parity(lowp[i], g).max_abs_diff
        if lowp_err is not None:
            base = max(base, lowp_err)
        ratio = _ratio(err.max_abs_diff, factor * base + GRAD_RULE_EPS)
        body[name] = {"max_abs_diff": err.max_abs_diff, "baseline_max_abs_diff": base, "ratio": ratio,
                      "fa2_rule_ok": bool(ratio <= 1), "naive_max_abs_diff": naive,
                      "lowp_ref_max_abs_diff": lowp_err}
        if not ratio <= 1:
            reasons.append(f"{name}: max|{name} - gold| {err.max_abs_diff:.3g} (at {err.max_abs_index}) > "
                           f"{factor:g} × baseline's {base:.3g} + {GRAD_RULE_EPS:g}")
    n_unseen = 0 if unseen is None else int(unseen.sum())
    body["masked_keys"] = n_unseen
    body["masked_keys_zero"] = None
    if n_unseen:
        wrong = []
        for name, x, g in zip(GRADS[1:], grads[1:], gold[1:]):
            x = np.asarray(x)
            if tuple(x.shape) != tuple(g.shape):
                continue
            # ([batch, keys, heads_kv, head_dim], or packed [total_k, heads_kv, head_dim]: keys on axis ndim - 3)
            keys = np.moveaxis(x, x.ndim - 3, 0)[unseen].astype(np.float64)
            bad = (keys != 0).reshape(keys.shape[0], -1).any(axis=1)  # (NaN too)
            if bad.any():
                key = int(np.flatnonzero(unseen)[np.flatnonzero(bad)[0]])
                wrong.append(f"{name} is nonzero at {int(bad.sum())} of the {n_unseen} keys "
                             f"no query sees (first: key {key})")
        body["masked_keys_zero"] = not wrong
        reasons += wrong
    if reasons:
        body["verdict"] = "fail"
        body["reason"] = "; ".join(reasons)
    return body
