"""NumPy float64 reference of the attention forward (BSHD, GQA, bottom-right causal/window, softcap,
ALiBi)."""

from __future__ import annotations

import numpy as np


def visible(sq: int, sk: int, causal: bool, window: tuple[int, int]) -> np.ndarray:
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    i = np.arange(sq)[:, None]
    j = np.arange(sk)[None, :]
    diag = i + sk - sq
    ok = np.ones((sq, sk), bool)
    if right >= 0:
        ok &= j <= diag + right
    if left >= 0:
        ok &= j >= diag - left
    return ok


def _masked_pv(p: np.ndarray, v: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """sum over the keys each row sees of p * v: a masked key contributes nothing, whatever its
    values (p @ v would give 0 * inf = NaN); non-finite values of visible keys propagate."""
    bad = ~np.isfinite(v)
    if not bad.any():
        return p @ v
    out = p @ np.where(bad, 0.0, v)
    for j, d in zip(*np.nonzero(bad)):
        with np.errstate(invalid="ignore"):
            out[ok[:, j], d] += p[ok[:, j], j] * v[j, d]
    return out


def alibi_bias(slopes, bi: int, h: int, sq: int, sk: int) -> np.ndarray:
    """FlashAttention-2's ALiBi bias of batch bi, head h: -slope * |i + sk - sq - j| ([sq, sk])."""
    s = np.asarray(slopes, dtype=np.float64)
    slope = s[h] if s.ndim == 1 else s[bi, h]
    i = np.arange(sq)[:, None]
    j = np.arange(sk)[None, :]
    return -slope * np.abs(i + sk - sq - j)


def reference(q, k, v, *, causal=False, window=(-1, -1), softcap=0.0, softmax_scale=None, alibi_slopes=None):
    """(out, lse) in float64; rows that see no key give 0 and -inf."""
    q, k, v = (np.asarray(x).astype(np.float64) for x in (q, k, v))
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    group = hq // hk
    scale = 1.0 / np.sqrt(d) if softmax_scale is None else softmax_scale
    ok = visible(sq, sk, causal, window)
    out = np.zeros_like(q)
    lse = np.full((b, hq, sq), -np.inf)
    for bi in range(b):
        for h in range(hq):
            s = scale * (q[bi, :, h, :] @ k[bi, :, h // group, :].T)
            if softcap > 0:
                s = softcap * np.tanh(s / softcap)
            if alibi_slopes is not None:
                s = s + alibi_bias(alibi_slopes, bi, h, sq, sk)
            s = np.where(ok, s, -np.inf)
            seen = ok.any(axis=1)
            m = np.where(seen, s.max(axis=1, initial=-np.inf), 0.0)
            p = np.where(ok, np.exp(s - m[:, None]), 0.0)
            l = p.sum(axis=1)
            safe = np.where(seen, l, 1.0)
            out[bi, :, h, :] = np.where(seen[:, None], _masked_pv(p, v[bi, :, h // group, :], ok) / safe[:, None], 0.0)
            lse[bi, h] = np.where(seen, np.log(safe) + m, -np.inf)
    return out, lse


def reference_backward(q, k, v, dout, *, causal=False, window=(-1, -1), softcap=0.0, softmax_scale=None,
                       alibi_slopes=None):
    """(dq, dk, dv) in float64: the analytic gradients of sum(dout * out) for the forward above.

    Per (batch, head): S = scale q k^T, T = softcap tanh(S / softcap) (or S), Z = T + ALiBi bias,
    P = softmax over the visible keys, out = P v. Then dv = P^T dout, dP = dout v^T,
    D = rowsum(dout * out) = rowsum(P * dP), dZ = P (dP - D), dS = dZ (1 - (T / softcap)^2),
    dq = scale dS k, dk = scale dS^T q; a GQA group's heads sum into their shared k and v head.
    Masked keys get exactly 0 (their P is 0), as do rows that see no key."""
    q, k, v, dout = (np.asarray(x).astype(np.float64) for x in (q, k, v, dout))
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    group = hq // hk
    scale = 1.0 / np.sqrt(d) if softmax_scale is None else softmax_scale
    ok = visible(sq, sk, causal, window)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for bi in range(b):
        for h in range(hq):
            kh, vh, g = k[bi, :, h // group, :], v[bi, :, h // group, :], dout[bi, :, h, :]
            s = scale * (q[bi, :, h, :] @ kh.T)
            t = softcap * np.tanh(s / softcap) if softcap > 0 else s
            z = t + alibi_bias(alibi_slopes, bi, h, sq, sk) if alibi_slopes is not None else t
            z = np.where(ok, z, -np.inf)
            seen = ok.any(axis=1)
            m = np.where(seen, z.max(axis=1, initial=-np.inf), 0.0)
            p = np.where(ok, np.exp(z - m[:, None]), 0.0)
            with np.errstate(invalid="ignore"):
                p = np.where(ok, p / np.where(seen, p.sum(axis=1), 1.0)[:, None], 0.0)  # (a NaN row stays in its pairs)
            with np.errstate(invalid="ignore", over="ignore"):  # (non-finite products of masked pairs: dropped)
                dp = np.where(ok, g @ vh.T, 0.0)
            dz = p * (dp - (p * dp).sum(axis=1, keepdims=True))
            ds = dz * (1.0 - (t / softcap) ** 2) if softcap > 0 else dz
            ds = np.where(ok, ds, 0.0)
            # sums over visible pairs only: a masked key's values never meet a row, nor a row's a key
            dq[bi, :, h, :] = scale * _masked_pv(ds, kh, ok)
            dk[bi, :, h // group, :] += scale * _masked_pv(ds.T, q[bi, :, h, :], ok.T)
            dv[bi, :, h // group, :] += _masked_pv(p.T, g, ok.T)
    return dq, dk, dv
