"""Gradient verdicts: a kernel's dq, dk, dv against float64 gold gradients, FlashAttention-2's rule.

Shared by :func:`flashparity.kernels.kernel_parity.kernel_parity` and
:func:`flashparity.kernels.conformance.conformance` (``backward=True``). The gold is
:func:`flashparity.attention_backward` of the naive kernel on float64 copies of the case's rounded
inputs and output gradient (it accumulates in float64 there); the baseline is the same naive
backward in the case's dtype. For each of dq, dk and dv:

    max|dX_kernel - dX_gold| <= GRAD_RULE_FACTOR * max|dX_naive - dX_gold| + GRAD_RULE_EPS

(2x + 1e-5, as FlashAttention-2's causal and varlen gradient tests; its non-causal output test
allows 3x). Keys that no query sees must get exactly zero dk and dv from the kernel.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .attention import attention, attention_backward
from ..parity import parity

__all__ = ["GRAD_RULE_FACTOR", "GRAD_RULE_EPS", "GRADS", "draw_dout", "own_gradients", "gold_gradients",
           "judge_gradients", "unsupported", "error", "unseen_keys", "BACKWARD_DTYPES", "CUDA_NOT_BUILT"]

GRAD_RULE_FACTOR, GRAD_RULE_EPS = 2.0, 1e-5
GRADS = ("dq", "dk", "dv")
#: the dtypes fp.attention_backward takes in a case (float64 is the gold's)
BACKWARD_DTYPES = ("float64", "float32", "float16", "bfloat16")
CUDA_NOT_BUILT = "the CUDA backward is not built yet"
RULE = (f"max|dX - gold| <= {GRAD_RULE_FACTOR:g} * max|dX_naive - gold| + {GRAD_RULE_EPS:g} for dX in dq, dk, dv "
        "(gold: the naive backward in float64 on the same rounded inputs and dout; keys no query sees get "
        "exactly 0)")


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


def unseen_keys(seqlen_q: int, seqlen_k: int, causal: bool, window: tuple[int, int]) -> np.ndarray:
    """[seqlen_k] bool: the keys no query sees (bottom-right causal and window, as the forward)."""
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
    return ~ok.any(axis=0)


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
                    also: tuple | None = None) -> dict[str, Any]:
    """The backward body of one case: each gradient's max error against the gold, the baseline's,
    their ratio to the bound (at most 1 passes) and the verdict (``pass`` or ``fail`` with the
    reasons). ``grads``, ``gold``, ``baseline``: (dq, dk, dv) in BSHD; ``also``: a second baseline
    (the larger error of the two counts); ``unseen``: [seqlen_k] bool, the keys whose dk and dv must
    be exactly 0."""
    body: dict[str, Any] = {"verdict": "pass", "reason": ""}
    reasons = []
    for i, (name, x, g, b) in enumerate(zip(GRADS, grads, gold, baseline)):
        x = np.asarray(x)
        if tuple(x.shape) != tuple(g.shape):
            body[name] = None
            reasons.append(f"{name} has shape {tuple(x.shape)}, expected {tuple(g.shape)}")
            continue
        err = parity(x, g)
        base = parity(b, g).max_abs_diff
        if also is not None:
            base = max(base, parity(also[i], g).max_abs_diff)
        ratio = _ratio(err.max_abs_diff, GRAD_RULE_FACTOR * base + GRAD_RULE_EPS)
        body[name] = {"max_abs_diff": err.max_abs_diff, "baseline_max_abs_diff": base, "ratio": ratio,
                      "fa2_rule_ok": bool(ratio <= 1)}
        if not ratio <= 1:
            reasons.append(f"{name}: max|{name} - gold| {err.max_abs_diff:.3g} (at {err.max_abs_index}) > "
                           f"{GRAD_RULE_FACTOR:g} × baseline's {base:.3g} + {GRAD_RULE_EPS:g}")
    n_unseen = 0 if unseen is None else int(unseen.sum())
    body["masked_keys"] = n_unseen
    body["masked_keys_zero"] = None
    if n_unseen:
        wrong = []
        for name, x, g in zip(GRADS[1:], grads[1:], gold[1:]):
            x = np.asarray(x)
            if tuple(x.shape) != tuple(g.shape):
                continue
            masked = x[:, unseen].astype(np.float64)  # [batch, unseen keys, heads_kv, head_dim]
            bad = masked != 0  # (NaN too)
            if bad.any():
                key = int(np.flatnonzero(unseen)[np.argwhere(bad)[0][1]])
                wrong.append(f"{name} is nonzero at {int(bad.any(axis=(0, 2, 3)).sum())} of the {n_unseen} keys "
                             f"no query sees (first: key {key})")
        body["masked_keys_zero"] = not wrong
        reasons += wrong
    if reasons:
        body["verdict"] = "fail"
        body["reason"] = "; ".join(reasons)
    return body
