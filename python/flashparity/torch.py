"""flashparity's attention as a differentiable PyTorch function:
``flashparity.torch.attention(q, k, v, ...)``, a ``torch.autograd.Function`` whose forward is
:func:`flashparity.attention` and whose backward is :func:`flashparity.attention_backward`; and
``flashparity.torch.register_hf()``, which makes it a Hugging Face ``transformers`` attention
implementation (``attn_implementation="fp_attention"``).

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

__all__ = ["attention", "hf_attention", "register_hf"]


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


def hf_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                 scaling: float | None = None, sliding_window: int | None = None, softcap: float | None = None,
                 is_causal: bool | None = None, *, impl: str = "flash2", **kwargs: Any):
    """A Hugging Face ``transformers`` attention function (the ``AttentionInterface`` signature):
    query ``[batch, heads_q, seq_q, head_dim]``, key and value ``[batch, heads_kv, seq_k, head_dim]``
    (GQA as they come: no repeat), through :func:`attention`. Causal (bottom-right aligned, as with a
    KV cache) unless the module says ``is_causal = False``; ``sliding_window`` and ``softcap`` as
    FlashAttention-2's integration reads them. Returns ``(out [batch, seq_q, heads_q, head_dim],
    None)``. Not taken, each an error naming it: a padding or custom mask (``attention_mask`` not
    None: unpad the batch), dropout > 0, attention sinks (``s_aux``), ``output_attentions``."""
    if attention_mask is not None:
        raise NotImplementedError("the flashparity attention takes no attention_mask (padding or a custom mask): "
                                  "give it unpadded batches (a mask of all ones is dropped before it)")
    if dropout:
        raise NotImplementedError(f"the flashparity attention has no dropout; got dropout={dropout} (set the "
                                  "config's attention_dropout to 0, or call model.eval())")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("the flashparity attention has no attention sinks (s_aux)")
    if kwargs.get("output_attentions"):
        raise NotImplementedError("the flashparity attention does not return attention weights "
                                  "(output_attentions=True): use attn_implementation='eager' for them")
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    window = (-1, -1)
    if sliding_window is not None and key.shape[2] > sliding_window:
        window = (sliding_window - 1, sliding_window - 1)
    out = attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), impl=impl, causal=causal,
                    softmax_scale=scaling, window=window, softcap=float(softcap or 0.0))
    return out, None


def register_hf(name: str = "fp_attention", *, impl: str = "flash2") -> str:
    """Register :func:`hf_attention` (with ``impl``) as the ``transformers`` attention implementation
    ``name``, with FlashAttention-2's mask function (no mask for unpadded batches), so that
    ``AutoModel...from_pretrained(..., attn_implementation=name)`` or ``model.set_attn_implementation(name)``
    runs every attention layer through flashparity, forward and backward. Returns ``name``. (A name
    with "flash" in it is refused: transformers takes any such name for a FlashAttention build.)"""
    require("transformers", "flashparity.torch.register_hf")
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    if not isinstance(name, str) or not name or name in ("eager", "sdpa", "flex_attention") or "flash" in name:
        raise ValueError(f"name must be a new attention implementation name without 'flash' in it (transformers "
                         f"takes such names for FlashAttention builds), got {name!r}")
    if impl not in ("flash2", "naive"):
        raise ValueError(f"impl must be 'flash2' or 'naive', got {impl!r}")
    AttentionInterface.register(name, functools.partial(hf_attention, impl=impl))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, flash_attention_mask)
    return name
