"""Adapters that run an attention kernel on a conformance case (:mod:`flashparity.conformance`).

An adapter takes a case's inputs (BSHD NumPy arrays), calls the kernel in its own calling
convention (layout, causal alignment, argument names, LSE base) and hands back ``(out, lse)`` in
flashparity's: out [batch, seqlen_q, heads_q, head_dim] in q's dtype, lse [batch, heads_q,
seqlen_q] natural log, or None. Each adapter declares what it supports (:class:`Capabilities`); a
case outside that is ``unsupported`` with the reasons, as xformers' ops answer
``not_supported_reasons``. Optional packages (torch) load when an adapter first runs and fail
with one line naming the ``pip install``.

Built-in adapters (:data:`ADAPTERS`): ``flashparity:flash2`` and ``flashparity:naive`` (this
package's kernels, through the same path as any other); ``torch-sdpa`` (PyTorch's
``scaled_dot_product_attention``, backend chosen by PyTorch) and ``torch-sdpa:<backend>`` with
``math``, ``flash``, ``efficient`` or ``cudnn`` forced through ``torch.nn.attention.sdpa_kernel``.

Conventions of a user's callable (:data:`CONVENTIONS`), each documented where it is defined:
``bshd``, ``bshd-numpy``, ``fa2`` and ``sdpa``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._optional import require

__all__ = ["Capabilities", "Unsupported", "Adapter", "ADAPTERS", "CONVENTIONS", "resolve", "adapter_status",
           "host_array"]


class Unsupported(NotImplementedError):
    """The kernel does not support this case (a verdict of ``unsupported``, not a failure)."""


@dataclass(frozen=True)
class Capabilities:
    """What a kernel supports. ``dtypes``: among float32, float16, bfloat16; ``max_head_dim`` (None:
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
            known = ("float32", "float16", "bfloat16")
            if isinstance(names, str) or not all(isinstance(n, str) and n in known for n in names):
                raise ValueError(f"capabilities['dtypes'] must be a list of {', '.join(known)}, got {names!r}")
            value["dtypes"] = tuple(names)
        for key in ("gqa", "causal", "window", "softcap", "alibi", "lse", "strided"):
            if key in value and not isinstance(value[key], bool):
                raise ValueError(f"capabilities[{key!r}] must be true or false, got {value[key]!r}")
        for key in ("max_head_dim", "head_dim_multiple"):
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
        return out


class Adapter:
    """A kernel and its calling convention. Subclasses set ``name``, ``convention``,
    ``capabilities`` and implement :meth:`call` (``kernel_source`` for provenance)."""

    name = "?"
    convention = "?"
    capabilities = Capabilities()

    def __init__(self):
        self.notes: list[str] = []

    def prepare(self) -> None:
        """Import what the adapter needs (before any case runs: a missing package is one line, not
        a failed case)."""

    def not_supported_reasons(self, case: Any) -> list[str]:
        return self.capabilities.reasons(case)

    def run(self, case: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
        """(out, lse or None) for the case's inputs, in flashparity's layout."""
        if case.kind in ("strided", "stride0") and not self.capabilities.strided:
            inputs = {**inputs, **{n: np.ascontiguousarray(inputs[n]) for n in ("q", "k", "v")}}
            note = f"{self.name} takes contiguous inputs only: strided cases ran on contiguous copies"
            if note not in self.notes:
                self.notes.append(note)
        out, lse = self.call(case, inputs)
        return out, (lse if self.capabilities.lse else None)

    def call(self, case: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
        raise NotImplementedError

    def kernel_source(self) -> str:
        return self.name


# ---- torch conversions --------------------------------------------------------------------------------


def _torch():
    return require("torch", "conformance of a torch kernel")


def to_torch(x: np.ndarray):
    """A NumPy array (ml_dtypes bfloat16 included; any non-negative strides, stride 0 too) as a
    torch tensor viewing the same memory: non-contiguous inputs stay non-contiguous."""
    torch = _torch()
    bf16 = x.dtype.name == "bfloat16"
    with warnings.catch_warnings():  # (broadcast views are read-only; kernels do not write their inputs)
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(x.view(np.uint16) if bf16 else x)
    return t.view(torch.bfloat16) if bf16 else t


def from_torch(t: Any) -> np.ndarray:
    torch = _torch()
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


def visible(case: Any) -> np.ndarray:
    """[seqlen_q, seqlen_k] bool: which keys each query sees (bottom-right causal and window)."""
    i = np.arange(case.seqlen_q)[:, None] + case.seqlen_k - case.seqlen_q
    j = np.arange(case.seqlen_k)[None, :]
    left, right = case.window
    if case.causal:
        right = 0 if right < 0 else min(right, 0)
    ok = np.ones((case.seqlen_q, case.seqlen_k), bool)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    return ok


# ---- built-in adapters --------------------------------------------------------------------------------


class FlashparityAdapter(Adapter):
    """flashparity's own kernels through :func:`flashparity.attention` (the ``bshd-numpy`` path)."""

    convention = "bshd-numpy"

    def __init__(self, impl: str):
        super().__init__()
        self.impl = impl
        self.name = f"flashparity:{impl}"
        self.capabilities = Capabilities(max_head_dim=256 if impl == "flash2" else None, window=True, softcap=True,
                                         alibi=True, lse=True)

    def call(self, case, inputs):
        from .attention import attention

        return attention(inputs["q"], inputs["k"], inputs["v"], impl=self.impl, causal=case.causal, window=case.window,
                         softcap=case.softcap, alibi_slopes=inputs["alibi_slopes"], softmax_scale=case.softmax_scale,
                         return_lse=True)

    def kernel_source(self) -> str:
        from ._build import kernel_source

        return kernel_source(self.impl)


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
        seen = visible(case)
        if case.alibi:
            bias = alibi_bias(case, inputs["alibi_slopes"])
            mask = np.where(seen[None], bias, -np.inf).astype(np.float32)[None]  # [1, heads_q, sq, sk]
            kw["attn_mask"] = to(mask).to(q.dtype)
        else:
            kw["attn_mask"] = to(seen)
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

        args, kw = _sdpa_arguments(case, inputs, to_torch)
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
        q, k, v = (to_torch(inputs[n]).transpose(1, 2) for n in ("q", "k", "v"))
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

            block_mask = create_block_mask(mask_mod, None, None, sq, sk, device="cpu")
        score_mod = None
        if case.softcap or case.alibi:
            cap = float(case.softcap)
            slopes = torch.from_numpy(np.asarray(inputs["alibi_slopes"], np.float32)) if case.alibi else None

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


# ---- a user's callable ----------------------------------------------------------------------------------


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


def _split(result: Any, want_lse: bool, what: str) -> tuple[Any, Any]:
    if isinstance(result, (tuple, list)):
        if not result:
            raise TypeError(f"{what} returned an empty tuple")
        return result[0], (result[1] if want_lse and len(result) > 1 else None)
    return result, None


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
        return CONVENTIONS[self.convention][0](self.fn, case, inputs, self.capabilities)


def _bshd_call(to: Callable[[np.ndarray], Any], back: Callable[[Any], np.ndarray]):
    def call(fn, case, inputs, caps):
        kw: dict[str, Any] = {"causal": case.causal, "softmax_scale": case.softmax_scale}
        if case.window != (-1, -1):
            kw["window_size"] = tuple(case.window)
        if case.softcap:
            kw["softcap"] = case.softcap
        if case.alibi:
            kw["alibi_slopes"] = to(inputs["alibi_slopes"])
        out, lse = _split(_call_bound(fn, (to(inputs["q"]), to(inputs["k"]), to(inputs["v"])), kw), caps.lse, "the kernel")
        return back(out), (None if lse is None else back(lse))
    return call


def _fa2_call(fn, case, inputs, caps):
    """FlashAttention-2's ``flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size,
    softcap, alibi_slopes, deterministic, return_attn_probs)``: BSHD torch tensors, bottom-right
    causal, ``return_attn_probs=True`` giving ``(out, softmax_lse, S_dmask)`` (natural-log LSE
    [batch, heads, seqlen_q]). FA2 writes +inf as the LSE of a row that sees no key (its kernels'
    ``sum == 0 ? INFINITY``); the convention reads that as the -inf of an empty sum."""
    kw: dict[str, Any] = {"dropout_p": 0.0, "softmax_scale": case.softmax_scale, "causal": case.causal}
    if case.window != (-1, -1):
        kw["window_size"] = tuple(case.window)
    if case.softcap:
        kw["softcap"] = case.softcap
    if case.alibi:
        kw["alibi_slopes"] = to_torch(inputs["alibi_slopes"])
    if caps.lse:
        kw["return_attn_probs"] = True
    out, lse = _split(_call_bound(fn, tuple(to_torch(inputs[n]) for n in ("q", "k", "v")), kw), caps.lse,
                      "flash_attn_func")
    if lse is not None:
        lse = np.array(host_array(lse, "lse"))
        blind = ~visible(case).any(axis=-1)  # [seqlen_q]
        if lse.ndim == 3 and lse.shape[-1] == case.seqlen_q and blind.any():
            rows = lse[:, :, blind]
            lse[:, :, blind] = np.where(np.isposinf(rows), -np.inf, rows)
    return host_array(out, "output"), lse


def _sdpa_call(fn, case, inputs, caps):
    """``fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False)``
    as ``torch.nn.functional.scaled_dot_product_attention``: BHSD torch tensors, top-left
    ``is_causal``; bottom-right causal, windows and ALiBi go in as an explicit mask (see
    :func:`_sdpa_arguments`). Returns out [batch, heads, seqlen_q, head_dim] (or (out, lse) when
    it declares ``lse``)."""
    args, kw = _sdpa_arguments(case, inputs, to_torch)
    out, lse = _split(_call_bound(fn, args, kw), caps.lse, "the kernel")
    return from_torch(out.transpose(1, 2)), (None if lse is None else from_torch(lse))


def _jax_call(fn, case, inputs, caps):
    """``fn(query, key, value, bias=None, mask=None, *, scale, is_causal)`` as
    ``jax.nn.dot_product_attention``: BTNH jax arrays, top-left ``is_causal``; bottom-right causal
    and windows go in as an explicit mask, ALiBi as a bias (see :func:`_jax_arguments`). Returns out
    (or (out, lse) when it declares ``lse``)."""
    args, kw = _jax_arguments(case, inputs)
    out, lse = _split(_call_bound(fn, args, kw), caps.lse, "the kernel")
    return np.asarray(out), (None if lse is None else np.asarray(lse))


#: convention -> (how a case's inputs become a call, the default capabilities)
CONVENTIONS: dict[str, tuple[Callable, Capabilities]] = {
    # fn(q, k, v, *, causal, softmax_scale[, window_size=(l, r)][, softcap=][, alibi_slopes=]) with
    # BSHD torch tensors (bottom-right causal) -> out or (out, lse): the minimum
    "bshd": (_bshd_call(lambda x: to_torch(x), lambda x: host_array(x, "output")), Capabilities()),
    # the same with NumPy arrays (ml_dtypes bfloat16) in and out
    "bshd-numpy": (_bshd_call(lambda x: x, lambda x: host_array(x, "output")), Capabilities()),
    "fa2": (_fa2_call, Capabilities(dtypes=("float16", "bfloat16"), max_head_dim=256, window=True, softcap=True,
                                    alibi=True, lse=True)),
    "sdpa": (_sdpa_call, Capabilities(window=True, alibi=True)),
    "jax": (_jax_call, Capabilities(window=True, alibi=True)),
}


def _builtin(name: str) -> Adapter | None:
    if name in ("flashparity:flash2", "flashparity:naive"):
        return FlashparityAdapter(name.split(":", 1)[1])
    if name == "torch-sdpa":
        return TorchSdpaAdapter(None)
    if name in ("jax", "jax:xla", "jax:cudnn"):
        return JaxAdapter(name.split(":", 1)[1] if ":" in name else None)
    if name in ("torch-flex", "torch-flex:compiled"):
        return TorchFlexAdapter(name.endswith(":compiled"))
    if name.startswith("torch-sdpa:"):
        backend = name.split(":", 1)[1]
        if backend not in SDPA_BACKENDS:
            raise ValueError(f"torch-sdpa backend must be one of {', '.join(SDPA_BACKENDS)}, got {backend!r}")
        return TorchSdpaAdapter(backend)
    return None


#: The built-in adapters' names.
ADAPTERS = ("flashparity:flash2", "flashparity:naive", "torch-sdpa", *(f"torch-sdpa:{b}" for b in SDPA_BACKENDS),
            "torch-flex", "torch-flex:compiled", "jax", "jax:xla", "jax:cudnn")


def adapter_status(name: str) -> dict[str, Any]:
    """Whether a built-in adapter's package is installed (and its version), without importing it."""
    import importlib.metadata
    import importlib.util

    from ._optional import install_hint

    if name.startswith("flashparity:"):
        from ._core import __version__

        return {"name": name, "package": "flashparity", "installed": True, "version": __version__}
    module, dist = ("jax", "jax") if name.startswith("jax") else ("torch", "torch")
    row: dict[str, Any] = {"name": name, "package": dist, "install": install_hint(module)}
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
    if name.split(":")[-1] in ("efficient", "cudnn"):
        row["note"] = "CUDA backend"
    return row


def resolve(kernel: Any, *, convention: str | None = None, capabilities: Capabilities | dict | None = None) -> Adapter:
    """The adapter of ``kernel``: a built-in adapter's name, ``"package.module:function"`` or a
    callable (the last two with a ``convention``)."""
    if isinstance(kernel, str):
        adapter = _builtin(kernel)
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
            raise ValueError(f"cannot import module {module!r} (named by {kernel!r}): no module named "
                             f"{exc.name!r}") from None
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
