"""Conformance of any attention kernel to the float64 oracle: ``fp.conformance(kernel, ...)``.

A suite of cases (:func:`suite_cases`) learned from the kernel projects' own tests (head dims, odd
sequence lengths, MHA/GQA/MQA, causal, windows, softcap, ALiBi, fully masked rows, garbage in keys
no row sees, extreme logits, strided and stride-0 inputs, determinism, varlen batches, paged caches,
FP8 with descales) runs through an adapter (:mod:`flashparity.kernels.adapters`: built-in kernels, PyTorch
SDPA and FlexAttention, JAX, FlashAttention-2/3, FlashInfer, xformers, Hugging Face hub kernels, or
a user's callable in a named calling convention). Each case's output is judged with
:func:`flashparity.parity`'s exact statistics against a float64 run of the naive kernel on the same
rounded inputs (the gold; for FP8, on the values they stand for), relative to a baseline:

The baseline's error is the larger of the naive kernel's in the case's dtype (float32 sums, one
rounding) and that of attention as FlashAttention-2 computes it in that dtype: float32 scores, the
probabilities rounded to the dtype for the P·V product, as FA2 feeds them to its tensor cores (for
FP8, rounded to FP8, as FlashAttention-3 does). FA2's and FA3's own tests hold their kernels to a
reference that also rounds the scores (``attention_ref(upcast=False)``), which near ±1e4 would let
any kernel pass the extreme cases:

* max rule (FlashAttention-2's): ``max|out - gold| <= 2 * max|baseline - gold| + 1e-5``;
* mean rule (FlashAttention-3's): ``mean|out - gold| <= 1.5 * mean|baseline - gold| + 1e-6``;
* LSE, where the kernel returns one: ``max|lse - gold_lse| <= 2 * max|baseline_lse - gold_lse| + 1e-5``
  (equal infinities, the -inf of a fully masked row, are equal);
* correlation: ``cosine(out, gold) >= 0.99 * cosine(baseline, gold)``;
* no NaN or infinity where the gold is finite, and the output's shape and dtype.

Every case reports each rule's ratio (error / bound: at most 1 passes), not only the verdict. A
case outside what the adapter supports is ``unsupported`` with the reason: listed, never a failure.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from .._optional import require
from .adapters import host_array
from .attention import alibi_slopes, attention
from ..parity import parity

__all__ = ["Case", "CaseResult", "ConformanceReport", "suite_cases", "conformance", "prepare_adapter", "SUITES", "KINDS",
           "MAX_RULE_FACTOR", "MAX_RULE_EPS", "MEAN_RULE_FACTOR", "MEAN_RULE_EPS", "COSINE_FRACTION"]

MAX_RULE_FACTOR, MAX_RULE_EPS = 2.0, 1e-5
MEAN_RULE_FACTOR, MEAN_RULE_EPS = 1.5, 1e-6
COSINE_FRACTION = 0.99

#: What a case exercises beyond its shape and options.
KINDS = {
    "plain": "random inputs",
    "masked-rows": "rows that see no key (causal with seqlen_q > seqlen_k): output 0 and LSE -inf, as FA2",
    "poisoned": "NaN and inf in keys that the first rows cannot see: those rows must be bit-identical to a clean run",
    "extreme": "logits near ±1e4",
    "strided": "non-contiguous q, k and v (a slice of a wider head dimension, in heads-major memory)",
    "stride0": "k and v broadcast over their heads (stride 0, as from expand)",
    "determinism": "the same call twice must give the same bits",
    "varlen": "a packed batch of sequences of different lengths (cu_seqlens), each masked bottom-right on its own",
    "paged": "a paged KV cache (shuffled pages, a block table, each sequence's own length); unused slots and "
             "pages hold NaN and inf",
}
DTYPES = ("float32", "float16", "bfloat16")
#: FP8 inputs with FlashAttention-3's descales (float32 [batch, heads_kv] for q, k and v): asked for by
#: name (``dtypes=[..., "float8_e4m3fn"]``); the output is bfloat16.
FP8_DTYPES = ("float8_e4m3fn", "float8_e5m2")
ALL_DTYPES = DTYPES + FP8_DTYPES
DESCALES = ("q_descale", "k_descale", "v_descale")


@dataclass(frozen=True)
class Case:
    """One conformance case. Layout BSHD; ``causal`` and ``window=(left, right)`` are bottom-right
    aligned (FlashAttention-2 >= 2.1): query i sees key j iff
    ``i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right`` (-1: unbounded).

    ``varlen`` and ``paged`` cases carry ``seqlens``, one ``(seqlen_q, seqlen_k)`` pair a sequence
    (``batch``, ``seqlen_q`` and ``seqlen_k`` are then the count and the longest); each sequence is
    masked on its own lengths. A varlen case's q is packed ``[total_q, heads_q, head_dim]`` (its
    output too, its LSE ``[heads_q, total_q]``, as FlashAttention-2's varlen call); a paged case's q
    is ``[batch, seqlen_q, ...]`` (every sequence has the same seqlen_q, as ``flash_attn_with_kvcache``)
    over a cache of ``page_size``-slot pages."""

    dtype: str = "float32"
    batch: int = 1
    seqlen_q: int = 64
    seqlen_k: int = 64
    heads_q: int = 4
    heads_kv: int = 4
    head_dim: int = 64
    causal: bool = False
    window: tuple[int, int] = (-1, -1)
    softcap: float = 0.0
    alibi: bool = False
    kind: str = "plain"
    seed: int = 0
    seqlens: tuple[tuple[int, int], ...] = ()
    page_size: int = 0

    def __post_init__(self):
        if self.dtype not in ALL_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(ALL_DTYPES)}, got {self.dtype!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("batch", "seqlen_q", "seqlen_k", "heads_q", "heads_kv", "head_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.kind in ("varlen", "paged"):
            pairs = self.seqlens
            if not isinstance(pairs, (tuple, list)) or not pairs or not all(
                    isinstance(p, (tuple, list)) and len(p) == 2 and all(
                        not isinstance(x, bool) and isinstance(x, (int, np.integer)) and x >= 0 for x in p)
                    for p in pairs):
                raise ValueError(f"a {self.kind} case's seqlens must be (seqlen_q, seqlen_k) pairs of integers >= 0, "
                                 f"got {pairs!r}")
            pairs = tuple((int(a), int(b)) for a, b in pairs)
            if not any(a for a, _ in pairs) or not any(b for _, b in pairs):
                raise ValueError(f"a {self.kind} case needs a query and a key somewhere, got seqlens {pairs!r}")
            object.__setattr__(self, "seqlens", pairs)
            object.__setattr__(self, "batch", len(pairs))
            object.__setattr__(self, "seqlen_q", max(a for a, _ in pairs))
            object.__setattr__(self, "seqlen_k", max(b for _, b in pairs))
            if self.kind == "paged":
                if len({a for a, _ in pairs}) != 1:
                    raise ValueError(f"a paged case's sequences share one seqlen_q (as flash_attn_with_kvcache), "
                                     f"got {pairs!r}")
                if isinstance(self.page_size, bool) or not isinstance(self.page_size, int) or self.page_size < 1:
                    raise ValueError(f"a paged case's page_size must be an integer >= 1, got {self.page_size!r}")
            elif self.page_size:
                raise ValueError(f"page_size is for paged cases, got {self.page_size!r} for a varlen case")
        elif self.seqlens or self.page_size:
            raise ValueError(f"seqlens and page_size are for varlen and paged cases, not {self.kind}")
        if self.dtype in FP8_DTYPES and self.kind not in ("plain", "masked-rows", "determinism", "varlen", "paged"):
            raise ValueError(f"an FP8 case is plain, masked-rows, determinism, varlen or paged, not {self.kind} "
                             f"(its values would overflow the format, or lose their layout when quantized)")
        if self.heads_q % self.heads_kv:
            raise ValueError(f"heads_q ({self.heads_q}) must be a multiple of heads_kv ({self.heads_kv})")
        w = self.window
        if not isinstance(w, (tuple, list)) or len(w) != 2 or any(
                isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < -1 for x in w):
            raise ValueError(f"window must be (left, right), integers >= -1, got {w!r}")
        object.__setattr__(self, "window", (int(w[0]), int(w[1])))  # (a tuple: hashable, equal to its twin)
        if self.kind == "masked-rows" and not (self.causal and self.seqlen_q > self.seqlen_k):
            raise ValueError("a masked-rows case is causal with seqlen_q > seqlen_k")
        if self.kind == "poisoned" and not (self.causal and self.seqlen_q <= self.seqlen_k and self.seqlen_q > 1):
            raise ValueError("a poisoned case is causal with 1 < seqlen_q <= seqlen_k")

    def __str__(self) -> str:
        return self.name

    def check(self, kernel: Any, *, convention: str | None = None, capabilities: dict | None = None,
              device: str = "cpu", backward: bool = False) -> "CaseResult":
        """Run this case through ``kernel`` (anything :func:`conformance` takes) and judge it: raises
        ``AssertionError`` with the verdict's reason, statistics and ratios when it fails or raises;
        under pytest an unsupported case is skipped with its reason. ``backward=True``: its gradients
        are judged too (:func:`run_backward`), a failed or raising backward raises, an unsupported
        one is skipped with its reason. Returns the :class:`CaseResult` (for a test suite adopting
        the cases: ``case.check(my_attention, convention="bshd")``)."""
        import sys

        if not isinstance(backward, bool):
            raise TypeError(f"backward must be a bool, got {backward!r}")
        adapter = prepare_adapter(kernel, convention=convention, capabilities=capabilities, device=device)
        result = run_case(adapter, self, backward)
        what, text = result.outcome()
        if what == "fail":
            raise AssertionError(text)
        if what == "skip" and "pytest" in sys.modules:
            import pytest

            pytest.skip(text)
        return result

    @property
    def heads(self) -> str:
        """mha, gqa or mqa."""
        return "mha" if self.heads_q == self.heads_kv else "mqa" if self.heads_kv == 1 else "gqa"

    @property
    def features(self) -> tuple[str, ...]:
        """What the case exercises: its heads kind, its options and its kind (the summary's rows)."""
        f = [self.heads]
        if self.causal:
            f.append("causal")
        if self.window != (-1, -1):
            f.append("window")
        if self.softcap:
            f.append("softcap")
        if self.alibi:
            f.append("alibi")
        if self.kind != "plain":
            f.append(self.kind)
        return tuple(f)

    @property
    def name(self) -> str:
        parts = [self.dtype, f"b{self.batch}", f"q{self.seqlen_q}", f"k{self.seqlen_k}",
                 f"h{self.heads_q}x{self.heads_kv}", f"d{self.head_dim}"]
        if self.causal:
            parts.append("causal")
        if self.window != (-1, -1):
            parts.append(f"window{self.window[0]},{self.window[1]}")
        if self.softcap:
            parts.append(f"softcap{self.softcap:g}")
        if self.alibi:
            parts.append("alibi")
        if self.kind == "varlen":
            parts[1:4] = ["seqs" + "_".join(f"{a}x{b}" for a, b in self.seqlens)]
        elif self.kind == "paged":
            parts[1:4] = [f"q{self.seqlen_q}", "k" + "_".join(str(b) for _, b in self.seqlens), f"page{self.page_size}"]
        if self.kind != "plain":
            parts.append(self.kind)
        return "-".join(parts)

    @property
    def softmax_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    @property
    def poisoned_keys(self) -> int:
        """How many trailing keys a poisoned case fills with garbage (rows below seqlen_q - this
        count cannot see them)."""
        return min(3, self.seqlen_q - 1)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The output's shape: ``[batch, seqlen_q, heads_q, head_dim]``, ``[total_q, heads_q, head_dim]``
        for a varlen case."""
        if self.kind == "varlen":
            return (sum(a for a, _ in self.seqlens), self.heads_q, self.head_dim)
        return (self.batch, self.seqlen_q, self.heads_q, self.head_dim)

    @property
    def lse_shape(self) -> tuple[int, ...]:
        """The LSE's shape: ``[batch, heads_q, seqlen_q]``, ``[heads_q, total_q]`` for a varlen case."""
        if self.kind == "varlen":
            return (self.heads_q, sum(a for a, _ in self.seqlens))
        return (self.batch, self.heads_q, self.seqlen_q)

    def sequences(self) -> list["Case | None"]:
        """Each sequence of a varlen or paged case as a dense case of its own (batch 1, its own lengths);
        None for an empty sequence (no query or no key: its rows, if any, see no key)."""
        return [dataclasses.replace(self, kind="plain", seqlens=(), page_size=0, batch=1, seqlen_q=a, seqlen_k=b)
                if a and b else None for a, b in self.seqlens]

    def _per_sequence(self, inputs: dict[str, Any], run: Callable[["Case", dict], Any],
                      empty: Callable[[int], Any]) -> list[Any]:
        """run(sub-case, its dense inputs) for each sequence; empty(seqlen_q) for an empty one."""
        return [run(c, x) if c is not None else empty(a)
                for (a, _), c, x in zip(self.seqlens, self.sequences(), self.dense_inputs(inputs))]

    def blind_rows(self) -> np.ndarray:
        """Which output rows see no key (their output is 0, their LSE -inf, as FlashAttention-2 gives):
        bool over the output's leading axes, ``[batch, seqlen_q]`` (``[total_q]`` for varlen)."""
        from .adapters import visible

        if self.kind in ("varlen", "paged"):
            rows = [np.ones(a, bool) if c is None else ~visible(c).any(axis=-1)
                    for (a, _), c in zip(self.seqlens, self.sequences())]
            return np.concatenate(rows) if self.kind == "varlen" else np.stack(rows)
        return np.broadcast_to(~visible(self).any(axis=-1), (self.batch, self.seqlen_q))

    def inputs(self) -> dict[str, Any]:
        """Seeded q, k, v ([batch, seqlen, heads, head_dim] NumPy arrays in the case's dtype; views
        for the strided and stride-0 kinds) and ALiBi slopes (float32 [heads_q]) or None. A varlen
        case's q, k and v are packed, with int32 ``cu_seqlens_q``/``cu_seqlens_k`` and
        ``max_seqlen_q``/``max_seqlen_k``; a paged case has ``k_cache``/``v_cache``
        ``[num_pages, page_size, heads_kv, head_dim]`` (pages in shuffled order, one page no sequence
        uses; the slots past each sequence's length and that page hold NaN and ±inf), an int32
        ``block_table`` ``[batch, max_pages]`` (entries past a sequence's pages name the unused page)
        and int32 ``cache_seqlens``. An FP8 case's inputs are float32 values divided by seeded
        descales in [0.5, 2) (``q_descale``, ``k_descale``, ``v_descale``: float32 ``[batch, heads_kv]``,
        a sequence's for varlen and paged cases) and rounded to the FP8 format."""
        from .attention import _numpy_dtype

        rng = np.random.default_rng(self.seed)
        x = self._raw_inputs(rng, np.float32 if self.fp8 else _numpy_dtype(self.dtype))
        return self._quantized(x, rng) if self.fp8 else x

    @property
    def fp8(self) -> bool:
        return self.dtype in FP8_DTYPES

    @property
    def out_dtype(self) -> str:
        """The output's dtype: the case's, bfloat16 for FP8 (as FlashAttention-3)."""
        return "bfloat16" if self.fp8 else self.dtype

    def _quantized(self, x: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """FP8 inputs: each value divided by its sequence's and kv head's descale, then rounded."""
        from .attention import _numpy_dtype

        fp8 = _numpy_dtype(self.dtype)
        b, hk = self.batch, self.heads_kv
        heads = np.arange(self.heads_q) // (self.heads_q // hk)  # (q's descale is its kv head's, as FA3's)
        d = {n: rng.uniform(0.5, 2.0, (b, hk)).astype(np.float32) for n in DESCALES}
        out = dict(x, **d)
        if self.kind == "varlen":
            seq_q = np.repeat(np.arange(b), [a for a, _ in self.seqlens])
            seq_k = np.repeat(np.arange(b), [c for _, c in self.seqlens])
            out["q"] = (x["q"] / d["q_descale"][seq_q][:, heads, None]).astype(fp8)
            out["k"] = (x["k"] / d["k_descale"][seq_k][:, :, None]).astype(fp8)
            out["v"] = (x["v"] / d["v_descale"][seq_k][:, :, None]).astype(fp8)
            return out
        out["q"] = (x["q"] / d["q_descale"][:, None, heads, None]).astype(fp8)
        if self.kind == "paged":
            owner = np.full(x["k_cache"].shape[0], -1)
            for i, (_, c) in enumerate(self.seqlens):
                owner[x["block_table"][i, :-(-c // self.page_size)]] = i
            for name, desc in (("k_cache", "k_descale"), ("v_cache", "v_descale")):
                scale = np.where((owner >= 0)[:, None], d[desc][np.maximum(owner, 0)], 1.0).astype(np.float32)
                with np.errstate(invalid="ignore"):
                    out[name] = (x[name] / scale[:, None, :, None]).astype(fp8)
            return out
        out["k"] = (x["k"] / d["k_descale"][:, None, :, None]).astype(fp8)
        out["v"] = (x["v"] / d["v_descale"][:, None, :, None]).astype(fp8)
        return out

    def _raw_inputs(self, rng: np.random.Generator, dt: Any) -> dict[str, Any]:
        b, sq, sk, hq, hk, d = self.batch, self.seqlen_q, self.seqlen_k, self.heads_q, self.heads_kv, self.head_dim
        slopes = alibi_slopes(hq) if self.alibi else None
        if self.kind == "varlen":
            cu_q = np.concatenate([[0], np.cumsum([a for a, _ in self.seqlens])]).astype(np.int32)
            cu_k = np.concatenate([[0], np.cumsum([c for _, c in self.seqlens])]).astype(np.int32)
            q = rng.standard_normal((int(cu_q[-1]), hq, d)).astype(dt)
            k = rng.standard_normal((int(cu_k[-1]), hk, d)).astype(dt)
            v = rng.standard_normal((int(cu_k[-1]), hk, d)).astype(dt)
            return {"q": q, "k": k, "v": v, "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k, "max_seqlen_q": sq,
                    "max_seqlen_k": sk, "alibi_slopes": slopes}
        if self.kind == "paged":
            page = self.page_size
            pages = [-(-c // page) for _, c in self.seqlens]
            num_pages = sum(pages) + 1
            order = rng.permutation(num_pages).astype(np.int32)
            spare = int(order[-1])
            table = np.full((b, max(pages)), spare, np.int32)
            at = 0
            for i, n in enumerate(pages):
                table[i, :n] = order[at:at + n]
                at += n
            q = rng.standard_normal((b, sq, hq, d)).astype(dt)
            garbage = np.array([np.nan, np.inf, -np.inf])
            caches = []
            for _ in range(2):
                cache = rng.standard_normal((num_pages, page, hk, d)).astype(dt)
                cache[spare] = np.resize(garbage, cache[spare].shape).astype(dt)
                for i, (_, c) in enumerate(self.seqlens):
                    if c % page:
                        tail = cache[table[i, pages[i] - 1], c % page:]
                        tail[...] = np.resize(garbage, tail.shape).astype(dt)
                caches.append(cache)
            return {"q": q, "k_cache": caches[0], "v_cache": caches[1], "block_table": table,
                    "cache_seqlens": np.array([c for _, c in self.seqlens], np.int32), "alibi_slopes": slopes}
        if self.kind == "strided":  # BSHD views of [b, h, s, d + 3] memory, a slice of the head dim
            q = rng.standard_normal((b, hq, sq, d + 3)).astype(dt).transpose(0, 2, 1, 3)[..., 1:d + 1]
            k = rng.standard_normal((b, hk, sk, d + 3)).astype(dt).transpose(0, 2, 1, 3)[..., 1:d + 1]
            v = rng.standard_normal((b, hk, sk, d + 3)).astype(dt).transpose(0, 2, 1, 3)[..., 1:d + 1]
        elif self.kind == "stride0":
            q = rng.standard_normal((b, sq, hq, d)).astype(dt)
            k = np.broadcast_to(rng.standard_normal((b, sk, 1, d)).astype(dt), (b, sk, hk, d))
            v = np.broadcast_to(rng.standard_normal((b, sk, 1, d)).astype(dt), (b, sk, hk, d))
        else:
            scale = 100.0 if self.kind == "extreme" else 1.0  # scores ~ ±1e4
            q = (rng.standard_normal((b, sq, hq, d)) * scale).astype(dt)
            k = (rng.standard_normal((b, sk, hk, d)) * scale).astype(dt)
            v = rng.standard_normal((b, sk, hk, d)).astype(dt)
        return {"q": q, "k": k, "v": v, "alibi_slopes": slopes}

    def dense_inputs(self, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        """A varlen or paged case's inputs as each sequence's dense BSHD inputs (see :meth:`sequences`):
        the slices of the packed batch, or the cache's pages gathered in block-table order up to the
        sequence's length."""
        out = []
        for i, (a, c) in enumerate(self.seqlens):
            if self.kind == "varlen":
                cq, ck = inputs["cu_seqlens_q"], inputs["cu_seqlens_k"]
                q = inputs["q"][cq[i]:cq[i + 1]][None]
                k, v = (inputs[n][ck[i]:ck[i + 1]][None] for n in ("k", "v"))
            else:
                q = inputs["q"][i:i + 1]
                used = inputs["block_table"][i, :-(-c // self.page_size)]
                k, v = (inputs[n][used].reshape(-1, self.heads_kv, self.head_dim)[:c][None]
                        for n in ("k_cache", "v_cache"))
            part = {"q": q, "k": k, "v": v, "alibi_slopes": inputs["alibi_slopes"]}
            if self.fp8:
                part.update({n: inputs[n][i:i + 1] for n in DESCALES})
            out.append(part)
        return out

    def _assemble(self, parts: list[Any], lse: bool = False) -> np.ndarray:
        """Each sequence's dense output ([1, sq, h, d]; an LSE [1, h, sq]) as the case's layout."""
        if self.kind == "varlen":
            return np.concatenate([p[0] for p in parts], axis=1 if lse else 0)
        return np.concatenate(parts, axis=0)

    def poison(self, inputs: dict[str, Any], which: str = "kv") -> dict[str, Any]:
        """The inputs with NaN and ±inf at the trailing :attr:`poisoned_keys` keys of k and/or v
        (``which``: "k", "v" or "kv")."""
        out = dict(inputs)
        p = self.poisoned_keys
        garbage = np.array([np.nan, np.inf, -np.inf], np.float64)
        for name in which:
            x = np.array(inputs[name])
            tail = x[:, x.shape[1] - p:]
            tail[...] = np.resize(garbage, tail.shape).astype(x.dtype)
            out[name] = x
        return out

    def lowp_reference(self, inputs: dict[str, Any]) -> np.ndarray | None:
        """Attention as a FlashAttention-2-style kernel computes it in a 16-bit dtype: the scores in
        float32, the probabilities rounded to the dtype before the P·V product (as FA2 feeds P to its
        tensor-core mma), the output rounded once; rows that see no key give 0. (FA2's own tests use
        ``attention_ref(upcast=False)``, which also rounds the scores to the dtype: near ±1e4 that
        costs it errors of order 1, which would let any kernel pass the extreme cases.) For FP8, as
        FlashAttention-3 computes it: the scores of the dequantized inputs in float32, the
        probabilities rounded to the FP8 format for the P·V product, the output in bfloat16. None for
        float32 (it is then the naive kernel)."""
        from .attention import _numpy_dtype

        if self.dtype == "float32":
            return None
        out_dt = _numpy_dtype(self.out_dtype)
        if self.kind in ("varlen", "paged"):
            zeros = (lambda a: np.zeros((1, a, self.heads_q, self.head_dim), out_dt))
            return self._assemble(self._per_sequence(inputs, lambda c, x: c.lowp_reference(x), zeros))
        dt = _numpy_dtype(self.dtype)

        def rd(x):
            return np.asarray(x, np.float32).astype(dt).astype(np.float32)

        rep = self.heads_q // self.heads_kv
        if self.fp8:
            q, k, v = (x.astype(np.float32) for x in self.dequantized(inputs))
        else:
            q, k, v = (np.asarray(inputs[n], np.float32) for n in ("q", "k", "v"))
        k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
        s = np.einsum("bthd,bshd->bhts", q, k) * np.float32(self.softmax_scale)
        if self.softcap:
            s = np.tanh(s / np.float32(self.softcap)) * np.float32(self.softcap)
        if self.alibi:
            from .adapters import alibi_bias

            s = s + alibi_bias(self, inputs["alibi_slopes"])[None]
        from .adapters import visible

        seen = visible(self)
        s = np.where(seen, s, -np.inf).astype(np.float32)
        top = s.max(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore"):
            e = np.exp(s - np.where(np.isfinite(top), top, 0), dtype=np.float32)
            e = np.where(seen.any(axis=-1)[:, None], e, 0)
            total = e.sum(axis=-1, keepdims=True)
            if self.fp8:  # (FA3 rounds exp(s - max), at most 1, to FP8 and divides by the float32 sum at the
                # end: normalized probabilities near 1/seqlen_k would be subnormal in e4m3)
                out = np.einsum("bhts,bshd->bhtd", rd(e), v) / np.where(total > 0, total, 1)
                return out.transpose(0, 2, 1, 3).astype(out_dt)
            p = rd(np.where(total > 0, e / np.where(total > 0, total, 1), 0))
        return np.einsum("bhts,bshd->bthd", p, v).astype(out_dt)

    def reference(self, inputs: dict[str, Any], dtype: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(out, lse) of flashparity's naive kernel on the inputs, in float64 (the gold) or in the
        case's dtype (the baseline). Varlen and paged cases run sequence by sequence on their dense
        inputs (:meth:`dense_inputs`)."""
        if self.kind in ("varlen", "paged"):
            from .attention import _numpy_dtype

            dt = np.float64 if dtype == "float64" else _numpy_dtype(self.dtype)
            parts = self._per_sequence(inputs, lambda c, x: c.reference(x, dtype), lambda a: (
                np.zeros((1, a, self.heads_q, self.head_dim), dt), np.full((1, self.heads_q, a), -np.inf, np.float32)))
            return self._assemble([o for o, _ in parts]), self._assemble([lse for _, lse in parts], lse=True)
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        kw: dict[str, Any] = {}
        if dtype == "float64":
            q, k, v = self.dequantized(inputs) if self.fp8 else (x.astype(np.float64) for x in (q, k, v))
        elif self.fp8:
            kw = {n: inputs[n] for n in DESCALES}
        return attention(q, k, v, impl="naive", causal=self.causal, window=self.window, softcap=self.softcap,
                         alibi_slopes=inputs["alibi_slopes"], softmax_scale=self.softmax_scale, return_lse=True, **kw)

    def dout(self) -> np.ndarray:
        """The seeded output gradient of a dense case (``backward=True``): the draws of the case's
        generator after its inputs, [batch, seqlen_q, heads_q, head_dim] in the output's dtype."""
        from .attention import _numpy_dtype
        from .backward import draw_dout

        rng = np.random.default_rng(self.seed)
        self._raw_inputs(rng, np.float32 if self.fp8 else _numpy_dtype(self.dtype))
        return draw_dout(rng, self.out_shape, _numpy_dtype(self.out_dtype))

    def reference_gradients(self, inputs: dict[str, Any], dout: np.ndarray,
                            dtype: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dq, dk, dv) of flashparity's naive backward on a dense or varlen case's inputs, in float64
        (the gold, on float64 copies of the rounded inputs) or in the case's dtype (the baseline). A
        varlen case's are packed as its q, k and v (:func:`flashparity.attention_varlen_backward`)."""
        from .backward import gold_gradients, own_gradients, varlen_gradients

        kw = dict(causal=self.causal, window=self.window, softcap=self.softcap, alibi_slopes=inputs["alibi_slopes"],
                  softmax_scale=self.softmax_scale)
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        if self.kind == "varlen":
            if dtype == "float64":
                q, k, v, dout = (np.asarray(x, np.float64) for x in (q, k, v, dout))
            return varlen_gradients("naive", q, k, v, dout, inputs["cu_seqlens_q"], inputs["cu_seqlens_k"],
                                    inputs["max_seqlen_q"], inputs["max_seqlen_k"], **kw)
        if dtype == "float64":
            return gold_gradients(q, k, v, dout, **kw)
        return own_gradients("naive", q, k, v, dout, **kw)

    def lowp_gradients(self, inputs: dict[str, Any], dout: np.ndarray) -> tuple | None:
        """FlashAttention-2's low-precision backward (:func:`flashparity.kernels.backward.lowp_gradients`)
        of a dense or varlen case (sequence by sequence, packed as its q, k and v); None in float32."""
        from .attention import _numpy_dtype
        from .backward import lowp_gradients

        kw = dict(causal=self.causal, window=self.window, softcap=self.softcap, alibi_slopes=inputs["alibi_slopes"],
                  softmax_scale=self.softmax_scale)
        if self.kind != "varlen":
            return lowp_gradients(inputs["q"], inputs["k"], inputs["v"], dout, **kw)
        if self.dtype not in ("float16", "bfloat16"):
            return None
        dt = _numpy_dtype(self.dtype)
        cu_q = inputs["cu_seqlens_q"]
        dq, dk, dv = [], [], []
        for i, ((a, b), c, x) in enumerate(zip(self.seqlens, self.sequences(), self.dense_inputs(inputs))):
            if c is None:  # (an empty sequence: no query or no key, every gradient 0)
                part = (np.zeros((1, a, self.heads_q, self.head_dim), dt),
                        *(np.zeros((1, b, self.heads_kv, self.head_dim), dt) for _ in range(2)))
            else:
                part = lowp_gradients(x["q"], x["k"], x["v"], dout[cu_q[i]:cu_q[i + 1]][None], **kw)
            for acc, g in zip((dq, dk, dv), part):
                acc.append(g[0])
        return tuple(np.concatenate(acc, axis=0) for acc in (dq, dk, dv))

    def unseen_keys(self) -> np.ndarray:
        """Which keys no query sees, bool [seqlen_k] (a varlen case's [total_k], sequence by sequence:
        every key of a sequence without queries)."""
        from .backward import unseen_keys

        if self.kind != "varlen":
            return unseen_keys(self.seqlen_q, self.seqlen_k, self.causal, self.window)
        return np.concatenate([unseen_keys(a, b, self.causal, self.window) if a else np.ones(b, bool)
                               for a, b in self.seqlens])

    def dequantized(self, inputs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A dense FP8 case's q, k, v in float64, each times its descale (the values FP8 stands for)."""
        heads = np.arange(self.heads_q) // (self.heads_q // self.heads_kv)
        q = inputs["q"].astype(np.float64) * inputs["q_descale"][:, None, heads, None]
        k = inputs["k"].astype(np.float64) * inputs["k_descale"][:, None, :, None]
        v = inputs["v"].astype(np.float64) * inputs["v_descale"][:, None, :, None]
        return q, k, v


# ---- suites -----------------------------------------------------------------------------------------

HEAD_DIMS = (32, 40, 59, 64, 80, 96, 111, 128, 160, 192, 224, 256)
SEQLENS = ((1, 1), (1, 239), (113, 203), (239, 1), (799, 3), (1023, 1024), (1024, 1023), (512, 256))
SUITES = ("quick", "default", "full")


def _quick(dtype: str) -> list[Case]:
    c = dict(dtype=dtype)
    return [
        Case(**c, seqlen_q=1, seqlen_k=1, head_dim=64),
        Case(**c, seqlen_q=1, seqlen_k=239, heads_q=8, heads_kv=2, head_dim=128),
        Case(**c, seqlen_q=113, seqlen_k=203, head_dim=64, causal=True),
        Case(**c, seqlen_q=239, seqlen_k=17, head_dim=32, causal=True, kind="masked-rows"),
        Case(**c, seqlen_q=128, seqlen_k=128, heads_q=4, heads_kv=1, head_dim=59, window=(16, 0)),
        Case(**c, seqlen_q=113, seqlen_k=203, head_dim=80, softcap=30.0),
        Case(**c, seqlen_q=64, seqlen_k=64, head_dim=64, causal=True, alibi=True),
        Case(**c, seqlen_q=64, seqlen_k=128, head_dim=96, kind="strided"),
        Case(**c, seqlen_q=64, seqlen_k=64, heads_q=4, heads_kv=2, head_dim=64, kind="stride0"),
        Case(**c, seqlen_q=96, seqlen_k=96, head_dim=64, causal=True, kind="poisoned"),
        Case(**c, seqlen_q=64, seqlen_k=64, head_dim=64, kind="extreme"),
        Case(**c, seqlen_q=113, seqlen_k=203, heads_q=4, heads_kv=2, head_dim=128, kind="determinism"),
        Case(**c, heads_q=4, heads_kv=2, head_dim=64, causal=True, kind="varlen",
             seqlens=((1, 1), (37, 61), (90, 17), (8, 128))),
        Case(**c, heads_q=8, heads_kv=2, head_dim=128, kind="paged", page_size=16,
             seqlens=((1, 1), (1, 47), (1, 128), (1, 200))),
    ]


def _fp8(dtype: str) -> list[Case]:
    """FP8 cases (inputs with descales): dense MHA/GQA/MQA, causal, rows that see no key, a varlen batch
    and a paged cache."""
    c = dict(dtype=dtype)
    return [
        Case(**c, seqlen_q=1, seqlen_k=239, heads_q=8, heads_kv=2, head_dim=128),
        Case(**c, seqlen_q=113, seqlen_k=203, heads_q=4, heads_kv=2, head_dim=128, causal=True),
        Case(**c, seqlen_q=128, seqlen_k=128, heads_q=4, heads_kv=1, head_dim=64, window=(16, 0)),
        Case(**c, seqlen_q=239, seqlen_k=17, head_dim=64, causal=True, kind="masked-rows"),
        Case(**c, heads_q=4, heads_kv=2, head_dim=128, causal=True, kind="varlen", seqlens=((37, 61), (0, 5), (90, 17))),
        Case(**c, heads_q=8, heads_kv=2, head_dim=128, kind="paged", page_size=16, seqlens=((1, 47), (1, 200))),
    ]


def _default(dtype: str) -> list[Case]:
    c = dict(dtype=dtype)
    cases = _quick(dtype)
    cases += [Case(**c, seqlen_q=113, seqlen_k=203, heads_q=4, heads_kv=2, head_dim=d, causal=d % 2 == 0)
              for d in HEAD_DIMS]
    cases += [Case(**c, seqlen_q=sq, seqlen_k=sk, heads_q=2, heads_kv=1, head_dim=64, causal=causal)
              for sq, sk in SEQLENS if sq * sk <= 1 << 19 for causal in (False, True) if not (causal and sq > sk)]
    cases += [Case(**c, seqlen_q=113, seqlen_k=203, head_dim=64, window=w) for w in ((0, 0), (7, 3), (-1, 5))]
    cases += [Case(**c, seqlen_q=113, seqlen_k=203, head_dim=64, causal=True, window=(9, 0)),
              Case(**c, seqlen_q=203, seqlen_k=113, head_dim=64, causal=True, window=(5, -1))]  # (rows 0..89: no key)
    cases += [Case(**c, batch=2, seqlen_q=799, seqlen_k=3, heads_q=2, heads_kv=2, head_dim=40, causal=True,
                   kind="masked-rows")]
    cases += [Case(**c, heads_q=4, heads_kv=1, head_dim=96, kind="varlen",
                   seqlens=((113, 203), (1, 239), (0, 9), (64, 1), (5, 0))),  # (empty sequences too)
              Case(**c, head_dim=64, window=(7, 3), kind="varlen", seqlens=((50, 80), (33, 33))),
              Case(**c, head_dim=64, causal=True, softcap=30.0, alibi=True, kind="varlen", seqlens=((40, 70), (70, 40)))]
    cases += [Case(**c, heads_q=4, heads_kv=2, head_dim=64, causal=True, kind="paged", page_size=page,
                   seqlens=((7, 7), (7, 100), (7, 263)) + (((7, 0),) if page == 5 else ()))
              for page in (1, 5, 16, 256)]
    return cases


def _full(dtype: str) -> list[Case]:
    c = dict(dtype=dtype)
    cases = _default(dtype)
    for d in HEAD_DIMS:
        for sq, sk in SEQLENS:
            for hq, hk in ((4, 4), (4, 2), (4, 1)):
                for causal in (False, True):
                    kind = "masked-rows" if causal and sq > sk else "plain"
                    cases.append(Case(**c, seqlen_q=sq, seqlen_k=sk, heads_q=hq, heads_kv=hk, head_dim=d,
                                      causal=causal, kind=kind))
    return cases


def suite_cases(name: str = "quick", dtypes: Iterable[str] = DTYPES, seed: int = 0) -> list[Case]:
    """The cases of a named suite for each dtype: ``quick`` (14 a dtype: one of each kind and
    feature), ``default`` (quick plus every head dim, the sequence-length pairs, windows, varlen
    batches and paged caches of pages of 1, 5, 16 and 256 slots; under a minute for a CPU kernel on
    2 cores) or ``full`` (every head dim × sequence pair × MHA/GQA/MQA ×
    causal). An FP8 dtype (asked for by name) gives the same six FP8 cases in every suite."""
    builders = {"quick": _quick, "default": _default, "full": _full}
    if name not in builders:
        raise ValueError(f"suite must be one of {', '.join(SUITES)}, got {name!r}")
    dtypes = list(dtypes)
    for dt in dtypes:
        if dt not in ALL_DTYPES:
            raise ValueError(f"dtypes must be among {', '.join(ALL_DTYPES)}, got {dt!r}")
    cases = []
    for dt in dtypes:
        own = list(dict.fromkeys((_fp8 if dt in FP8_DTYPES else builders[name])(dt)))  # (a case twice runs once)
        cases += [dataclasses.replace(case, seed=seed + i) for i, case in enumerate(own)]
    return cases


# ---- verdicts ---------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    """One case's verdict (``pass``, ``fail``, ``unsupported`` or ``error``), why, the statistics
    against the gold (kernel and baseline) and each rule's ratio (error / bound; at most 1 passes)."""

    case: Case
    verdict: str
    reason: str = ""
    stats: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    deterministic: bool | None = None
    seconds: float = 0.0
    #: with ``backward=True``: the gradients' verdict (:func:`flashparity.kernels.backward.judge_gradients`'s
    #: body: verdict, reason, dq/dk/dv errors, baselines and ratios, masked_keys_zero)
    backward: dict[str, Any] | None = None

    @property
    def backward_verdict(self) -> str | None:
        return None if self.backward is None else self.backward["verdict"]

    def message(self) -> str:
        """The verdict for a person: what failed, then the statistics and each rule's ratio."""
        lines = [f"{self.case.name}: {self.verdict}" + (f": {self.reason}" if self.reason else "")]
        if self.stats:
            lines.append("  " + ", ".join(f"{k} {v:.6g}" for k, v in self.stats.items()))
        if self.ratios:
            lines.append("  ratios (error / bound, <= 1 passes): " +
                         ", ".join(f"{k} {v:.3g}" for k, v in self.ratios.items()))
        if self.deterministic is not None:
            lines.append(f"  deterministic: {self.deterministic}")
        if self.backward is not None:
            b = self.backward
            lines.append(f"  backward: {b['verdict']}" + (f": {b['reason']}" if b["reason"] else ""))
            ratios = [f"{g} {b[g]['ratio']:.3g}" for g in ("dq", "dk", "dv") if b.get(g)]
            if ratios:
                lines.append("  backward ratios (error / bound, <= 1 passes): " + ", ".join(ratios))
        return "\n".join(lines)

    def outcome(self) -> tuple[str, str]:
        """What a test of this case does: ``("fail", message)`` when the forward or the gradients
        failed or raised, ``("skip", reason)`` when the forward (else, with ``backward``, the
        gradients) is unsupported, else ``("pass", "")``."""
        if self.verdict in ("fail", "error") or self.backward_verdict in ("fail", "error"):
            return "fail", self.message()
        if self.verdict == "unsupported":
            return "skip", f"unsupported: {self.reason}"
        if self.backward_verdict == "unsupported":
            return "skip", f"backward unsupported: {self.backward['reason']}"
        return "pass", ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.case.name, "case": dataclasses.asdict(self.case), "features": list(self.case.features),
                "verdict": self.verdict, "reason": self.reason, "stats": dict(self.stats),
                "ratios": dict(self.ratios), "deterministic": self.deterministic, "seconds": self.seconds,
                **({"backward": dict(self.backward)} if self.backward is not None else {})}


def _ratio(err: float, bound: float) -> float:
    if err != err:
        return math.nan
    return err / bound if bound > 0 else (0.0 if err == 0 else math.inf)


def judge(case: Case, inputs: dict[str, Any], out: Any, lse: Any, gold: tuple, baseline: tuple,
          lowp: np.ndarray | None = None) -> CaseResult:
    """The verdict of one output (and LSE, or None) against the gold. The baseline's errors are the
    larger of the naive kernel's in the case's dtype (``baseline``: (out, lse)) and FlashAttention-2's
    low-precision reference's (``lowp``, when given), its cosine the smaller."""
    from .attention import _numpy_dtype

    out = host_array(out, "output")
    want_dtype = np.dtype(_numpy_dtype(case.out_dtype))
    if tuple(out.shape) != case.out_shape:
        return CaseResult(case, "fail", f"output shape {tuple(out.shape)}, expected {case.out_shape}")
    if out.dtype != want_dtype:
        return CaseResult(case, "fail", f"output dtype {out.dtype}, expected {want_dtype}")
    g_out, g_lse = gold
    b_out, b_lse = baseline
    err = parity(out, g_out)
    naive = parity(b_out, g_out)
    ref = parity(lowp, g_out) if lowp is not None else naive
    base_max = max(naive.max_abs_diff, ref.max_abs_diff)
    base_mean = max(naive.mean_abs_diff, ref.mean_abs_diff)
    base_cos = min(naive.cosine_sim, ref.cosine_sim)
    stats = {"max_abs_diff": err.max_abs_diff, "mean_abs_diff": err.mean_abs_diff, "cosine_sim": err.cosine_sim,
             "baseline_max_abs_diff": base_max, "baseline_mean_abs_diff": base_mean, "baseline_cosine_sim": base_cos,
             "naive_max_abs_diff": naive.max_abs_diff, "lowp_ref_max_abs_diff": ref.max_abs_diff}
    ratios = {"max": _ratio(err.max_abs_diff, MAX_RULE_FACTOR * base_max + MAX_RULE_EPS),
              "mean": _ratio(err.mean_abs_diff, MEAN_RULE_FACTOR * base_mean + MEAN_RULE_EPS),
              "cosine": _ratio(COSINE_FRACTION * base_cos, err.cosine_sim) if err.cosine_sim > 0
              else math.inf if err.cosine_sim == err.cosine_sim else math.nan}
    reasons = []
    o64, g64 = out.astype(np.float64), g_out
    blind = case.blind_rows()  # rows that see no key (their gold is 0)
    if blind.any():
        wrong = (o64[blind] != 0).any(axis=(1, 2))
        if wrong.any():
            first = tuple(int(i) for i in np.argwhere(blind)[np.flatnonzero(wrong)[0]])
            reasons.append(f"{int(blind.sum())} rows see no key and must give 0 (as FlashAttention-2); "
                           f"{int(wrong.sum())} of them do not (first at row {first}: "
                           f"{float(o64[first][np.nonzero(o64[first])][0])!r})")
    bad = ~np.isfinite(o64) & np.isfinite(g64)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        reasons.append(f"{int(bad.sum())} NaN/inf outputs where the oracle is finite (first at {first}: "
                       f"{o64[first]!r} vs {g64[first]!r})")
    if lse is not None:
        lse = host_array(lse, "lse")
        want = case.lse_shape
        if tuple(lse.shape) != want:
            reasons.append(f"lse shape {tuple(lse.shape)}, expected {want} "
                           f"({'heads, total_q' if case.kind == 'varlen' else 'batch, heads, seqlen_q'})")
        else:
            e = parity(lse.astype(np.float64), g_lse.astype(np.float64))
            be = parity(b_lse.astype(np.float64), g_lse.astype(np.float64))
            stats.update(lse_max_abs_diff=e.max_abs_diff, baseline_lse_max_abs_diff=be.max_abs_diff)
            ratios["lse"] = _ratio(e.max_abs_diff, MAX_RULE_FACTOR * be.max_abs_diff + MAX_RULE_EPS)
            if not ratios["lse"] <= 1:
                reasons.append(f"lse: max|lse - gold| {e.max_abs_diff:.3g} at {e.max_abs_index} > "
                               f"2 × baseline's {be.max_abs_diff:.3g} + 1e-5")
    names = {"max": "max|out - gold| {:.3g} > 2 × baseline's {:.3g} + 1e-5",
             "mean": "mean|out - gold| {:.3g} > 1.5 × baseline's {:.3g} + 1e-6",
             "cosine": "cosine {:.6g} < 0.99 × baseline's {:.6g}"}
    vals = {"max": (err.max_abs_diff, base_max), "mean": (err.mean_abs_diff, base_mean),
            "cosine": (err.cosine_sim, base_cos)}
    for rule in ("max", "mean", "cosine"):
        if not ratios[rule] <= 1:
            reasons.append(names[rule].format(*vals[rule]) + (f" (at {err.max_abs_index})" if rule == "max" else ""))
    return CaseResult(case, "fail" if reasons else "pass", "; ".join(reasons), stats, ratios)


# ---- the report -------------------------------------------------------------------------------------


@dataclass
class ConformanceReport:
    """Every case's verdict for one kernel. ``ok``: no case failed or raised (unsupported cases are
    listed, never failures)."""

    kernel: str
    kernel_source: str
    convention: str
    device: str
    cases: list[CaseResult]
    notes: list[str] = field(default_factory=list)

    #: each rule's (factor, eps) and the order dtypes are shown in (for the HTML renderer)
    RULE_FACTORS = {"max": (MAX_RULE_FACTOR, MAX_RULE_EPS), "mean": (MEAN_RULE_FACTOR, MEAN_RULE_EPS),
                    "lse": (MAX_RULE_FACTOR, MAX_RULE_EPS)}
    DTYPE_ORDER = ALL_DTYPES

    @property
    def backward(self) -> bool:
        """Whether the run judged gradients too (``backward=True``)."""
        return any(r.backward is not None for r in self.cases)

    @property
    def ok(self) -> bool:
        """No case failed or raised, forward or backward, and at least one forward passed."""
        return all(r.verdict in ("pass", "unsupported") for r in self.cases) and any(
            r.verdict == "pass" for r in self.cases) and all(
            r.backward_verdict in (None, "pass", "unsupported") for r in self.cases)

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "unsupported": 0, "error": 0}
        for r in self.cases:
            out[r.verdict] += 1
        return out

    def backward_counts(self) -> dict[str, int]:
        """The gradients' verdicts (with ``backward=True``), as :meth:`counts`."""
        out = {"pass": 0, "fail": 0, "unsupported": 0, "error": 0}
        for r in self.cases:
            if r.backward is not None:
                out[r.backward["verdict"]] += 1
        return out

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{feature: {dtype: {verdict: count}}}: each case counts under each of its features. With
        ``backward=True`` each cell also holds ``"backward": {verdict: count}``, the gradients'."""
        table: dict[str, dict[str, dict[str, Any]]] = {}
        for r in self.cases:
            for f in r.case.features:
                cell = table.setdefault(f, {}).setdefault(r.case.dtype, {"pass": 0, "fail": 0, "unsupported": 0,
                                                                         "error": 0})
                cell[r.verdict] += 1
                if r.backward is not None:
                    bwd = cell.setdefault("backward", {"pass": 0, "fail": 0, "unsupported": 0, "error": 0})
                    bwd[r.backward["verdict"]] += 1
        return table

    def to_dict(self) -> dict[str, Any]:
        body = self._to_dict()
        if self.backward:
            from .backward import RULE

            body["backward_counts"] = self.backward_counts()
            body["rules"]["backward"] = RULE
        return body

    def _to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "kernel_source": self.kernel_source, "convention": self.convention,
                "device": self.device, "ok": self.ok, "counts": self.counts(), "summary": self.summary(),
                "notes": list(self.notes), "cases": [r.to_dict() for r in self.cases],
                "rules": {"max": f"max|out - gold| <= {MAX_RULE_FACTOR:g} * max|baseline - gold| + {MAX_RULE_EPS:g}",
                          "mean": f"mean|out - gold| <= {MEAN_RULE_FACTOR:g} * mean|baseline - gold| + {MEAN_RULE_EPS:g}",
                          "lse": f"max|lse - gold| <= {MAX_RULE_FACTOR:g} * max|baseline lse - gold| + {MAX_RULE_EPS:g}",
                          "cosine": f"cosine(out, gold) >= {COSINE_FRACTION:g} * cosine(baseline, gold)",
                          "gold": "flashparity's naive kernel in float64 on the same rounded inputs (FP8: the "
                                  "values they stand for, times their descales)",
                          "baseline": "the larger error of flashparity's naive kernel in the case's dtype and "
                                      "attention as FlashAttention-2 computes it in that dtype (float32 scores, "
                                      "the probabilities rounded to the dtype for P·V; FP8: to FP8, as "
                                      "FlashAttention-3)"}}

    def to_html(self, path: str | None = None) -> str:
        """The report as one self-contained HTML page (the feature × dtype matrix, each failing case's
        errors against the baseline's, the provenance); written to ``path`` when given (atomically,
        as every output of flashparity). Returns the page."""
        from .._write import write_atomically
        from .conformance_html import render

        page = render(self)
        if path is not None:
            data = page.encode("utf-8")
            write_atomically(str(path), lambda fh: fh.write(data))
        return page

    def __str__(self) -> str:
        from .._write import printable

        c = self.counts()
        lines = [f"conformance of {printable(self.kernel)} ({printable(self.kernel_source)}), convention "
                 f"{self.convention}, on {self.device}: {'PASS' if self.ok else 'FAIL'} — {c['pass']} passed, "
                 f"{c['fail']} failed, {c['error']} errors, {c['unsupported']} unsupported"]
        dtypes = sorted({r.case.dtype for r in self.cases}, key=ALL_DTYPES.index)
        table = self.summary()
        width = max([len(f) + (4 if self.backward else 0) for f in table] + [8])
        lines.append(f"  {'feature':<{width}}  " + "  ".join(f"{d:>16}" for d in dtypes))
        for feat, row in table.items():
            cells = []
            for d in dtypes:
                x = row.get(d)
                cells.append(f"{'':>16}" if x is None else
                             f"{x['pass']:>4} ok {x['fail'] + x['error']:>3} ✗ {x['unsupported']:>3} –")
            lines.append(f"  {feat:<{width}}  " + "  ".join(cells))
        if self.backward:
            b = self.backward_counts()
            lines.append(f"  backward (dq, dk, dv): {b['pass']} passed, {b['fail']} failed, {b['error']} errors, "
                         f"{b['unsupported']} unsupported")
            for feat, row in table.items():
                cells = []
                for d in dtypes:
                    x = row.get(d, {}).get("backward")
                    cells.append(f"{'':>16}" if x is None else
                                 f"{x['pass']:>4} ok {x['fail'] + x['error']:>3} ✗ {x['unsupported']:>3} –")
                lines.append(f"  {'bwd ' + feat:<{width}}  " + "  ".join(cells))
        for r in self.cases:
            if r.verdict in ("fail", "error"):
                lines.append(f"  {r.verdict.upper()} {r.case.name}: {printable(r.reason)}")
            if r.backward_verdict in ("fail", "error"):
                lines.append(f"  BACKWARD {r.backward_verdict.upper()} {r.case.name}: "
                             f"{printable(r.backward['reason'])}")
        unsupported = {}
        for r in self.cases:
            if r.verdict == "unsupported":
                unsupported.setdefault(r.reason, []).append(r.case.name)
        for reason, names in unsupported.items():
            lines.append(f"  unsupported ({len(names)}): {printable(reason)}")
        lines += [f"  note: {printable(n)}" for n in self.notes]
        return "\n".join(lines)


# ---- running a suite --------------------------------------------------------------------------------


def run_case(adapter: Any, case: Case, backward: bool = False) -> CaseResult:
    """One case through an adapter: unsupported (with every reason), or run and judged (a crash is
    an ``error``, with the exception). ``backward``: the gradients judged too (:func:`run_backward`)."""
    result = _run_forward(adapter, case)
    if backward:
        result.backward = run_backward(adapter, case, result)
    return result


def run_backward(adapter: Any, case: Case, forward: CaseResult | None = None) -> dict[str, Any]:
    """The gradients' verdict of a case (:func:`flashparity.kernels.backward.judge_gradients`):
    the kernel's dq, dk, dv for the case's seeded dout (:meth:`Case.dout`) against the naive
    backward in float64 (the gold) and in the case's dtype (the baseline). ``unsupported`` (with
    the reason) when the forward was not run or the kernel gives no gradients for the case,
    ``error`` when taking them raised."""
    from . import backward as bw

    if forward is not None and forward.verdict == "unsupported":
        return bw.unsupported(f"the forward is unsupported: {forward.reason}")
    if forward is not None and forward.verdict == "error":
        return bw.unsupported("the forward raised (see its verdict)")
    if case.kind == "paged":
        return bw.unsupported(bw.PAGED_NOT_BUILT)
    if case.fp8:
        return bw.unsupported(f"the attention backward takes float32, float16 and bfloat16 cases, not {case.dtype}")
    if adapter.device != "cpu":
        return bw.unsupported(bw.CUDA_NOT_BUILT)
    inputs = case.inputs()
    dout = case.dout()
    return judge_case_gradients(case, inputs, dout, lambda: adapter.gradients(case, inputs, dout))


def judge_case_gradients(case: Case, inputs: dict[str, Any], dout: np.ndarray,
                         take: Callable[[], tuple]) -> dict[str, Any]:
    """The gradients' verdict of a dense or varlen case's ``inputs`` for ``dout``: ``take()``'s (dq,
    dk, dv) against the naive backward in float64 (the gold), in the case's dtype and as
    FlashAttention-2 rounds in 16 bits (the baselines), and exactly 0 dk, dv for keys no query sees
    (:meth:`Case.unseen_keys`). ``take`` raising :class:`~flashparity.kernels.adapters.Unsupported`
    gives ``unsupported``, anything else ``error``."""
    from . import backward as bw
    from .adapters import Unsupported

    gold = case.reference_gradients(inputs, dout, "float64")
    baseline = case.reference_gradients(inputs, dout)
    try:
        grads = take()
    except Unsupported as exc:
        return bw.unsupported(str(exc))
    except Exception as exc:  # (the kernel's backward raised: its verdict)
        return bw.error(f"{type(exc).__name__}: {exc}")
    # (scores near ±1e4: FA2's 3x, see GRAD_RULE_FACTOR_EXTREME; no kernel is its own baseline)
    factor = bw.GRAD_RULE_FACTOR_EXTREME if case.kind == "extreme" else bw.GRAD_RULE_FACTOR
    return bw.judge_gradients(grads, gold, baseline, case.unseen_keys(), lowp=case.lowp_gradients(inputs, dout),
                              factor=factor)


def _run_forward(adapter: Any, case: Case) -> CaseResult:
    from .adapters import Unsupported

    reasons = adapter.not_supported_reasons(case)
    if reasons:
        return CaseResult(case, "unsupported", "; ".join(reasons))
    inputs = case.inputs()
    # the references first, on inputs the kernel has not touched; a copy to tell whether it writes them
    gold = case.reference(inputs, "float64")
    baseline = case.reference(inputs)
    lowp = case.lowp_reference(inputs)
    pristine = {n: np.array(x) for n, x in inputs.items() if isinstance(x, np.ndarray) and n != "alibi_slopes"}
    t0 = time.perf_counter()
    try:
        out, lse = _call(adapter, case, inputs)
    except Unsupported as exc:
        return CaseResult(case, "unsupported", str(exc))
    except Exception as exc:  # a crash of the kernel under test is its verdict, not ours
        return CaseResult(case, "error", f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
    seconds = time.perf_counter() - t0  # (the kernel's call: the references and the judging are ours)
    result = judge(case, inputs, out, lse, gold, baseline, lowp)
    result.seconds = seconds
    if lse is None and adapter.capabilities.lse:
        result.verdict = "fail"
        result.reason = "; ".join(filter(None, [result.reason, "the kernel declares an LSE but returned none"]))
    written = [n for n in pristine if not np.array_equal(inputs[n], pristine[n], equal_nan=True)]
    if written:
        result.verdict = "fail"
        result.reason = "; ".join(filter(None, [result.reason, f"the kernel wrote into its input {', '.join(written)}"]))
        return result
    if case.kind == "determinism" and result.verdict != "unsupported":
        try:
            out2, lse2 = _call(adapter, case, inputs)
            same = _same_bits(out, out2) and (lse is None or (lse2 is not None and _same_bits(lse, lse2)))
        except Exception as exc:
            same = False
            result.reason = "; ".join(filter(None, [result.reason, f"second call raised {type(exc).__name__}: {exc}"]))
        result.deterministic = same
        if not same:
            result.verdict = "fail"
            result.reason = "; ".join(filter(None, [result.reason, "two calls on the same inputs differ"]))
    if case.kind == "poisoned" and result.verdict == "pass":
        _check_poison(adapter, case, inputs, out, lse, result)
    return result


def _call(adapter: Any, case: Case, inputs: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """The adapter's (out, lse) as host copies of their own: a kernel that hands back a buffer it
    reuses on the next call must not make two calls look alike."""
    out, lse = adapter.run(case, inputs)
    out = np.array(host_array(out, "output"))
    return out, (None if lse is None else np.array(host_array(lse, "lse")))


def _same_bits(x: Any, y: Any) -> bool:
    a, b = host_array(x, "output"), host_array(y, "output")
    return a.shape == b.shape and a.dtype == b.dtype and np.ascontiguousarray(a).tobytes() == \
        np.ascontiguousarray(b).tobytes()


def _poison_leaks(adapter: Any, case: Case, inputs: dict, out: Any, lse: Any, which: str) -> str:
    """'' when rows that cannot see the poisoned keys (of k and/or v) are bit-identical to the clean
    run's; else what changed."""
    rows = case.seqlen_q - case.poisoned_keys  # (rows 0 .. rows-1 see no poisoned key)
    try:
        out2, lse2 = _call(adapter, case, case.poison(inputs, which))
    except Exception as exc:
        return f"with garbage in unseen keys of {which} the call raised {type(exc).__name__}: {exc}"
    if out2.shape != out.shape or out2.dtype != out.dtype:
        return f"with garbage in unseen keys of {which} the output is {out2.dtype} {out2.shape}, not {out.dtype} {out.shape}"
    if lse is not None and (lse2 is None or lse2.shape != lse.shape):
        return f"with garbage in unseen keys of {which} the lse is {None if lse2 is None else lse2.shape}, not {lse.shape}"
    a, b = host_array(out, "output")[:, :rows], host_array(out2, "output")[:, :rows]
    differ = ~((a == b) | (np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64))))
    problems = []
    if differ.any():
        first = tuple(int(i) for i in np.argwhere(differ)[0])
        problems.append(f"NaN/inf in the {case.poisoned_keys} last keys of {which}, which rows 0..{rows - 1} cannot "
                        f"see, changed {int(differ.sum())} of those rows' outputs (first at {first}: "
                        f"{float(b[first])!r} instead of {float(a[first])!r})")
    if lse is not None and lse2 is not None:
        la, lb = host_array(lse, "lse")[:, :, :rows], host_array(lse2, "lse")[:, :, :rows]
        if not np.array_equal(la, lb, equal_nan=True):
            problems.append(f"garbage in unseen keys of {which} changed the lse of rows 0..{rows - 1}")
    return "; ".join(problems)


def _check_poison(adapter: Any, case: Case, inputs: dict, out: Any, lse: Any, result: CaseResult) -> None:
    """Rows that cannot see the poisoned keys must be bit-identical to the clean run's; when they are
    not, k and v are poisoned one at a time to say which leaks."""
    if not _poison_leaks(adapter, case, inputs, out, lse, "kv"):
        return
    found = [msg for which in ("k", "v") if (msg := _poison_leaks(adapter, case, inputs, out, lse, which))]
    result.verdict = "fail"
    result.reason = "; ".join(found) or _poison_leaks(adapter, case, inputs, out, lse, "kv")


def prepare_adapter(kernel: Any, *, convention: str | None = None, capabilities: dict | None = None,
                    device: str = "cpu", allow_unpinned: bool = False) -> Any:
    """The adapter of ``kernel`` (see :func:`conformance`) on ``device``, its package imported: a
    ValueError for a device it does not run on or that is not there."""
    from .adapters import resolve

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    adapter = resolve(kernel, convention=convention, capabilities=capabilities, allow_unpinned=allow_unpinned)
    if device not in adapter.devices:
        raise ValueError(f"{adapter.name} runs on {' and '.join(adapter.devices)} only, not on {device} "
                         f"(pass device={adapter.devices[0]!r})")
    if device == "cuda":
        torch = require("torch", "conformance on device='cuda'")
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch sees no CUDA device")
    adapter.device = device
    adapter.prepare()
    return adapter


def conformance(kernel: Any, *, convention: str | None = None, suite: str | list[Case] = "quick",
                dtypes: Iterable[str] | None = None, device: str = "cpu", seed: int | None = None,
                capabilities: dict | None = None, progress: Callable[[int, int], None] | None = None,
                allow_unpinned: bool = False, backward: bool = False) -> ConformanceReport:
    """Run a suite of cases through a kernel and judge each against the float64 oracle.

    ``kernel``: a built-in adapter's name (:data:`flashparity.kernels.adapters.ADAPTERS`: ``flashparity:flash2``,
    ``flashparity:naive``, ``torch-sdpa`` and ``torch-sdpa:<backend>``, ``torch-flex[:compiled]``,
    ``jax``, and on a GPU ``flash-attn``, ``flash-attn-3``, ``flashinfer``, ``xformers``), a Hugging
    Face hub kernel ``hub:<org>/<repo>@<commit>`` (``allow_unpinned=True`` for a branch or tag),
    ``"package.module:function"``, or a callable; the last two need ``convention``
    (:data:`flashparity.kernels.adapters.CONVENTIONS`) and may declare ``capabilities`` (see
    :class:`flashparity.kernels.adapters.Capabilities`). ``suite``: ``quick``, ``default``, ``full`` (see
    :func:`suite_cases`) or a list of :class:`Case`. ``device``: ``cpu`` or ``cuda`` (the inputs go to
    the GPU as torch tensors). ``progress(done, total)`` after each case. Returns a
    :class:`ConformanceReport`.

    ``backward=True`` also judges each dense and varlen case's gradients (:func:`run_backward`): the kernel's
    dq, dk, dv for a seeded output gradient against float64 gold gradients, FlashAttention-2's rule
    ``max|dX - gold| <= 2 * max|dX_naive - gold| + 1e-5`` for each, and exactly zero dk, dv for keys
    no query sees. A torch kernel's gradients come from ``torch.autograd.grad`` through its forward,
    a JAX kernel's from ``jax.vjp``; varlen cases are judged on their packed gradients
    (:func:`judge_case_gradients`). Kernels with none (the NumPy convention, an output with no
    autograd graph), paged and FP8 cases and CUDA devices are ``unsupported`` there, with the reason. A failed or raising
    backward fails the report (``ok`` False).
    """
    if not isinstance(backward, bool):
        raise TypeError(f"backward must be a bool, got {backward!r}")
    adapter = prepare_adapter(kernel, convention=convention, capabilities=capabilities, device=device,
                              allow_unpinned=allow_unpinned)
    if isinstance(suite, str):
        cases = suite_cases(suite, DTYPES if dtypes is None else dtypes, 0 if seed is None else seed)
    else:
        if dtypes is not None or seed is not None:
            raise ValueError("dtypes= and seed= choose a named suite's cases; a list of Case carries its own")
        cases = list(suite)
    if not cases:
        raise ValueError("the suite has no cases")
    for c in cases:
        if not isinstance(c, Case):
            raise TypeError(f"suite must be a suite name or a list of Case, got an item {c!r}")
    results = []
    for i, case in enumerate(cases):
        results.append(run_case(adapter, case, backward))
        if progress is not None:
            progress(i + 1, len(cases))
    return ConformanceReport(adapter.name, adapter.kernel_source(), adapter.convention, device, results,
                             list(adapter.notes))
