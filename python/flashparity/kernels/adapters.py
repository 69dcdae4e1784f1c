"""Adapters that run an attention kernel on a conformance case (:mod:`flashparity.kernels.conformance`).

An adapter takes a case's inputs (NumPy arrays: BSHD, or packed and paged as
:meth:`flashparity.kernels.conformance.Case.inputs` describes), calls the kernel in its own calling
convention (layout, causal alignment, argument names, LSE base) on the case's device and hands back
``(out, lse)`` in flashparity's: out [batch, seqlen_q, heads_q, head_dim] (packed [total_q, ...] for
a varlen case) in q's dtype, lse [batch, heads_q, seqlen_q] ([heads_q, total_q]) natural log, or
None. Each adapter declares what it supports (:class:`Capabilities`) and where it runs
(``devices``); a case outside that is ``unsupported`` with the reasons, as xformers' ops answer
``not_supported_reasons``. Optional packages (torch, jax, flash_attn, flashinfer, xformers, kernels)
load when an adapter first runs and fail with one line naming the ``pip install``.

Built-in adapters (:data:`ADAPTERS`): ``flashparity:flash2`` and ``flashparity:naive`` (this
package's kernels, through the same path as any other); ``torch-sdpa`` (PyTorch's
``scaled_dot_product_attention``, backend chosen by PyTorch) and ``torch-sdpa:<backend>`` with
``math``, ``flash``, ``efficient`` or ``cudnn`` forced through ``torch.nn.attention.sdpa_kernel``;
``torch-flex`` and ``torch-flex:compiled``; ``jax``; the CUDA-only ``flash-attn``, ``flash-attn-3``,
``flashinfer`` and ``xformers``; and ``hub:<org>/<repo>@<commit>`` (:class:`HubAdapter`).

Conventions of a user's callable (:data:`CONVENTIONS`), each documented where it is defined:
``bshd``, ``bshd-numpy``, ``fa2``, ``fa2-varlen``, ``fa2-kvcache``, ``fa3``, ``fa3-varlen``,
``fa3-kvcache``, ``sdpa``, ``flashinfer``, ``xformers`` and ``jax``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import inspect
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .._optional import require

__all__ = ["Capabilities", "Unsupported", "Adapter", "ADAPTERS", "CONVENTIONS", "resolve", "adapter_status",
           "host_array"]


class Unsupported(NotImplementedError):
    """The kernel does not support this case (a verdict of ``unsupported``, not a failure)."""


@dataclass(frozen=True)
class Capabilities:
    """What a kernel supports. ``dtypes``: among float32, float16, bfloat16 and the FP8 formats
    float8_e4m3fn, float8_e5m2 (inputs with FlashAttention-3's descales); ``max_head_dim`` (None:
    any); ``head_dim_multiple``: head dims it takes must be multiples of this; ``gqa``: heads_q a
    multiple of heads_kv other than 1:1; ``causal`` (bottom-right, or converted by the convention);
    ``window``: sliding windows; ``softcap``; ``alibi``; ``lse``: it returns the LSE; ``strided``:
    it takes non-contiguous inputs (else they are made contiguous first, and said so)."""

    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")
    max_head_dim: int | None = None
    head_dim_multiple: int = 1
    gqa: bool = True
    causal: bool = True
    window: bool = False
    softcap: bool = False
    alibi: bool = False
    lse: bool = False
    strided: bool = True
    varlen: bool = False
    paged: bool = False
    page_size_multiple: int = 1
    head_dims: tuple[int, ...] | None = None

    @staticmethod
    def of(value: Capabilities | dict | None, default: Capabilities) -> Capabilities:
        if value is None:
            return default
        if isinstance(value, Capabilities):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"capabilities must be a dict or Capabilities, got {type(value).__name__}")
        known = {f.name for f in dataclasses.fields(Capabilities)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown capabilities {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
        value = dict(value)
        if "dtypes" in value:
            names = value["dtypes"]
            known = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
            if isinstance(names, str) or not all(isinstance(n, str) and n in known for n in names):
                raise ValueError(f"capabilities['dtypes'] must be a list of {', '.join(known)}, got {names!r}")
            value["dtypes"] = tuple(names)
        if "head_dims" in value and value["head_dims"] is not None:
            dims = value["head_dims"]
            if isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__") or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
                raise ValueError(f"capabilities['head_dims'] must be a list of integers >= 1 or None, got {dims!r}")
            value["head_dims"] = tuple(dims)
        for key in ("gqa", "causal", "window", "softcap", "alibi", "lse", "strided", "varlen", "paged"):
            if key in value and not isinstance(value[key], bool):
                raise ValueError(f"capabilities[{key!r}] must be true or false, got {value[key]!r}")
        for key in ("max_head_dim", "head_dim_multiple", "page_size_multiple"):
            v = value.get(key)
            if key in value and not (v is None and key == "max_head_dim") and (
                    isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"capabilities[{key!r}] must be an integer >= 1, got {v!r}")
        return dataclasses.replace(default, **value)

    def reasons(self, case: Any) -> list[str]:
        """Why a case is outside these capabilities (empty: supported)."""
        out = []
        if case.dtype not in self.dtypes:
            out.append(f"dtype {case.dtype} (supports {', '.join(self.dtypes)})")
        if self.max_head_dim is not None and case.head_dim > self.max_head_dim:
            out.append(f"head_dim {case.head_dim} > {self.max_head_dim}")
        if case.head_dim % self.head_dim_multiple:
            out.append(f"head_dim {case.head_dim} not a multiple of {self.head_dim_multiple}")
        if case.heads_q != case.heads_kv and not self.gqa:
            out.append(f"GQA/MQA ({case.heads_q} query heads, {case.heads_kv} kv heads)")
        if case.causal and not self.causal:
            out.append("causal")
        if case.window != (-1, -1) and not self.window:
            out.append("sliding window")
        if case.softcap and not self.softcap:
            out.append("softcap")
        if case.alibi and not self.alibi:
            out.append("ALiBi")
        if self.head_dims is not None and case.head_dim not in self.head_dims:
            out.append(f"head_dim {case.head_dim} (supports {', '.join(map(str, self.head_dims))})")
        if case.kind == "varlen" and not self.varlen:
            out.append("varlen batches")
        if case.kind == "paged" and not self.paged:
            out.append("paged KV caches")
        elif case.kind == "paged" and case.page_size % self.page_size_multiple:
            out.append(f"page size {case.page_size} not a multiple of {self.page_size_multiple}")
        return out


class Adapter:
    """A kernel and its calling convention. Subclasses set ``name``, ``convention``,
    ``capabilities`` and implement :meth:`call` (``kernel_source`` for provenance)."""

    name = "?"
    convention = "?"
    capabilities = Capabilities()
    #: the devices the kernel runs on (``device=`` of :func:`flashparity.kernels.conformance`)
    devices: tuple[str, ...] = ("cpu", "cuda")

    def __init__(self):
        self.notes: list[str] = []
        self.device = "cpu"

    def to(self, x: np.ndarray) -> Any:
        """A case's input as a torch tensor on the adapter's device (a view of it on the CPU). While
        :meth:`gradients` runs, q, k and v become leaf tensors that require grad (copies)."""
        t = to_torch(x, self.device)
        wanted = getattr(_GRAD, "inputs", None)
        if wanted is not None and id(x) in wanted:
            t = t.detach().clone().requires_grad_(True)
            _GRAD.leaves[wanted[id(x)]] = t
        return t

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def prepare(self) -> None:
        """Import what the adapter needs (before any case runs: a missing package is one line, not
        a failed case)."""

    def not_supported_reasons(self, case: Any) -> list[str]:
        """Why the kernel cannot take a case: outside its capabilities, or what its calling convention
        cannot express (:data:`_CONVENTION_REASONS`)."""
        extra = _CONVENTION_REASONS.get(self.convention)
        return self.capabilities.reasons(case) + (extra(case) if extra else [])

    def run(self, case: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
        """(out, lse or None) for the case's inputs, in flashparity's layout."""
        if case.kind in ("strided", "stride0") and not self.capabilities.strided:
            inputs = {**inputs, **{n: np.ascontiguousarray(inputs[n]) for n in ("q", "k", "v")}}
            self.note(f"{self.name} takes contiguous inputs only: strided cases ran on contiguous copies")
        out, lse = self.call(case, inputs)
        return out, (lse if self.capabilities.lse else None)

    def call(self, case: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
        raise NotImplementedError

    def kernel_source(self) -> str:
        return self.name

    def gradients(self, case: Any, inputs: dict[str, Any], dout: np.ndarray) -> tuple[np.ndarray, ...]:
        """(dq, dk, dv) of the kernel's output for the output gradient ``dout`` (BSHD, the output's
        dtype), as NumPy arrays in q's, k's and v's layout: the forward runs on torch leaf tensors
        that require grad (copies of contiguous q, k and v) and ``torch.autograd.grad`` takes the
        gradients through whatever the kernel recorded (an ``autograd.Function``, SDPA's and
        FlexAttention's own backwards; a varlen case's packed q, k, v in the conventions that take
        them). Raises :class:`Unsupported` for a case or kernel that gives no gradients: paged
        cases, FP8, a CUDA device, a kernel that takes NumPy arrays or returns an output with no
        autograd graph back to q, k and v. (JAX kernels: :func:`_jax_gradients`.)"""
        reasons = _gradient_reasons(self, case)
        if reasons:
            raise Unsupported("; ".join(reasons))
        torch = _torch()
        inputs = {**inputs, **{n: np.ascontiguousarray(inputs[n]) for n in ("q", "k", "v")}}
        _GRAD.inputs = {id(inputs[n]): n for n in ("q", "k", "v")}
        _GRAD.leaves, _GRAD.outputs = {}, []
        try:
            with torch.enable_grad():
                self.run(case, inputs)
            outputs, leaves = _GRAD.outputs, _GRAD.leaves
        except NotImplementedError as exc:  # (a kernel with no backward for this case, as flex on a CPU)
            raise Unsupported(str(exc) or "NotImplementedError") from None
        finally:
            _GRAD.inputs = _GRAD.leaves = _GRAD.outputs = None
        if len(leaves) < 3:
            raise Unsupported(f"{self.name} did not take q, k and v as torch tensors through its convention: no "
                              "gradients to take")
        if not outputs or outputs[0].grad_fn is None:
            raise Unsupported(f"{self.name}'s output carries no autograd graph back to q, k and v (not "
                              "differentiable in torch)")
        out = outputs[0]
        if tuple(out.shape) != tuple(dout.shape):
            raise ValueError(f"{self.name}'s output has shape {tuple(out.shape)}; dout {tuple(dout.shape)}")
        g = to_torch(np.ascontiguousarray(dout), self.device).to(out.dtype)
        try:
            grads = torch.autograd.grad(out, [leaves[n] for n in ("q", "k", "v")], g, allow_unused=True)
        except NotImplementedError as exc:
            raise Unsupported(str(exc) or "NotImplementedError") from None
        return tuple(np.zeros(inputs[n].shape, inputs[n].dtype) if x is None else np.array(from_torch(x))
                     for n, x in zip(("q", "k", "v"), grads))


#: while Adapter.gradients runs: every torch tensor that requires grad and goes through from_torch
#: (the first is the kernel's output, in flashparity's layout)
#: (and .inputs: id of q, k, v -> name; .leaves: name -> the leaf tensor made of it; per thread:
#: conformance runs may run side by side, even on one adapter)
_GRAD = threading.local()


def _gradient_reasons(adapter: Adapter, case: Any) -> list[str]:
    """Why gradients of a case are not judged (see :meth:`Adapter.gradients`)."""
    from .backward import CUDA_NOT_BUILT, PAGED_NOT_BUILT

    out = []
    if case.kind == "paged":
        out.append(PAGED_NOT_BUILT)
    if case.dtype not in ("float32", "float16", "bfloat16"):
        out.append(f"gradients are judged in float32, float16 and bfloat16, not {case.dtype}")
    if adapter.device != "cpu":
        out.append(CUDA_NOT_BUILT)
    if adapter.convention == "bshd-numpy":
        out.append(f"a kernel in the {adapter.convention} convention gives no gradients")
    return out


def _jax_gradients(adapter: Adapter, fn: Callable, case: Any, inputs: dict[str, Any],
                   dout: np.ndarray) -> tuple[np.ndarray, ...]:
    """(dq, dk, dv) of a kernel in the ``jax`` convention: ``jax.vjp`` of ``fn(q, k, v, **kw)`` (its
    arguments as the forward's, :func:`_jax_arguments`; the output alone where it also returns an
    LSE) at the case's q, k, v, pulled back from ``dout`` (BSHD, in the output's dtype); NumPy arrays
    in q's, k's and v's layout and dtype."""
    reasons = _gradient_reasons(adapter, case)
    if case.kind == "varlen":
        reasons.append("the jax convention takes dense batches, not varlen cases")
    if reasons:
        raise Unsupported("; ".join(reasons))
    import jax

    (q, k, v), kw = _jax_arguments(case, inputs)

    def forward(q, k, v):
        return _split(_call_bound(fn, (q, k, v), kw), adapter.capabilities.lse, "the kernel")[0]

    out, pull = jax.vjp(forward, q, k, v)
    if tuple(out.shape) != tuple(dout.shape):
        raise ValueError(f"{adapter.name}'s output has shape {tuple(out.shape)}; dout {tuple(dout.shape)}")
    grads = pull(jax.numpy.asarray(np.ascontiguousarray(dout)).astype(out.dtype))
    return tuple(np.asarray(g).astype(inputs[n].dtype) for n, g in zip(("q", "k", "v"), grads))


# ---- torch conversions --------------------------------------------------------------------------------


def _torch():
    return require("torch", "conformance of a torch kernel")


def to_torch(x: np.ndarray, device: str = "cpu"):
    """A NumPy array (ml_dtypes bfloat16 included; any non-negative strides, stride 0 too) as a
    torch tensor viewing the same memory: non-contiguous inputs stay non-contiguous. On another
    ``device`` (``cuda``), a copy there with the same strides where they are dense (a stride-0 or
    gapped view arrives contiguous)."""
    torch = _torch()
    bf16, fp8 = x.dtype.name == "bfloat16", x.dtype.name in ("float8_e4m3fn", "float8_e5m2")
    with warnings.catch_warnings():  # (broadcast views are read-only; kernels do not write their inputs)
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(x.view(np.uint16) if bf16 else x.view(np.uint8) if fp8 else x)
    t = t.view(torch.bfloat16) if bf16 else t.view(getattr(torch, x.dtype.name)) if fp8 else t
    return t if device == "cpu" else t.to(device)


def from_torch(t: Any) -> np.ndarray:
    torch = _torch()
    outputs = getattr(_GRAD, "outputs", None)
    if outputs is not None and t.requires_grad:
        outputs.append(t)
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def host_array(x: Any, name: str) -> np.ndarray:
    """A kernel's output as a NumPy array: NumPy arrays as they are, torch tensors (bfloat16 kept, as
    ml_dtypes bfloat16) and anything NumPy can read (jax arrays) converted; TypeError otherwise."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch"):
        return from_torch(x)
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise TypeError(f"the kernel's {name} is a {type(x).__name__}, not an array") from exc
    if arr.dtype == object:
        raise TypeError(f"the kernel's {name} is a {type(x).__name__}, not an array")
    return arr


def alibi_bias(case: Any, slopes: np.ndarray) -> np.ndarray:
    """FlashAttention-2's ALiBi bias -slope · |i + sk - sq - j|, float32 [heads_q, seqlen_q, seqlen_k]."""
    i = np.arange(case.seqlen_q)[:, None]
    j = np.arange(case.seqlen_k)[None, :]
    dist = np.abs(i + case.seqlen_k - case.seqlen_q - j).astype(np.float32)
    return -slopes.astype(np.float32)[:, None, None] * dist[None]


def alibi_mask(case: Any, slopes: np.ndarray) -> np.ndarray:
    """ALiBi's bias where a query sees the key (:func:`visible`), -inf elsewhere: the additive float
    mask [heads_q, seqlen_q, seqlen_k] float32 of the conventions that take ALiBi as a mask."""
    return np.where(visible(case)[None], alibi_bias(case, slopes), -np.inf).astype(np.float32)


def visible(case: Any) -> np.ndarray:
    """[seqlen_q, seqlen_k] bool: which keys each query sees (bottom-right causal and window)."""
    from .backward import visible as keys_seen

    return keys_seen(case.seqlen_q, case.seqlen_k, case.causal, case.window)


# ---- built-in adapters --------------------------------------------------------------------------------


class FlashparityAdapter(Adapter):
    """flashparity's own kernels through :func:`flashparity.attention` (the ``bshd-numpy`` path), and
    for varlen and paged cases :func:`flashparity.attention_varlen` and
    :func:`flashparity.attention_kvcache` (FlashAttention-2's conventions). On ``cuda`` the inputs go
    in as torch tensors on the GPU."""

    convention = "bshd-numpy"

    def __init__(self, impl: str):
        super().__init__()
        self.impl = impl
        self.name = f"flashparity:{impl}"
        self.capabilities = Capabilities(dtypes=("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"),
                                         max_head_dim=256 if impl == "flash2" else None, window=True, softcap=True,
                                         alibi=True, lse=True, varlen=True, paged=True)

    def call(self, case, inputs):
        from .attention import attention
        from .serving import attention_kvcache, attention_varlen

        x = (lambda a: a) if self.device == "cpu" else self.to
        kw = dict(impl=self.impl, causal=case.causal, window=case.window, softcap=case.softcap,
                  alibi_slopes=inputs["alibi_slopes"], softmax_scale=case.softmax_scale, return_lse=True)
        if case.fp8:
            kw.update({n: inputs[n] for n in ("q_descale", "k_descale", "v_descale")})
        if case.kind == "varlen":
            return attention_varlen(x(inputs["q"]), x(inputs["k"]), x(inputs["v"]), inputs["cu_seqlens_q"],
                                    inputs["cu_seqlens_k"], max_seqlen_q=inputs["max_seqlen_q"],
                                    max_seqlen_k=inputs["max_seqlen_k"], **kw)
        if case.kind == "paged":
            return attention_kvcache(x(inputs["q"]), x(inputs["k_cache"]), x(inputs["v_cache"]),
                                     inputs["cache_seqlens"], block_table=inputs["block_table"], **kw)
        return attention(x(inputs["q"]), x(inputs["k"]), x(inputs["v"]), **kw)

    def kernel_source(self) -> str:
        from .._build import kernel_source

        return kernel_source(self.impl)

    def gradients(self, case, inputs, dout):
        """(dq, dk, dv) of flashparity's backward of this impl (:func:`flashparity.attention_backward`;
        :func:`flashparity.attention_varlen_backward` for a varlen case)."""
        from .backward import own_gradients

        from .backward import varlen_gradients

        reasons = [r for r in _gradient_reasons(self, case) if "convention" not in r]
        if reasons:
            raise Unsupported("; ".join(reasons))
        kw = dict(causal=case.causal, window=case.window, softcap=case.softcap, alibi_slopes=inputs["alibi_slopes"],
                  softmax_scale=case.softmax_scale)
        if case.kind == "varlen":
            return varlen_gradients(self.impl, inputs["q"], inputs["k"], inputs["v"], dout, inputs["cu_seqlens_q"],
                                    inputs["cu_seqlens_k"], inputs["max_seqlen_q"], inputs["max_seqlen_k"], **kw)
        return own_gradients(self.impl, inputs["q"], inputs["k"], inputs["v"], dout, **kw)


SDPA_BACKENDS = {"math": "MATH", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "cudnn": "CUDNN_ATTENTION"}


def _sdpa_arguments(case: Any, inputs: dict[str, Any], to: Callable[[np.ndarray], Any]) -> tuple[tuple, dict]:
    """The ``sdpa`` convention's arguments for a case: BHSD tensors; ``is_causal=True`` only where
    SDPA's top-left alignment equals the case's bottom-right one (seqlen_q == seqlen_k, nothing
    else masked), else an explicit mask: boolean (keys seen), or float (ALiBi's bias, -inf where
    masked); ``enable_gqa`` for GQA/MQA; ``scale`` the case's softmax scale."""
    q, k, v = (to(inputs[n]).transpose(1, 2) for n in ("q", "k", "v"))
    kw: dict[str, Any] = {"scale": case.softmax_scale}
    if case.heads_q != case.heads_kv:
        kw["enable_gqa"] = True
    plain_causal = case.causal and case.seqlen_q == case.seqlen_k and case.window == (-1, -1) and not case.alibi
    if plain_causal:
        kw["is_causal"] = True
    elif case.causal or case.window != (-1, -1) or case.alibi:
        if case.alibi:
            kw["attn_mask"] = to(alibi_mask(case, inputs["alibi_slopes"])[None]).to(q.dtype)  # [1, heads_q, sq, sk]
        else:
            kw["attn_mask"] = to(visible(case))
    return (q, k, v), kw


class TorchSdpaAdapter(Adapter):
    """``torch.nn.functional.scaled_dot_product_attention`` (the ``sdpa`` convention), with a
    backend forced by ``torch.nn.attention.sdpa_kernel`` or PyTorch's own choice. No softcap, no
    LSE (the public function returns none)."""

    convention = "sdpa"
    capabilities = Capabilities(window=True, alibi=True)

    def __init__(self, backend: str | None):
        super().__init__()
        self.backend = backend
        self.name = "torch-sdpa" + (f":{backend}" if backend else "")

    def prepare(self) -> None:
        _torch()

    def call(self, case, inputs):
        torch = _torch()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        args, kw = _sdpa_arguments(case, inputs, self.to)
        f = torch.nn.functional.scaled_dot_product_attention
        if self.backend is None:
            out = f(*args, **kw)
        else:
            try:
                with sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[self.backend])):
                    out = f(*args, **kw)
            except RuntimeError as exc:  # (PyTorch's words when the forced backend cannot take the case)
                if "No available kernel" in str(exc) or "No viable backend" in str(exc):
                    raise Unsupported(f"PyTorch's {self.backend} backend does not run this case on this machine") from None
                raise
        return from_torch(out.transpose(1, 2)), None

    def kernel_source(self) -> str:
        torch = _torch()
        return f"torch@{torch.__version__}:sdpa-{self.backend or 'auto'}"


class TorchFlexAdapter(Adapter):
    """PyTorch's FlexAttention: ``flex_attention(q, k, v, score_mod, block_mask, scale, enable_gqa,
    return_lse=True)`` on BHSD tensors; causal and windows as a block mask (bottom-right), softcap and
    ALiBi as a score_mod on the scaled score (softcap, then the bias, as FlashAttention-2 orders
    them); the natural-log LSE it returns. ``compiled``: through ``torch.compile`` (the first call of
    each shape compiles, which takes tens of seconds on a CPU) instead of the eager, unfused path."""

    convention = "flex"
    capabilities = Capabilities(window=True, softcap=True, alibi=True, lse=True)

    def __init__(self, compiled: bool):
        super().__init__()
        self.compiled = compiled
        self.name = "torch-flex" + (":compiled" if compiled else "")
        self._fn = None
        if compiled:  # (torch.compile's CPU flex kernel returns no LSE: "return_lse is not supported yet")
            self.capabilities = dataclasses.replace(self.capabilities, lse=False)

    def prepare(self) -> None:
        _torch()
        from torch.nn.attention import flex_attention as mod

        fn = mod.flex_attention
        if self.compiled:
            import torch

            with warnings.catch_warnings():  # (torch's own deprecation notices on the way to inductor)
                warnings.simplefilter("ignore", DeprecationWarning)
                fn = torch.compile(fn)
        self._fn = fn
        self.notes.append("ran " + ("under torch.compile" if self.compiled else "eagerly (unfused: the scores are "
                                    "materialized)"))

    def call(self, case, inputs):
        torch = _torch()
        from torch.nn.attention.flex_attention import create_block_mask

        if self._fn is None:
            self.prepare()
        q, k, v = (self.to(inputs[n]).transpose(1, 2) for n in ("q", "k", "v"))
        sq, sk = case.seqlen_q, case.seqlen_k
        left, right = case.window
        if case.causal:
            right = 0 if right < 0 else min(right, 0)
        block_mask = None
        if left >= 0 or right >= 0:
            def mask_mod(b, h, qi, ki):
                diag = qi + sk - sq
                ok = ki >= diag - left if left >= 0 else ki >= 0
                return ok & (ki <= diag + right) if right >= 0 else ok

            block_mask = create_block_mask(mask_mod, None, None, sq, sk, device=self.device)
        score_mod = None
        if case.softcap or case.alibi:
            cap = float(case.softcap)
            slopes = self.to(np.asarray(inputs["alibi_slopes"], np.float32)) if case.alibi else None

            def capped_biased(s, b, h, qi, ki):
                if cap:
                    s = cap * torch.tanh(s / cap)
                if slopes is not None:
                    s = s - slopes[h] * torch.abs(qi + sk - sq - ki)
                return s

            score_mod = capped_biased

        aux_kw: dict[str, Any] = {}
        if self.capabilities.lse:
            try:  # (return_aux replaced return_lse in torch 2.9)
                from torch.nn.attention.flex_attention import AuxRequest
                aux_kw = {"return_aux": AuxRequest(lse=True)}
            except ImportError:
                aux_kw = {"return_lse": True}
        with warnings.catch_warnings():  # (the eager path's advice to compile; torch's deprecation notices)
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            res = self._fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=case.softmax_scale,
                           enable_gqa=case.heads_q != case.heads_kv, **aux_kw)
        if not aux_kw:
            return from_torch(res.transpose(1, 2)), None
        out, aux = res
        lse = aux.lse if "return_aux" in aux_kw else aux
        return from_torch(out.transpose(1, 2)), from_torch(lse)

    def kernel_source(self) -> str:
        torch = _torch()
        return f"torch@{torch.__version__}:flex-{'compiled' if self.compiled else 'eager'}"


def _jax_arguments(case: Any, inputs: dict[str, Any]) -> tuple[tuple, dict]:
    """The ``jax`` convention's arguments for a case: BTNH (= BSHD) jax arrays; ``is_causal=True``
    only where JAX's top-left alignment equals the case's bottom-right one (seqlen_q ==
    seqlen_k, nothing else masked), else an explicit boolean ``mask`` [1, 1, T, S]; ALiBi as a
    float ``bias`` [1, N, T, S]; ``scale`` the case's softmax scale. (GQA is native.)"""
    jnp = require("jax.numpy", "conformance of a JAX kernel")
    q, k, v = (jnp.asarray(np.ascontiguousarray(inputs[n])) for n in ("q", "k", "v"))
    kw: dict[str, Any] = {"scale": case.softmax_scale}
    if case.causal and case.seqlen_q == case.seqlen_k and case.window == (-1, -1):
        kw["is_causal"] = True
    elif case.causal or case.window != (-1, -1):
        kw["mask"] = jnp.asarray(visible(case)[None, None])
    if case.alibi:
        kw["bias"] = jnp.asarray(alibi_bias(case, inputs["alibi_slopes"])[None]).astype(q.dtype)
    return (q, k, v), kw


class JaxAdapter(Adapter):
    """``jax.nn.dot_product_attention`` (the ``jax`` convention) with ``implementation=`` recorded
    (``xla`` on a CPU). No softcap, no LSE."""

    convention = "jax"
    capabilities = Capabilities(window=True, alibi=True)

    def __init__(self, implementation: str | None):
        super().__init__()
        self.implementation = implementation
        self.name = "jax" + (f":{implementation}" if implementation else "")

    def prepare(self) -> None:
        require("jax", "conformance of a JAX kernel")

    def call(self, case, inputs):
        import jax

        args, kw = _jax_arguments(case, inputs)
        out = jax.nn.dot_product_attention(*args, implementation=self.implementation, **kw)
        return np.asarray(out), None

    def kernel_source(self) -> str:
        import jax

        return f"jax@{jax.__version__}:dot_product_attention-{self.implementation or 'auto'}"

    def gradients(self, case, inputs, dout):
        """(dq, dk, dv) through ``jax.vjp`` of the forward (:func:`_jax_gradients`)."""
        import jax

        fn = functools.partial(jax.nn.dot_product_attention, implementation=self.implementation)
        return _jax_gradients(self, fn, case, inputs, dout)


# ---- calling conventions ------------------------------------------------------------------------------


def _call_bound(fn: Callable, args: tuple, kw: dict) -> Any:
    """fn(*args, **kw); arguments it cannot bind, or NotImplementedError, mean unsupported."""
    try:
        inspect.signature(fn).bind(*args, **kw)
    except TypeError as exc:
        raise Unsupported(f"the callable does not take these arguments: {exc}") from None
    except ValueError:  # (no signature to inspect: a builtin; call it and see)
        pass
    try:
        return fn(*args, **kw)
    except NotImplementedError as exc:
        raise Unsupported(str(exc) or "NotImplementedError") from None


def _takes(fn: Callable, name: str) -> bool:
    """Whether fn has a parameter ``name`` (or takes **kwargs; True where it cannot be told)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _split(result: Any, want_lse: bool, what: str) -> tuple[Any, Any]:
    if isinstance(result, (tuple, list)):
        if not result:
            raise TypeError(f"{what} returned an empty tuple")
        return result[0], (result[1] if want_lse and len(result) > 1 else None)
    return result, None


def _blind_lse(case: Any, lse: Any) -> np.ndarray:
    """FlashAttention's LSE with the +inf it writes for a row that sees no key (its kernels'
    ``sum == 0 ? INFINITY``) read as the -inf of an empty sum."""
    lse = np.array(host_array(lse, "lse"))
    if tuple(lse.shape) == case.lse_shape:
        blind = case.blind_rows()
        if blind.any():
            rows = np.moveaxis(lse, -2, -1)  # (a view: the rows first, [batch, seqlen_q, heads] or [total_q, heads])
            sel = rows[blind]
            rows[blind] = np.where(np.isposinf(sel), -np.inf, sel)
    return lse


def _packed(case: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """A dense case's inputs as a varlen batch of ``batch`` equal sequences (q, k, v packed)."""
    b, sq, sk = case.batch, case.seqlen_q, case.seqlen_k
    out = {n: np.ascontiguousarray(inputs[n]).reshape(b * x, inputs[n].shape[2], case.head_dim)
           for n, x in (("q", sq), ("k", sk), ("v", sk))}
    return {**out, "cu_seqlens_q": np.arange(b + 1, dtype=np.int32) * sq,
            "cu_seqlens_k": np.arange(b + 1, dtype=np.int32) * sk, "max_seqlen_q": sq, "max_seqlen_k": sk,
            "alibi_slopes": inputs["alibi_slopes"]}


def _unpacked(case: Any, out: np.ndarray, lse: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A packed output (and LSE [heads, total_q]) of a dense case in the case's layout."""
    b, sq = case.batch, case.seqlen_q
    if out.ndim == 3 and out.shape[0] == b * sq:
        out = out.reshape(b, sq, *out.shape[1:])
    if lse is not None and lse.ndim == 2 and lse.shape[1] == b * sq:
        lse = lse.reshape(lse.shape[0], b, sq).transpose(1, 0, 2)
    return out, lse


def _fa_options(case: Any, inputs: dict[str, Any], to: Callable, fa3: bool, dropout: bool = True) -> dict[str, Any]:
    """FlashAttention's keyword options for a case (FA3 has no dropout and no ALiBi; ``dropout``:
    whether the call takes ``dropout_p``, which the kvcache call does not)."""
    kw: dict[str, Any] = {"softmax_scale": case.softmax_scale, "causal": case.causal}
    if dropout and not fa3:
        kw["dropout_p"] = 0.0
    if case.fp8:  # (FA3's FP8: float32 [batch, heads_kv] descales; FA2 has no FP8)
        kw.update({n: to(inputs[n]) for n in ("q_descale", "k_descale", "v_descale")})
    if case.window != (-1, -1):
        kw["window_size"] = tuple(case.window)
    if case.softcap:
        kw["softcap"] = case.softcap
    if case.alibi and not fa3:
        kw["alibi_slopes"] = to(np.asarray(inputs["alibi_slopes"], np.float32))
    return kw


def _fa_call(fn, case, inputs, caps, to, fa3=False):
    """FlashAttention-2's ``flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size,
    softcap, alibi_slopes, deterministic, return_attn_probs)``: BSHD torch tensors, bottom-right
    causal, ``return_attn_probs=True`` giving ``(out, softmax_lse, S_dmask)`` (natural-log LSE
    [batch, heads, seqlen_q]; the +inf FA2 writes for a row that sees no key read as -inf).
    FlashAttention-3's (``flash_attn_interface``) is the same without ``dropout_p`` and ALiBi, its
    result ``out`` or ``(out, lse)``."""
    if case.kind in ("varlen", "paged"):
        raise Unsupported(f"flash_attn_func takes dense batches (the -varlen and -kvcache conventions take "
                          f"{case.kind} cases)")
    kw = _fa_options(case, inputs, to, fa3)
    if caps.lse and _takes(fn, "return_attn_probs"):
        kw["return_attn_probs"] = True
    res = _call_bound(fn, tuple(to(inputs[n]) for n in ("q", "k", "v")), kw)
    out, lse = _split(res, caps.lse, "flash_attn_func")
    return host_array(out, "output"), (None if lse is None else _blind_lse(case, lse))


def _fa_varlen_call(fn, case, inputs, caps, to, fa3=False):
    """FlashAttention-2's ``flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
    max_seqlen_k, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, ...,
    return_attn_probs)``: packed ``[total, heads, head_dim]`` torch tensors, int32 cu_seqlens,
    bottom-right causal per sequence; LSE ``[heads, total_q]``. Dense cases go in as a batch of
    equal sequences. FA3's: the same without ``dropout_p`` and ALiBi."""
    if case.kind == "paged":
        raise Unsupported("flash_attn_varlen_func with a paged cache is not judged (the -kvcache conventions "
                          "take paged cases)")
    x = inputs if case.kind == "varlen" else _packed(case, inputs)
    kw = _fa_options(case, inputs, to, fa3)
    if caps.lse and _takes(fn, "return_attn_probs"):
        kw["return_attn_probs"] = True
    args = (to(x["q"]), to(x["k"]), to(x["v"]), to(x["cu_seqlens_q"]), to(x["cu_seqlens_k"]), x["max_seqlen_q"],
            x["max_seqlen_k"])
    out, lse = _split(_call_bound(fn, args, kw), caps.lse, "flash_attn_varlen_func")
    out = host_array(out, "output")
    lse = None if lse is None else host_array(lse, "lse")
    if case.kind != "varlen":
        out, lse = _unpacked(case, out, lse)
    return out, (None if lse is None else _blind_lse(case, lse))


def _fa_kvcache_call(fn, case, inputs, caps, to, fa3=False):
    """FlashAttention-2's ``flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=, block_table=,
    softmax_scale=, causal=, window_size=, softcap=, alibi_slopes=, return_softmax_lse=True)``
    without appending: q ``[batch, seqlen_q, heads, head_dim]``; a dense cache ``[batch, seqlen_k,
    heads_kv, head_dim]`` or a paged one ``[num_pages, page_size, heads_kv, head_dim]`` with an int32
    block table and ``cache_seqlens``; returns ``(out, lse)``. FA3's names the block table
    ``page_table``, has no ALiBi and returns ``(out, lse, out_accum, lse_accum)``."""
    if case.kind == "varlen":
        raise Unsupported("flash_attn_with_kvcache takes a batch of equal query lengths (varlen batches go "
                          "through the -varlen conventions)")
    kw = _fa_options(case, inputs, to, fa3, dropout=False)
    if caps.lse:
        kw["return_softmax_lse"] = True
    if case.kind == "paged":
        k, v = to(inputs["k_cache"]), to(inputs["v_cache"])
        kw["cache_seqlens"] = to(inputs["cache_seqlens"])
        kw["page_table" if fa3 else "block_table"] = to(inputs["block_table"])
    else:
        k, v = to(inputs["k"]), to(inputs["v"])
    out, lse = _split(_call_bound(fn, (to(inputs["q"]), k, v), kw), caps.lse, "flash_attn_with_kvcache")
    return host_array(out, "output"), (None if lse is None else _blind_lse(case, lse))


def _flashinfer_options(case: Any) -> dict[str, Any]:
    """FlashInfer's keyword options: ``causal``, ``sm_scale``, ``window_left`` (keys
    ``i + kv_len - qo_len - window_left .. `` are seen: FA2's left window, inclusive; FlashInfer has
    no right window), ``logits_soft_cap``."""
    kw: dict[str, Any] = {"causal": case.causal, "sm_scale": case.softmax_scale}
    if case.window[0] >= 0:
        kw["window_left"] = case.window[0]
    if case.softcap:
        kw["logits_soft_cap"] = case.softcap
    return kw


def _seq_pairs(case: Any) -> list[tuple[int, int]]:
    return list(case.seqlens) if case.kind in ("varlen", "paged") else [(case.seqlen_q, case.seqlen_k)]


def _flashinfer_reasons(case: Any) -> list[str]:
    """What FlashInfer's calls cannot express: a right window bound without causal (its masks are
    causal or a left window); causal with more queries than keys (its tests skip "qo_len > kv_len and
    causal is not supported")."""
    out = []
    if not case.causal and case.window[1] >= 0:
        out.append(f"a right window bound without causal (window {case.window})")
    if case.causal and any(a > c for a, c in _seq_pairs(case)):
        out.append("causal with more queries than keys")
    return out


LN2 = float(np.log(2.0))


def _flashinfer_call(fn, case, inputs, caps, to):
    """FlashInfer's ``single_prefill_with_kv_cache(q, k, v, causal=, sm_scale=, window_left=,
    logits_soft_cap=, return_lse=True)`` (``single_decode_with_kv_cache`` has the same options): one
    request, NHD ``[qo_len, heads, head_dim]`` torch tensors, bottom-right causal; returns ``out`` or
    ``(out, lse)`` with lse ``[qo_len, heads]`` in **base 2** (converted to natural log here). A
    batch runs request by request (varlen cases sequence by sequence)."""
    reasons = _flashinfer_reasons(case)
    if reasons:
        raise Unsupported("; ".join(reasons))
    if case.kind == "paged":
        raise Unsupported("the flashinfer convention is one request's dense K/V (paged caches go through "
                          "FlashInfer's batch wrappers: the flashinfer adapter)")
    parts = case.dense_inputs(inputs) if case.kind == "varlen" else [
        {n: inputs[n][i:i + 1] for n in ("q", "k", "v")} for i in range(case.batch)]
    outs, lses = [], []
    kw = _flashinfer_options(case)
    if caps.lse:
        kw["return_lse"] = True
    for x in parts:
        res = _call_bound(fn, tuple(to(np.ascontiguousarray(x[n][0])) for n in ("q", "k", "v")), kw)
        o, lse = _split(res, caps.lse, "the kernel")
        outs.append(host_array(o, "output")[None])
        lses.append(None if lse is None else host_array(lse, "lse"))
    out = np.concatenate([o[0] for o in outs]) if case.kind == "varlen" else np.concatenate(outs)
    if any(x is None for x in lses):
        return out, None
    lse2 = [np.asarray(x, np.float32).T for x in lses]  # [heads, qo_len] each
    lse = np.concatenate(lse2, axis=1) if case.kind == "varlen" else np.stack(lse2)
    return out, lse * np.float32(LN2)


def _xformers_bias(case: Any, fmha: Any, seqlens: tuple | None = None) -> Any:
    """xformers' attention bias for a case: ``LowerTriangularFromBottomRightMask`` (causal),
    ``LowerTriangularFromBottomRightLocalAttentionMask(left + 1)`` (causal with a left window),
    ``LocalAttentionFromBottomRightMask(left, right)`` (a window), ``BlockDiagonalMask`` /
    ``BlockDiagonalCausalFromBottomRightMask`` ``.from_seqlens`` (varlen); None when nothing is masked."""
    ab = fmha.attn_bias
    left, right = case.window
    if seqlens is not None:
        q_lens, k_lens = [a for a, _ in seqlens], [b for _, b in seqlens]
        cls = ab.BlockDiagonalCausalFromBottomRightMask if case.causal else ab.BlockDiagonalMask
        return cls.from_seqlens(q_lens, k_lens)
    if case.causal:
        if left >= 0:
            return ab.LowerTriangularFromBottomRightLocalAttentionMask(left + 1)
        return ab.LowerTriangularFromBottomRightMask()
    if (left, right) != (-1, -1):
        far = case.seqlen_q + case.seqlen_k
        return ab.LocalAttentionFromBottomRightMask(window_left=far if left < 0 else left,
                                                    window_right=far if right < 0 else right)
    return None


def _xformers_reasons(case: Any) -> list[str]:
    """What xformers' biases cannot express here: windows and ALiBi in a varlen batch, and a causal
    varlen batch with a sequence of more queries than keys (its block-diagonal bottom-right mask
    raises "Expected num_keys >= num_queries")."""
    out = []
    if case.kind == "varlen" and case.causal and any(a > c for a, c in case.seqlens):
        out.append("a causal varlen batch with more queries than keys in a sequence")
    if case.kind == "varlen" and case.window != (-1, -1):
        out.append("sliding windows in a varlen batch (not judged through xformers' block-diagonal masks)")
    if case.alibi and case.kind == "varlen":
        out.append("ALiBi in a varlen batch (a tensor bias is one batch's)")
    return out


def _xformers_call(fn, case, inputs, caps, to):
    """xformers' ``memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None)``:
    BMHK torch tensors (GQA/MQA as 5-D BMGHK, K and V expanded over each group's query heads, as
    xformers wants them); masks as the bias objects of ``xformers.ops.fmha.attn_bias`` (see
    :func:`_xformers_bias`: bottom-right, never ``LowerTriangularMask``, which is top-left); ALiBi
    as a float tensor bias (-inf where masked); a varlen batch packed as batch 1 with a
    block-diagonal bias. No LSE."""
    reasons = _xformers_reasons(case)
    if reasons:
        raise Unsupported("; ".join(reasons))
    if case.kind == "paged":
        raise Unsupported("paged KV caches (xformers' Paged* biases are not judged)")
    fmha = require("xformers.ops.fmha", "conformance of an xformers kernel")
    torch = _torch()
    rep = case.heads_q // case.heads_kv
    varlen = case.kind == "varlen"
    q, k, v = (to(inputs[n]) for n in ("q", "k", "v"))
    if varlen:
        q, k, v = q[None], k[None], v[None]
    if rep > 1:  # [B, M, G, H, K]: group g holds query heads g*rep .. g*rep+rep-1 (kv head g)
        q = q.unflatten(2, (case.heads_kv, rep))
        k, v = (t[:, :, :, None].expand(-1, -1, -1, rep, -1) for t in (k, v))
    bias = _xformers_bias(case, fmha, case.seqlens if varlen else None)
    if case.alibi:
        dense = alibi_mask(case, inputs["alibi_slopes"])
        t = to(np.ascontiguousarray(np.broadcast_to(dense[None], (case.batch, *dense.shape)))).to(q.dtype)
        bias = t.unflatten(1, (case.heads_kv, rep)) if rep > 1 else t
    out = _call_bound(fn, (q, k, v), {"attn_bias": bias, "p": 0.0, "scale": case.softmax_scale})
    out, _ = _split(out, False, "the kernel")
    if not isinstance(out, torch.Tensor):
        return host_array(out, "output"), None
    if rep > 1 and out.dim() == 5:
        out = out.flatten(2, 3)
    if varlen and out.dim() == 4 and out.shape[0] == 1:
        out = out[0]
    return from_torch(out), None


def _bshd_call(numpy: bool):
    def call(fn, case, inputs, caps, to):
        if case.kind in ("varlen", "paged"):
            raise Unsupported(f"the bshd conventions take dense batches, not {case.kind} cases")
        tx = (lambda a: a) if numpy else to
        kw: dict[str, Any] = {"causal": case.causal, "softmax_scale": case.softmax_scale}
        if case.window != (-1, -1):
            kw["window_size"] = tuple(case.window)
        if case.softcap:
            kw["softcap"] = case.softcap
        if case.alibi:
            kw["alibi_slopes"] = tx(inputs["alibi_slopes"])
        if case.fp8:
            kw.update({n: tx(inputs[n]) for n in ("q_descale", "k_descale", "v_descale")})
        out, lse = _split(_call_bound(fn, (tx(inputs["q"]), tx(inputs["k"]), tx(inputs["v"])), kw), caps.lse,
                          "the kernel")
        return host_array(out, "output"), (None if lse is None else host_array(lse, "lse"))
    return call


def _sdpa_call(fn, case, inputs, caps, to):
    """``fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False)``
    as ``torch.nn.functional.scaled_dot_product_attention``: BHSD torch tensors, top-left
    ``is_causal``; bottom-right causal, windows and ALiBi go in as an explicit mask (see
    :func:`_sdpa_arguments`). Returns out [batch, heads, seqlen_q, head_dim] (or (out, lse) when
    it declares ``lse``)."""
    args, kw = _sdpa_arguments(case, inputs, to)
    out, lse = _split(_call_bound(fn, args, kw), caps.lse, "the kernel")
    return from_torch(out.transpose(1, 2)), (None if lse is None else from_torch(lse))


def _jax_call(fn, case, inputs, caps, to):
    """``fn(query, key, value, bias=None, mask=None, *, scale, is_causal)`` as
    ``jax.nn.dot_product_attention``: BTNH jax arrays, top-left ``is_causal``; bottom-right causal
    and windows go in as an explicit mask, ALiBi as a bias (see :func:`_jax_arguments`). Returns out
    (or (out, lse) when it declares ``lse``)."""
    args, kw = _jax_arguments(case, inputs)
    out, lse = _split(_call_bound(fn, args, kw), caps.lse, "the kernel")
    return np.asarray(out), (None if lse is None else np.asarray(lse))


_FA2_CAPS = Capabilities(dtypes=("float16", "bfloat16"), max_head_dim=256, window=True, softcap=True, alibi=True,
                         lse=True)
_FA3_CAPS = Capabilities(dtypes=("float16", "bfloat16", "float8_e4m3fn"), max_head_dim=256, window=True, softcap=True,
                         lse=True)

#: convention -> (how a case's inputs become a call, the default capabilities, extra reasons a case is unsupported)
CONVENTIONS: dict[str, tuple[Callable, Capabilities]] = {
    # fn(q, k, v, *, causal, softmax_scale[, window_size=(l, r)][, softcap=][, alibi_slopes=][, q_descale=,
    # k_descale=, v_descale= for FP8]) with BSHD torch tensors (bottom-right causal) -> out or (out, lse): the minimum
    "bshd": (_bshd_call(numpy=False), Capabilities()),
    # the same with NumPy arrays (ml_dtypes bfloat16) in and out
    "bshd-numpy": (_bshd_call(numpy=True), Capabilities()),
    "fa2": (_fa_call, _FA2_CAPS),
    "fa2-varlen": (_fa_varlen_call, dataclasses.replace(_FA2_CAPS, varlen=True)),
    # (FA2's paged caches take pages of a multiple of 256 slots: declare page_size_multiple=1 for a kernel that
    # takes any page size)
    "fa2-kvcache": (_fa_kvcache_call, dataclasses.replace(_FA2_CAPS, paged=True, page_size_multiple=256)),
    # FlashAttention-3's (flash_attn_interface): no dropout, no ALiBi, FP8 e4m3 with descales, any page size
    "fa3": (functools.partial(_fa_call, fa3=True), _FA3_CAPS),
    "fa3-varlen": (functools.partial(_fa_varlen_call, fa3=True), dataclasses.replace(_FA3_CAPS, varlen=True)),
    "fa3-kvcache": (functools.partial(_fa_kvcache_call, fa3=True), dataclasses.replace(_FA3_CAPS, paged=True)),
    "sdpa": (_sdpa_call, Capabilities(window=True, alibi=True)),
    "flashinfer": (_flashinfer_call, Capabilities(dtypes=("float16", "bfloat16"), max_head_dim=256, window=True,
                                                  softcap=True, lse=True, varlen=True)),
    "xformers": (_xformers_call, Capabilities(window=True, alibi=True, varlen=True)),
    "jax": (_jax_call, Capabilities(window=True, alibi=True)),
}
_CONVENTION_REASONS: dict[str, Callable[[Any], list[str]]] = {"flashinfer": _flashinfer_reasons,
                                                               "xformers": _xformers_reasons}


class CallableAdapter(Adapter):
    """A user's callable in a named convention."""

    def __init__(self, fn: Callable, convention: str, capabilities: Capabilities | dict | None):
        super().__init__()
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
        if not callable(fn):
            raise ValueError(f"kernel must be callable, got a {type(fn).__name__}")
        self.fn = fn
        self.convention = convention
        self.capabilities = Capabilities.of(capabilities, CONVENTIONS[convention][1])
        mod = getattr(fn, "__module__", None) or "?"
        self.name = f"python:{mod}.{getattr(fn, '__qualname__', type(fn).__name__)}"

    def kernel_source(self) -> str:
        try:
            path = inspect.getsourcefile(self.fn)
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
        except (TypeError, OSError):
            return f"{self.name}@unpinned (no source file)"
        return f"{self.name}@sha256:{digest}"

    def prepare(self) -> None:
        if self.convention == "jax":
            require("jax", "conformance of a JAX kernel")
        elif self.convention != "bshd-numpy":
            _torch()

    def call(self, case, inputs):
        return CONVENTIONS[self.convention][0](self.fn, case, inputs, self.capabilities, self.to)

    def gradients(self, case, inputs, dout):
        """A ``jax`` kernel's through ``jax.vjp`` (:func:`_jax_gradients`), any other's through torch
        autograd (:meth:`Adapter.gradients`)."""
        if self.convention == "jax":
            return _jax_gradients(self, self.fn, case, inputs, dout)
        return super().gradients(case, inputs, dout)


# ---- third-party packages -----------------------------------------------------------------------------


def _package_source(dist: str, module: Any, fallback: Callable | None = None) -> str:
    """``pypi:<dist>@<version>+sha256:<digest>`` of the compiled extension the distribution's RECORD
    lists (``+sha256-of-<n>-extensions:`` over all of them, by path, where it lists several: the same
    whichever of them a run happened to load). A distribution with none (pure Python, or kernels
    compiled outside it, as FlashInfer's JIT) names ``+source-sha256:<digest>`` of the Python file that
    defines the call (``fallback``, else the package's ``__init__``), so the two are never confused."""
    import importlib.metadata
    import os

    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(module, "__version__", "unknown")
    try:
        exts = sorted({(str(f), os.path.realpath(str(f.locate()))) for f in importlib.metadata.files(dist) or ()
                       if str(f).endswith((".so", ".pyd"))})
    except importlib.metadata.PackageNotFoundError:
        exts = []
    exts = [(rel, path) for rel, path in exts if os.path.isfile(path)]
    if len(exts) == 1:
        with open(exts[0][1], "rb") as fh:
            return f"pypi:{dist}@{version}+sha256:{hashlib.sha256(fh.read()).hexdigest()}"
    if exts:
        h = hashlib.sha256()
        for rel, path in exts:
            with open(path, "rb") as fh:
                data = fh.read()
            h.update(len(rel).to_bytes(8, "little") + rel.encode() + len(data).to_bytes(8, "little") + data)
        return f"pypi:{dist}@{version}+sha256-of-{len(exts)}-extensions:{h.hexdigest()}"
    try:
        path = inspect.getsourcefile(fallback) if fallback is not None else module.__file__
    except TypeError:
        path = getattr(module, "__file__", None)
    if not path:
        return f"pypi:{dist}@{version}+unpinned"
    with open(path, "rb") as fh:
        return f"pypi:{dist}@{version}+source-sha256:{hashlib.sha256(fh.read()).hexdigest()}"


class PackageAdapter(Adapter):
    """A pip package's attention calls: ``calls`` maps each case kind ("dense", "varlen", "paged") to
    (function name, convention call); the module is imported in :meth:`prepare` (a missing package
    is one line naming its ``pip install``)."""

    module_name = "?"
    dist = "?"
    calls: dict[str, tuple[str, Callable]] = {}
    devices = ("cuda",)

    def __init__(self):
        super().__init__()
        self.module: Any = None
        self.used: set[str] = set()

    def prepare(self) -> None:
        _torch()
        self.module = require(self.module_name, f"conformance of {self.name}")

    def function(self, attr: str) -> Callable:
        obj = self.module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def call(self, case, inputs):
        if self.module is None:
            self.prepare()
        kind = case.kind if case.kind in ("varlen", "paged") else "dense"
        attr, conv = self.calls[kind]
        self.used.add(attr)
        return conv(self.function(attr), case, inputs, self.capabilities, self.to, **self.call_options)

    call_options: dict[str, Any] = {}

    def kernel_source(self) -> str:
        if self.module is None:
            self.prepare()
        first = sorted(self.used)[0] if self.used else None
        return _package_source(self.dist, self.module, self.function(first) if first else None)


class FlashAttnAdapter(PackageAdapter):
    """FlashAttention-2 (``pip install flash-attn``): ``flash_attn_func`` (dense cases),
    ``flash_attn_varlen_func`` (varlen) and ``flash_attn_with_kvcache`` (paged caches; FA2's page
    size is a multiple of 256). CUDA only."""

    name = "flash-attn"
    convention = "fa2"
    module_name = "flash_attn"
    dist = "flash-attn"
    capabilities = dataclasses.replace(_FA2_CAPS, varlen=True, paged=True, page_size_multiple=256)
    calls = {"dense": ("flash_attn_func", _fa_call), "varlen": ("flash_attn_varlen_func", _fa_varlen_call),
             "paged": ("flash_attn_with_kvcache", _fa_kvcache_call)}


class FlashAttn3Adapter(PackageAdapter):
    """FlashAttention-3 (``flash_attn_interface``, built from flash-attention's ``hopper/``): the same
    three calls as FA2 without ALiBi, any page size (``page_table``), and float8_e4m3fn inputs with
    ``q_descale``/``k_descale``/``v_descale`` (bfloat16 out). CUDA (Hopper) only."""

    name = "flash-attn-3"
    convention = "fa3"
    module_name = "flash_attn_interface"
    dist = "flash-attn-3"
    capabilities = dataclasses.replace(_FA3_CAPS, varlen=True, paged=True)
    calls = {"dense": ("flash_attn_func", _fa_call), "varlen": ("flash_attn_varlen_func", _fa_varlen_call),
             "paged": ("flash_attn_with_kvcache", _fa_kvcache_call)}
    call_options = {"fa3": True}


def _flashinfer_batch_call(wrapper_name: str):
    def call(module, case, inputs, caps, to):
        """FlashInfer's batch wrappers: ``BatchPrefillWithRaggedKVCacheWrapper`` (varlen) and
        ``BatchPrefillWithPagedKVCacheWrapper`` (paged, NHD pages, ``paged_kv_indptr``/``indices``/
        ``last_page_len`` from the block table): constructed on a 128 MiB workspace, ``.plan(...)``
        with the case's options, ``.run(q, ..., return_lse=True)``; base-2 LSE ``[total_q, heads]``
        converted."""
        reasons = _flashinfer_reasons(case)
        if reasons:
            raise Unsupported("; ".join(reasons))
        torch = _torch()
        ws = torch.empty(128 << 20, dtype=torch.uint8, device=to(np.zeros(1, np.uint8)).device)
        wrapper = getattr(module, wrapper_name)(ws, "NHD")
        dtype = to(inputs["q"][:0]).dtype
        opts = _flashinfer_options(case)
        if case.kind == "varlen":
            q = to(inputs["q"])
            wrapper.plan(to(inputs["cu_seqlens_q"]), to(inputs["cu_seqlens_k"]), case.heads_q, case.heads_kv,
                         case.head_dim, q_data_type=dtype, kv_data_type=dtype, **opts)
            res = wrapper.run(q, to(inputs["k"]), to(inputs["v"]), return_lse=caps.lse)
        else:
            page = case.page_size
            counts = [-(-c // page) for _, c in case.seqlens]
            indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
            indices = np.concatenate([inputs["block_table"][i, :n] for i, n in enumerate(counts)]).astype(np.int32)
            # (FlashInfer's kv length is max(pages - 1, 0) * page_size + last_page_len: 0 for an empty sequence)
            last = np.array([c - (n - 1) * page if n else 0 for (_, c), n in zip(case.seqlens, counts)], np.int32)
            qo = np.arange(case.batch + 1, dtype=np.int32) * case.seqlen_q
            wrapper.plan(to(qo), to(indptr), to(indices), to(last), case.heads_q, case.heads_kv, case.head_dim, page,
                         q_data_type=dtype, kv_data_type=dtype, **opts)
            q = to(np.ascontiguousarray(inputs["q"]).reshape(-1, case.heads_q, case.head_dim))
            res = wrapper.run(q, (to(inputs["k_cache"]), to(inputs["v_cache"])), return_lse=caps.lse)
        out, lse = _split(res, caps.lse, wrapper_name)
        out = host_array(out, "output")
        if lse is not None:
            lse = np.asarray(host_array(lse, "lse"), np.float32).T * np.float32(LN2)  # [heads, total_q]
        if case.kind == "paged":
            out = out.reshape(case.batch, case.seqlen_q, *out.shape[1:])
            if lse is not None:
                lse = lse.reshape(case.heads_q, case.batch, case.seqlen_q).transpose(1, 0, 2)
        return out, lse
    return call


class FlashInferAdapter(PackageAdapter):
    """FlashInfer (``pip install flashinfer-python``): ``single_prefill_with_kv_cache`` request by
    request (dense cases), ``BatchPrefillWithRaggedKVCacheWrapper`` (varlen) and
    ``BatchPrefillWithPagedKVCacheWrapper`` (paged); base-2 LSE converted; windows as
    ``window_left``. Head dims of its prebuilt kernels (64, 128, 256); declare others with
    ``capabilities=``. CUDA only."""

    name = "flashinfer"
    convention = "flashinfer"
    module_name = "flashinfer"
    dist = "flashinfer-python"
    capabilities = Capabilities(dtypes=("float16", "bfloat16"), head_dims=(64, 128, 256), window=True, softcap=True,
                                lse=True, varlen=True, paged=True)
    calls = {"dense": ("single_prefill_with_kv_cache", _flashinfer_call)}

    def call(self, case, inputs):
        if self.module is None:
            self.prepare()
        if case.kind in ("varlen", "paged"):
            name = ("BatchPrefillWithRaggedKVCacheWrapper" if case.kind == "varlen"
                    else "BatchPrefillWithPagedKVCacheWrapper")
            self.used.add(name)
            return _flashinfer_batch_call(name)(self.module, case, inputs, self.capabilities, self.to)
        return super().call(case, inputs)


class XformersAdapter(PackageAdapter):
    """xformers (``pip install xformers``): ``xformers.ops.memory_efficient_attention`` with its bias
    classes (see the ``xformers`` convention). CUDA only here (its CPU operators are gone)."""

    name = "xformers"
    convention = "xformers"
    module_name = "xformers.ops"
    dist = "xformers"
    capabilities = Capabilities(window=True, alibi=True, varlen=True)
    calls = {"dense": ("memory_efficient_attention", _xformers_call),
             "varlen": ("memory_efficient_attention", _xformers_call)}


def _tree_digest(folder: str) -> str:
    """sha256 over a folder's files (each one's path relative to the folder, then its bytes, in sorted
    order; symlinked folders followed, once each; bytecode caches left out; an entry that cannot be read
    counted as such, not skipped): a kernel build's code, its extension modules included."""
    import os

    h = hashlib.sha256()
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # (a symlink loop, or a folder reached twice)
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, folder).replace(os.sep, "/").encode()
            h.update(len(rel).to_bytes(8, "little") + rel)
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                data = f"unreadable: {type(exc).__name__}".encode()
                h.update(b"\xff")  # (an unreadable entry differs from a file holding those bytes)
            h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _is_commit(rev: str | None) -> bool:
    return rev is not None and len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)


class HubAdapter(PackageAdapter):
    """A Hugging Face hub kernel through ``kernels`` (``pip install kernels``): ``hub:<org>/<repo>@<commit>``
    loads it with ``kernels.get_kernel(repo, revision=commit)`` (from the hub, or from the local cache
    when ``HF_HUB_OFFLINE=1``); ``hub:<folder>`` (a path: ``/``, ``./`` or ``~``) with
    ``kernels.get_local_kernel``. The kernel is called in FlashAttention-2's convention (its
    ``flash_attn_func``, ``flash_attn_varlen_func``, ``flash_attn_with_kvcache``, as
    ``kernels-community/flash-attn2`` exposes them).

    A hub kernel is code from the network: it is loaded only when named, and the commit it resolved
    to is printed (to stderr) before it runs. A revision that is not a 40-hex commit (``main``, a
    tag) is refused unless ``allow_unpinned`` is set, and is then reported as unpinned, never as a
    pin. ``kernel_source``: ``hf-<org>:<repo>@<commit>`` (apr's pin, e.g.
    ``hf-kernels-community:flash-attn2@<sha>``), ``hf-<org>:<repo>@<revision> (unpinned: resolved to
    <commit>)``, or ``local:<folder>@sha256:<digest of the folder's files>`` for ``hub:<folder>`` (no hub
    commit: never a pin). A kernel that ``kernels`` hands back from elsewhere (an earlier kernel of the
    same metadata id, a ``LOCAL_KERNELS`` override) is refused."""

    convention = "fa2"
    module_name = "kernels"
    dist = "kernels"
    devices = ("cpu", "cuda")
    capabilities = dataclasses.replace(_FA2_CAPS, varlen=True, paged=True, page_size_multiple=256)
    calls = FlashAttnAdapter.calls

    def __init__(self, spec: str, allow_unpinned: bool = False):
        super().__init__()
        import os

        self.spec = spec
        self.allow_unpinned = allow_unpinned
        self.folder: str | None = None
        self.repo = self.revision = None
        if spec.startswith(("/", "./", "../", "~")):
            self.folder = os.path.abspath(os.path.expanduser(spec))
        else:
            repo, _, rev = spec.partition("@")
            parts = repo.split("/")
            if len(parts) != 2 or not all(parts) or (_ and not rev):
                raise ValueError(f"a hub kernel is hub:<org>/<repo>[@<revision>] or hub:<folder>, got hub:{spec!r}")
            self.repo, self.revision = repo, rev or None
        self.name = f"hub:{spec}"
        self.commit: str | None = None
        self.digest: str | None = None
        self.path: str | None = None

    @property
    def attn_impl(self) -> str:
        """apr's name for what ran: ``flash2`` for the hub's FlashAttention-2 kernel, else the adapter's."""
        return "flash2" if self.repo == "kernels-community/flash-attn2" else self.name

    def prepare(self) -> None:
        import os
        import sys
        from pathlib import Path

        if self.module is not None:
            return
        if self.folder is None and not _is_commit(self.revision) and not self.allow_unpinned:
            raise ValueError(f"{self.name}: revision {self.revision or '(none: the default branch)'} is not a commit; "
                             f"pin one (hub:{self.repo}@<40-hex commit>) or pass --allow-unpinned (allow_unpinned=True)")
        _torch()
        kernels = require("kernels", f"the hub kernel {self.name}")
        if self.folder is not None:
            module = kernels.get_local_kernel(Path(self.folder))
        else:
            module = kernels.get_kernel(self.repo, revision=self.revision or "main")
        self.module = module
        self.path = os.path.dirname(os.path.abspath(module.__file__))
        info = next((k.repo_info for k in kernels.get_loaded_kernels() if k.module is module), None)
        commit = str(info.revision) if info is not None and getattr(info, "revision", None) is not None else None
        if commit is None:  # (a snapshot of the hub cache is named by its commit)
            parts = Path(self.path).parts
            if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts) and self.folder is None \
                    and os.environ.get("LOCAL_KERNELS") is None:
                commit = parts[parts.index("snapshots") + 1]
        self.commit = commit if _is_commit(commit) else None
        # kernels imports a kernel once per metadata id: an earlier kernel of the same id comes back as it
        # is; and LOCAL_KERNELS redirects a repo to a folder. Either way what runs is not what was named.
        if self.folder is not None and os.path.commonpath([self.path, self.folder]) != self.folder:
            why = f"the kernel already imported from {self.path} (one of the same id)"
        elif self.folder is None and self.commit is None:
            why = (f"a kernel from {self.path}, with no hub commit (a LOCAL_KERNELS override, or a kernel of the "
                   f"same id imported earlier; name a folder as hub:<folder>)")
        elif self.folder is None and _is_commit(self.revision) and self.commit != self.revision:
            why = f"commit {self.commit} from {self.path} (a kernel of the same id imported earlier)"
        else:
            why = ""
        if why:
            self.module = None
            raise ValueError(f"{self.name}: kernels handed back {why}, not the kernel named; judge it in a process "
                             f"of its own")
        where = f"commit {self.commit}" if self.commit else "no hub commit (a local folder)"
        sys.stderr.write(f"flashparity: {self.name} resolved to {where}, loaded from {self.path}\n")
        self.note(f"loaded from {self.path}")
        # (a folder's digest as it was loaded, before anything runs)
        self.digest = _tree_digest(self.path) if self.folder is not None else None

    def kernel_source(self) -> str:
        if self.module is None:
            self.prepare()
        if self.folder is not None:
            return f"local:{self.path}@sha256:{self.digest}"
        org, name = self.repo.split("/")
        if _is_commit(self.revision) and self.revision == self.commit:
            return f"hf-{org}:{name}@{self.commit}"
        return f"hf-{org}:{name}@{self.revision or 'main'} (unpinned: resolved to {self.commit})"


_PACKAGES = {"flash-attn": FlashAttnAdapter, "flash-attn-3": FlashAttn3Adapter, "flashinfer": FlashInferAdapter,
             "xformers": XformersAdapter}


def _builtin(name: str) -> Adapter | None:
    if name in ("flashparity:flash2", "flashparity:naive"):
        return FlashparityAdapter(name.split(":", 1)[1])
    if name == "torch-sdpa":
        return TorchSdpaAdapter(None)
    if name in ("jax", "jax:xla", "jax:cudnn"):
        return JaxAdapter(name.split(":", 1)[1] if ":" in name else None)
    if name in ("torch-flex", "torch-flex:compiled"):
        return TorchFlexAdapter(name.endswith(":compiled"))
    if name in _PACKAGES:
        return _PACKAGES[name]()
    if name.startswith("hub:"):
        return HubAdapter(name[4:])
    if name.startswith("torch-sdpa:"):
        backend = name.split(":", 1)[1]
        if backend not in SDPA_BACKENDS:
            raise ValueError(f"torch-sdpa backend must be one of {', '.join(SDPA_BACKENDS)}, got {backend!r}")
        return TorchSdpaAdapter(backend)
    return None


#: The built-in adapters' names.
ADAPTERS = ("flashparity:flash2", "flashparity:naive", "torch-sdpa", *(f"torch-sdpa:{b}" for b in SDPA_BACKENDS),
            "torch-flex", "torch-flex:compiled", "jax", "jax:xla", "jax:cudnn", *_PACKAGES)


#: How a Hugging Face hub kernel is named (``flashparity kernels`` lists it with the built-in adapters).
HUB_PATTERN = "hub:<org>/<repo>@<commit>"


def adapter_status(name: str) -> dict[str, Any]:
    """Whether a built-in adapter's package is installed (and its version), without importing it."""
    import importlib.metadata
    import importlib.util

    from .._optional import install_hint

    if name.startswith("flashparity:"):
        from .._core import __version__

        return {"name": name, "package": "flashparity", "installed": True, "version": __version__}
    if name.startswith("hub:"):
        module, dist, hint = "kernels", "kernels", install_hint("kernels")
    elif name in _PACKAGES:
        cls = _PACKAGES[name]
        module, dist = cls.module_name.split(".")[0], cls.dist
        hint = f"pip install {dist}" if name != "flash-attn-3" else \
            "build flash-attention's hopper/ (python setup.py install there)"
    else:
        module, dist = ("jax", "jax") if name.startswith("jax") else ("torch", "torch")
        hint = install_hint(module)
    row: dict[str, Any] = {"name": name, "package": dist, "install": hint}
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    row["installed"] = found
    if found:
        try:
            row["version"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            row["version"] = "?"
    if name.split(":")[-1] in ("efficient", "cudnn") or name in _PACKAGES:
        row["note"] = "CUDA only"
    if name.startswith("hub:"):
        row["note"] = "a Hugging Face hub kernel in FlashAttention-2's convention; --allow-unpinned for a branch or tag"
    return row


# flashparity's modules before it was layered into subpackages, and where they went: a kernel named
# by an old path (flashparity.attention:attention) gets the new one in its error.
_MOVED_MODULES = {f"flashparity.{old}": f"flashparity.{new}" for old, new in (
    ("attention", "kernels.attention"), ("serving", "kernels.serving"), ("adapters", "kernels.adapters"),
    ("conformance", "kernels.conformance"), ("kernel_parity", "kernels.kernel_parity"),
    ("modules", "models.modules"), ("report", "models.report"), ("files", "compare.files"))}


def resolve(kernel: Any, *, convention: str | None = None, capabilities: Capabilities | dict | None = None,
            allow_unpinned: bool = False) -> Adapter:
    """The adapter of ``kernel``: a built-in adapter's name (``hub:<org>/<repo>@<commit>`` for a
    Hugging Face hub kernel; ``allow_unpinned`` lets its revision be a branch or tag),
    ``"package.module:function"`` or a callable (the last two with a ``convention``)."""
    if isinstance(kernel, str):
        adapter = _builtin(kernel)
        if isinstance(adapter, HubAdapter):
            adapter.allow_unpinned = allow_unpinned
        if adapter is not None:
            if convention is not None and convention != adapter.convention:
                raise ValueError(f"{kernel} has its own convention ({adapter.convention}); do not pass convention=")
            if capabilities is not None:
                adapter.capabilities = Capabilities.of(capabilities, adapter.capabilities)
            return adapter
        if ":" not in kernel or kernel.startswith(":") or kernel.endswith(":"):
            raise ValueError(f"kernel must be a built-in adapter ({', '.join(ADAPTERS)}), 'package.module:function' "
                             f"or a callable, got {kernel!r}")
        module, _, attr = kernel.partition(":")
        try:
            obj: Any = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):  # (the module imports a missing package)
                raise
            moved = _MOVED_MODULES.get(module)
            hint = f" ({module} moved to {moved} when the package was layered)" if moved else ""
            raise ValueError(f"cannot import module {module!r} (named by {kernel!r}): no module named "
                             f"{exc.name!r}{hint}") from None
        except ImportError:
            raise
        except Exception as exc:  # (a SyntaxError or a crash while the module runs: not ours to raise)
            raise ValueError(f"importing module {module!r} (named by {kernel!r}) failed: "
                             f"{type(exc).__name__}: {exc}") from None
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ValueError(f"module {module!r} has no {attr!r}") from None
        kernel = obj
    if convention is None:
        raise ValueError(f"a callable kernel needs convention= (one of {', '.join(CONVENTIONS)})")
    return CallableAdapter(kernel, convention, capabilities)
