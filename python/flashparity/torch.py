"""flashparity's attention as a differentiable PyTorch function:
``flashparity.torch.attention(q, k, v, ...)``, a ``torch.autograd.Function`` whose forward is
:func:`flashparity.attention` and whose backward is :func:`flashparity.attention_backward`.

Layer: the public API's (beside ``flashparity/__init__.py``); it imports :mod:`flashparity.kernels`
and torch, which it loads on first use (``import flashparity`` never imports torch).
"""

from __future__ import annotations

import functools
from typing import Any

from ._optional import require
from .kernels.adapters import from_torch, to_torch
from .kernels.attention import attention as _attention
from .kernels.attention import attention_backward as _attention_backward

__all__ = ["attention"]


@functools.lru_cache(maxsize=None)
def _function() -> Any:
    torch = require("torch", "flashparity.torch")

    class FlashParityAttention(torch.autograd.Function):
        """Forward through fp.attention (saving out and lse), backward through fp.attention_backward."""

        @staticmethod
        def forward(ctx, q, k, v, options):  # noqa: ANN001 - torch's signature
            out, lse = _attention(*(from_torch(t) for t in (q, k, v)), return_lse=True, **options)
            result = to_torch(out)
            # (saved as torch saves its own: an in-place change to q, k, v or the output before the
            # backward is an error there, not wrong gradients)
            ctx.save_for_backward(q, k, v, result)
            ctx.lse = lse
            ctx.options = options
            return result

        @staticmethod
        def backward(ctx, dout):  # noqa: ANN001
            if torch.is_grad_enabled():  # create_graph=True: the gradients would carry no graph, and a
                # second derivative through them would be silently 0
                raise RuntimeError("flashparity.torch.attention is differentiable once: its backward runs "
                                   "fp.attention_backward, which has no derivative (create_graph=True is not "
                                   "supported)")
            q, k, v, out = (from_torch(t) for t in ctx.saved_tensors)
            grads = _attention_backward(q, k, v, out, ctx.lse, from_torch(dout), **ctx.options)
            return (*(to_torch(g) for g in grads), None)

    return FlashParityAttention


def attention(q: Any, k: Any, v: Any, *, impl: str = "flash2", causal: bool = False, softmax_scale: float | None = None,
              window: tuple[int, int] = (-1, -1), softcap: float = 0.0, alibi_slopes: Any = None):
    """softmax(scale · q kᵀ) v on torch CPU tensors, differentiable: q ``[batch, seqlen_q, heads_q,
    head_dim]``, k and v ``[batch, seqlen_k, heads_kv, head_dim]`` (BSHD, any strides), float64,
    float32, float16 or bfloat16. Returns out like q. The options are :func:`flashparity.attention`'s;
    ``out.backward(...)`` (or any loss built on it) fills q.grad, k.grad and v.grad through
    :func:`flashparity.attention_backward` with the same ``impl`` (``alibi_slopes`` are constants:
    they get no gradient). Differentiable once: a backward with ``create_graph=True`` is an error.
    CUDA tensors: not yet (the backward runs on the CPU in this version)."""
    torch = require("torch", "flashparity.torch")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__} (fp.attention takes arrays)")
        if t.device.type != "cpu":
            raise NotImplementedError(f"flashparity.torch.attention runs on the CPU in this version; {name} is on "
                                      f"{t.device} (copy the tensors to the CPU, or use fp.attention without "
                                      "autograd)")
    options = {"impl": impl, "causal": causal, "softmax_scale": softmax_scale, "window": tuple(window),
               "softcap": softcap, "alibi_slopes": alibi_slopes}
    return _function().apply(q, k, v, options)
