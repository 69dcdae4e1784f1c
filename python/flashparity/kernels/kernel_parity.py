"""Kernel parity: run an attention implementation and its reference on seeded inputs and report.

``fp.kernel_parity`` returns the body of ``flashparity kernel parity --json``, a drop-in for
``apr kernel parity --json``: apr's keys (kernel, reference, seq_len, num_heads, num_kv_heads,
head_dim, seed, regime, max_abs_diff, cosine_sim, attn_impl, kernel_source, fallback), the case
(batch, seqlen_q, causal, window, softcap, alibi, varlen, page_size, dtype, device), the rest of the
parity statistics, and
FlashAttention-2's test rule (ref_max_abs_diff, baseline_max_abs_diff, fa2_rule_ok). With
``backward=True`` each case's body also holds ``backward``: the gradients' verdict
(:func:`flashparity.kernels.backward.judge_gradients`), and the body ``backward_ok``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .._build import kernel_source
from .attention import IMPLS, _numpy_dtype, alibi_slopes, attention
from ..parity import parity

__all__ = ["Case", "kernel_parity", "make_inputs", "make_dout", "case_inputs", "default_sweep", "alibi_slopes",
           "FA2_RULE_SLACK", "IMPL_ALIASES"]

#: ``ref_max_abs_diff <= 2 * baseline_max_abs_diff + FA2_RULE_SLACK`` (FlashAttention-2's tests).
FA2_RULE_SLACK = 1e-5
#: apr's names for the implementations.
IMPL_ALIASES = {"tiled": "flash2"}
#: ``--dtype`` choices: the FP8 formats run with unit descales and give bfloat16 outputs.
DTYPES = ("float32", "float16", "bfloat16", "float64", "float8_e4m3fn", "float8_e5m2")


@dataclass(frozen=True)
class Case:
    """One attention problem. ``seqlen_q=None`` is apr's default decode regime: 1 query over a
    ``seq_len`` KV cache."""

    seq_len: int = 128
    num_heads: int = 8
    num_kv_heads: int = 8
    head_dim: int = 64
    seed: int = 0
    batch: int = 1
    seqlen_q: int | None = None
    causal: bool = False
    window: tuple[int, int] = (-1, -1)
    softcap: float = 0.0
    alibi: bool = False
    #: a packed varlen batch: sequence i has varlen[i] queries and keys (fp.attention_varlen); with
    #: page_size, the KV cache lengths instead (seqlen_q queries each)
    varlen: tuple[int, ...] | None = None
    #: a paged KV cache of pages of page_size keys (fp.attention_kvcache, a seeded block table)
    page_size: int | None = None
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self):
        for name in ("seq_len", "num_heads", "num_kv_heads", "head_dim", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.seqlen_q is not None and (isinstance(self.seqlen_q, bool) or int(self.seqlen_q) < 1):
            raise ValueError(f"seqlen_q must be an integer >= 1, got {self.seqlen_q!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if not isinstance(self.alibi, (bool, np.bool_)):
            raise ValueError(f"alibi must be a bool, got {self.alibi!r}")
        if self.varlen is not None:
            lens = tuple(self.varlen)
            if not lens or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 for n in lens):
                raise ValueError(f"varlen must be a non-empty list of lengths >= 0, got {self.varlen!r}")
            object.__setattr__(self, "varlen", tuple(int(n) for n in lens))
        if self.page_size is not None and (isinstance(self.page_size, bool) or int(self.page_size) < 1):
            raise ValueError(f"page_size must be an integer >= 1, got {self.page_size!r}")
        if self.varlen is not None and self.page_size is None and sum(self.varlen) == 0:
            raise ValueError(f"varlen must hold at least one query (a length >= 1), got {list(self.varlen)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        window = tuple(self.window)
        if len(window) != 2 or not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= -1
                                       for w in window):
            raise ValueError(f"window must be two integers >= -1 (-1: unbounded), got {self.window!r}")
        object.__setattr__(self, "window", tuple(int(w) for w in window))

    @property
    def q_len(self) -> int:
        return 1 if self.seqlen_q is None else int(self.seqlen_q)

    @property
    def regime(self) -> str:
        if self.varlen is not None and self.page_size is None:
            return "prefill"  # (every sequence attends its own queries)
        return "decode" if self.q_len == 1 else "prefill"

    @property
    def layout(self) -> str:
        """dense (fp.attention), varlen (fp.attention_varlen) or paged (fp.attention_kvcache)."""
        return "paged" if self.page_size is not None else "varlen" if self.varlen is not None else "dense"


def make_inputs(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded q, k, v (BSHD) in the case's dtype: the same seed gives the same bits on any machine
    (NumPy's PCG64 and its normal sampler are platform-independent)."""
    rng = np.random.default_rng(case.seed)
    dt = _numpy_dtype(case.dtype)
    q = rng.standard_normal((case.batch, case.q_len, case.num_heads, case.head_dim)).astype(dt)
    k = rng.standard_normal((case.batch, case.seq_len, case.num_kv_heads, case.head_dim)).astype(dt)
    v = rng.standard_normal((case.batch, case.seq_len, case.num_kv_heads, case.head_dim)).astype(dt)
    return q, k, v


def make_dout(case: Case) -> np.ndarray:
    """The seeded output gradient of a dense or varlen case (``backward=True``): the draws of the
    case's generator after :func:`case_inputs`' q, k and v, [batch, seqlen_q, heads, head_dim] (a
    varlen batch's packed [total, heads, head_dim]) in its dtype."""
    from .backward import draw_dout

    rng = np.random.default_rng(case.seed)
    dt = _numpy_dtype(case.dtype)
    if case.layout == "varlen":
        total = sum(case.varlen)
        for heads in (case.num_heads, case.num_kv_heads, case.num_kv_heads):
            rng.standard_normal((total, heads, case.head_dim)).astype(dt)
        return draw_dout(rng, (total, case.num_heads, case.head_dim), dt)
    for heads, length in ((case.num_heads, case.q_len), (case.num_kv_heads, case.seq_len),
                          (case.num_kv_heads, case.seq_len)):
        rng.standard_normal((case.batch, length, heads, case.head_dim)).astype(dt)
    return draw_dout(rng, (case.batch, case.q_len, case.num_heads, case.head_dim), dt)


def _backward(impl: str, case: Case, adapter: Any, q, k, v, meta: dict | None = None) -> dict[str, Any]:
    """The gradients' verdict of a case: ``impl``'s (flashparity's backward) or the adapter's
    (torch autograd or ``jax.vjp`` through its forward) dq, dk, dv for :func:`make_dout`'s output
    gradient against the naive backward in float64 (the gold) and in the case's dtype (the
    baseline). A varlen batch (``meta``: its ``cu_seqlens``) is judged as the conformance suite's
    (:func:`flashparity.kernels.conformance.judge_case_gradients`)."""
    from . import backward as bw
    from .adapters import Unsupported

    if case.layout == "paged":
        return bw.unsupported(bw.PAGED_NOT_BUILT)
    if case.dtype not in bw.BACKWARD_DTYPES:
        return bw.unsupported(f"the attention backward takes {', '.join(bw.BACKWARD_DTYPES)} cases, not {case.dtype}")
    if case.device != "cpu":
        return bw.unsupported(bw.CUDA_NOT_BUILT)
    dout = make_dout(case)
    slopes = alibi_slopes(case.num_heads) if case.alibi else None
    if case.layout == "varlen":
        return _varlen_backward(impl, case, adapter, q, k, v, dout, meta["cu_seqlens"], slopes)
    kw = dict(causal=case.causal, window=case.window, softcap=case.softcap, alibi_slopes=slopes)
    gold = bw.gold_gradients(q, k, v, dout, **kw)
    baseline = bw.own_gradients("naive", q, k, v, dout, **kw)
    if adapter is None:
        grads = bw.own_gradients(impl, q, k, v, dout, **kw)
    else:
        try:
            cc = _conformance_case(case)
            grads = adapter.gradients(cc, {"q": q.copy(), "k": k.copy(), "v": v.copy(), "alibi_slopes": slopes}, dout)
        except Unsupported as exc:
            return bw.unsupported(str(exc))
        except Exception as exc:  # (the kernel's backward raised: its verdict)
            return bw.error(f"{type(exc).__name__}: {exc}")
    unseen = bw.unseen_keys(case.q_len, case.seq_len, case.causal, case.window)
    return bw.judge_gradients(grads, gold, baseline, unseen, lowp=bw.lowp_gradients(q, k, v, dout, **kw))


def _varlen_backward(impl: str, case: Case, adapter: Any, q, k, v, dout, cu_seqlens, slopes) -> dict[str, Any]:
    """:func:`_backward` of a varlen batch (queries and keys of the same lengths)."""
    from . import backward as bw
    from .conformance import judge_case_gradients

    # (a float64 batch of flashparity's own kernels: the float32 case carries its layout; the references run in
    # the inputs' dtype, and there is no 16-bit baseline)
    cc = _conformance_case(replace(case, dtype="float32") if case.dtype == "float64" else case)
    cu = np.array(cu_seqlens, np.int32)
    inputs = {"q": q.copy(), "k": k.copy(), "v": v.copy(), "cu_seqlens_q": cu, "cu_seqlens_k": cu.copy(),
              "max_seqlen_q": cc.seqlen_q, "max_seqlen_k": cc.seqlen_k, "alibi_slopes": slopes}
    if adapter is not None:
        return judge_case_gradients(cc, inputs, dout, lambda: adapter.gradients(cc, inputs, dout))
    return judge_case_gradients(cc, inputs, dout, lambda: bw.varlen_gradients(
        impl, q, k, v, dout, cu, cu, cc.seqlen_q, cc.seqlen_k, causal=case.causal, window=case.window,
        softcap=case.softcap, alibi_slopes=slopes))


def run_attention(impl: str, q, k, v, *, device: str, causal: bool, window, softcap: float,
                  alibi: np.ndarray | None = None, meta: dict | None = None) -> np.ndarray:
    """One forward of host arrays on `device` ("cuda": copied to GPU 0 and the output back).
    `meta`: {"cu_seqlens": ...} for a varlen batch, {"cache_seqlens", "block_table"} for a paged
    cache (see :func:`case_inputs`), else a dense batch."""
    from .serving import attention_kvcache, attention_varlen

    kw = dict(impl=impl, causal=causal, window=window, softcap=softcap, alibi_slopes=alibi)
    meta = meta or {}
    if device == "cuda":
        from .. import _core

        if not hasattr(_core, "attention_cuda"):
            raise RuntimeError("device-unavailable: this build has no CUDA kernels; use --device cpu")
        q, k, v = (to_device(x) for x in (q, k, v))
    if "cu_seqlens" in meta:
        out = attention_varlen(q, k, v, meta["cu_seqlens"], meta["cu_seqlens"], **kw)
    elif "block_table" in meta:
        out = attention_kvcache(q, k, v, meta["cache_seqlens"], block_table=meta["block_table"], **kw)
    else:
        out = attention(q, k, v, **kw)
    return out if device == "cpu" else to_host(out, _numpy_dtype(out.dtype))


def case_inputs(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Seeded q, k, v and the layout's metadata: dense BSHD (as :func:`make_inputs`); varlen packed
    [total, heads, head_dim] with ``cu_seqlens``; paged q [batch, seqlen_q, heads, head_dim] and a
    pool of pages with ``cache_seqlens`` and a seeded ``block_table`` (pages in shuffled order)."""
    if case.layout == "dense":
        return (*make_inputs(case), {})
    rng = np.random.default_rng(case.seed)
    dt = _numpy_dtype(case.dtype)
    h, hk, d = case.num_heads, case.num_kv_heads, case.head_dim
    if case.layout == "varlen":
        cu = np.concatenate([[0], np.cumsum(case.varlen)]).astype(np.int32)
        q, k, v = (rng.standard_normal((int(cu[-1]), n, d)).astype(dt) for n in (h, hk, hk))
        return q, k, v, {"cu_seqlens": cu}
    lens = np.int32(case.varlen if case.varlen is not None else [case.seq_len] * case.batch)
    page = int(case.page_size)
    max_blocks = max(1, int((lens.max(initial=0) + page - 1) // page))
    num_blocks = lens.size * max_blocks
    table = rng.permutation(num_blocks).reshape(lens.size, max_blocks).astype(np.int32)
    q = rng.standard_normal((lens.size, case.q_len, h, d)).astype(dt)
    k, v = (rng.standard_normal((num_blocks, page, hk, d)).astype(dt) for _ in range(2))
    return q, k, v, {"cache_seqlens": lens, "block_table": table}


def _run(impl: str, q, k, v, meta: dict, case: Case):
    # the float64 reference always runs on the host
    device = "cpu" if q.dtype == np.float64 else case.device
    return run_attention(impl, q, k, v, device=device, causal=case.causal, window=case.window, softcap=case.softcap,
                         alibi=alibi_slopes(case.num_heads) if case.alibi else None, meta=meta)


def to_device(x: np.ndarray, device: int = 0):
    """A device copy of a host array (CUDA builds): a DeviceArray."""
    from .. import _core
    from .._tensor import DTYPE_CODES, as_view

    x = np.ascontiguousarray(x)
    view = as_view(x, "x")
    return _core.DeviceArray.from_host(view.ptr, DTYPE_CODES[view.dtype], list(x.shape), device)


def to_host(a, dtype) -> np.ndarray:
    """A host copy of a DeviceArray, as a NumPy array of `dtype`."""
    return np.frombuffer(a.to_host_bytes(), dtype=dtype).reshape(a.shape).copy()


def _conformance_case(case: Case):
    """The conformance case of a kernel parity case (a third-party kernel's view of it): dense, a
    varlen batch (the same lengths for queries and keys) or a paged cache."""
    from .conformance import Case as ConformanceCase

    from .adapters import Unsupported

    if case.dtype == "float64":
        raise Unsupported("a kernel run through an adapter takes float32, float16, bfloat16 and FP8 cases (got float64)")
    common = dict(dtype=case.dtype, heads_q=case.num_heads, heads_kv=case.num_kv_heads, head_dim=case.head_dim,
                  causal=case.causal, window=tuple(case.window), softcap=case.softcap, alibi=case.alibi)
    if case.layout == "varlen":
        return ConformanceCase(**common, kind="varlen", seqlens=tuple((int(n), int(n)) for n in case.varlen))
    if case.layout != "dense":
        lens = case.varlen if case.varlen is not None else [case.seq_len] * case.batch
        return ConformanceCase(**common, kind="paged", page_size=int(case.page_size),
                               seqlens=tuple((case.q_len, int(n)) for n in lens))
    return ConformanceCase(**common, batch=case.batch, seqlen_q=case.q_len, seqlen_k=case.seq_len)


class KernelFailed(RuntimeError):
    """The kernel under test raised, or returned something that is not its output (exit 1)."""


def _run_adapter(adapter: Any, q, k, v, meta: dict, case: Case) -> np.ndarray:
    """The adapter's output on copies of the case's inputs (a kernel that writes its inputs cannot
    change what the references see), in flashparity's layout and dtype. Unsupported when the case is
    outside what the kernel supports; KernelFailed when it raises or returns another shape or dtype."""
    from .adapters import Unsupported, host_array

    cc = _conformance_case(case)
    if case.device not in adapter.devices:
        raise Unsupported(f"{adapter.name} runs on {' and '.join(adapter.devices)} only (this case: --device "
                          f"{case.device})")
    adapter.device = case.device
    reasons = adapter.not_supported_reasons(cc)
    if reasons:
        raise Unsupported(f"{adapter.name} does not support this case: {'; '.join(reasons)}")
    inputs: dict[str, Any] = {"alibi_slopes": alibi_slopes(case.num_heads) if case.alibi else None}
    if cc.fp8:  # (kernel parity's FP8 cases run with unit descales)
        inputs.update({n: np.ones((cc.batch, cc.heads_kv), np.float32) for n in ("q_descale", "k_descale", "v_descale")})
    if cc.kind == "varlen":
        cu = np.array(meta["cu_seqlens"], np.int32)
        inputs.update(q=q.copy(), k=k.copy(), v=v.copy(), cu_seqlens_q=cu, cu_seqlens_k=cu.copy(),
                      max_seqlen_q=cc.seqlen_q, max_seqlen_k=cc.seqlen_k)
    elif cc.kind == "paged":
        inputs.update(q=q.copy(), k_cache=k.copy(), v_cache=v.copy(),
                      cache_seqlens=np.array(meta["cache_seqlens"], np.int32),
                      block_table=np.array(meta["block_table"], np.int32))
    else:
        inputs.update(q=q.copy(), k=k.copy(), v=v.copy())
    try:
        out, _ = adapter.run(cc, inputs)
        out = host_array(out, "output")
    except Unsupported:
        raise
    except Exception as exc:  # (the kernel under test's own exception: its verdict, one line)
        raise KernelFailed(f"{adapter.name} raised {type(exc).__name__}: {exc}") from exc
    want = _numpy_dtype(cc.out_dtype)
    if out.shape != q.shape or out.dtype != want:
        raise KernelFailed(f"{adapter.name} returned {out.dtype} {out.shape}; expected {np.dtype(want)} {q.shape}")
    return out


def _one(impl: str, ref: str, case: Case, adapter: Any = None, backward: bool = False) -> dict[str, Any]:
    q, k, v, meta = case_inputs(case)
    out = _run(impl, q, k, v, meta, case) if adapter is None else _run_adapter(adapter, q, k, v, meta, case)
    ref_out = _run(ref, q, k, v, meta, case)
    # float64 reference of the same (rounded) inputs, and the naive kernel in the case's dtype
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    exact = _run("naive", q64, k64, v64, meta, case)
    baseline = ref_out if ref == "naive" else _run("naive", q, k, v, meta, case)
    stats = parity(out, ref_out)
    ref_err = parity(out, exact).max_abs_diff
    base_err = parity(baseline, exact).max_abs_diff
    body: dict[str, Any] = {
        "kernel": impl,
        "reference": ref,
        "seq_len": case.seq_len,
        "num_heads": case.num_heads,
        "num_kv_heads": case.num_kv_heads,
        "head_dim": case.head_dim,
        "seed": case.seed,
        "regime": case.regime,
        "max_abs_diff": stats.max_abs_diff,
        "cosine_sim": stats.cosine_sim,
        "attn_impl": impl if adapter is None else getattr(adapter, "attn_impl", impl),
        "kernel_source": kernel_source(impl) if adapter is None else adapter.kernel_source(),
        "fallback": None if impl == "flash2" or adapter is not None else "requested",
        "batch": case.batch,
        "seqlen_q": case.q_len,
        "causal": case.causal,
        "window": list(case.window),
        "softcap": case.softcap,
        "alibi": case.alibi,
        "varlen": None if case.varlen is None else list(case.varlen),
        "page_size": case.page_size,
        "dtype": case.dtype,
        "device": case.device,
    }
    extra = stats.to_dict()
    for key in ("numel", "max_abs_index", "max_rel_diff", "max_rel_index", "mismatches", "nonfinite",
                "equal_inf", "mean_abs_diff", "rmse", "snr_db", "pcc", "max_ulp_diff", "ulp_dtype"):
        body[key] = extra[key]
    body["ref_max_abs_diff"] = ref_err
    body["baseline_max_abs_diff"] = base_err
    body["fa2_rule_ok"] = bool(ref_err <= 2 * base_err + FA2_RULE_SLACK)
    if backward:
        body["backward"] = _backward(impl, case, adapter, q, k, v, meta)
        body["backward_ok"] = _backward_ok([body])
    return body


def _backward_ok(bodies: list[dict[str, Any]]) -> bool:
    """No case's gradients failed or raised (unsupported ones are listed, never failures)."""
    return all(b["backward"]["verdict"] in ("pass", "unsupported") for b in bodies)


def default_sweep(base: Case, backward: bool = False) -> list[Case]:
    """Prefill and decode cases across head dims and dtypes (the base case's other settings), and
    ALiBi prefill and decode cases per dtype, a varlen batch and a paged cache per dtype; the FP8
    formats at head dims 64 and 128, prefill and decode, and a paged cache each. ``backward``: per
    dtype also a GQA causal prefill and a causal sliding-window prefill of half as many queries as
    keys (keys no query sees, whose gradients must be exactly 0), where the base case has neither."""
    cases = []
    for dtype in ("float32", "bfloat16", "float16"):
        for head_dim in (64, 128, 96, 80):
            for seqlen_q in (None, base.seq_len):
                fields = asdict(base) | {"dtype": dtype, "head_dim": head_dim, "seqlen_q": seqlen_q,
                                         "causal": base.causal or seqlen_q is not None}
                cases.append(Case(**fields))
        if not base.alibi:
            for seqlen_q in (None, base.seq_len):
                cases.append(Case(**(asdict(base) | {"dtype": dtype, "seqlen_q": seqlen_q, "alibi": True,
                                                     "causal": base.causal or seqlen_q is not None})))
        if base.layout == "dense":  # serving layouts: a varlen prefill batch, a paged decode cache
            lens = (base.seq_len, 1, max(1, base.seq_len // 3) + 2, 0, 2 * base.seq_len - 1)
            cases.append(Case(**(asdict(base) | {"dtype": dtype, "varlen": lens, "causal": True})))
            cases.append(Case(**(asdict(base) | {"dtype": dtype, "varlen": lens, "page_size": 16, "seqlen_q": None})))
        if backward and base.layout == "dense":
            if base.num_kv_heads == base.num_heads and base.num_heads > 1:
                kv = max(d for d in range(1, base.num_heads) if base.num_heads % d == 0)
                cases.append(Case(**(asdict(base) | {"dtype": dtype, "seqlen_q": base.seq_len, "causal": True,
                                                     "num_kv_heads": kv})))
            if base.window == (-1, -1):
                cases.append(Case(**(asdict(base) | {"dtype": dtype, "seqlen_q": max(1, base.seq_len // 2),
                                                     "causal": True, "window": (max(1, base.seq_len // 8), 0)})))
    for dtype in ("float8_e4m3fn", "float8_e5m2"):
        for head_dim in (64, 128):
            for seqlen_q in (None, base.seq_len):
                cases.append(Case(**(asdict(base) | {"dtype": dtype, "head_dim": head_dim, "seqlen_q": seqlen_q,
                                                     "causal": base.causal or seqlen_q is not None})))
        if base.layout == "dense":
            lens = (base.seq_len, 1, max(1, base.seq_len // 3) + 2, 0, 2 * base.seq_len - 1)
            cases.append(Case(**(asdict(base) | {"dtype": dtype, "varlen": lens, "page_size": 16, "seqlen_q": None})))
    return cases


def kernel_parity(impl: Any = "flash2", ref: str = "naive", *, sweep: bool | list[Case] = False,
                  convention: str | None = None, capabilities: dict | None = None, allow_unpinned: bool = False,
                  backward: bool = False, **case: Any) -> dict[str, Any]:
    """Parity of attention ``impl`` against ``ref`` on seeded inputs: the kernel parity JSON body.

    ``impl``: ``flash2`` (apr's ``tiled``) or ``naive``, or any kernel :func:`flashparity.kernels.conformance`
    takes — a built-in adapter's name (``torch-sdpa:math``, ...), ``"package.module:function"`` or
    a callable with ``convention=`` (and ``capabilities=``); such a kernel runs
    float32/float16/bfloat16 cases (dense, varlen and paged, where it supports them) on the case's
    device (its inputs copied there as torch tensors), its adapter's name in ``kernel`` and ``attn_impl``
    and its provenance in ``kernel_source``. ``case`` takes :class:`Case`'s fields (apr's
    seq_len=128, num_heads=8, num_kv_heads=8, head_dim=64, seed=0 and decode regime by default).
    ``sweep=True`` runs :func:`default_sweep` (or pass a list of cases): the body then holds
    ``cases`` and its top-level ``max_abs_diff`` is the largest and ``cosine_sim`` the smallest over
    them, ``fa2_rule_ok`` their conjunction; cases an adapter's kernel does not support are listed
    under ``unsupported`` instead. Raises :class:`~flashparity.UnsupportedHeadDimError` for a
    head_dim the kernel rejects, :class:`flashparity.kernels.adapters.Unsupported` for a single case
    outside an adapter's kernel.

    ``backward=True`` also judges the gradients: each case draws a seeded output gradient
    (:func:`make_dout`) and its body gains ``backward`` (``verdict`` pass, fail, unsupported or
    error, ``reason``, and for each of ``dq``, ``dk``, ``dv`` its ``max_abs_diff`` against the float64
    gold, the naive backward's in the case's dtype as ``baseline_max_abs_diff``, their ``ratio`` to
    FlashAttention-2's bound ``2 * baseline + 1e-5`` and ``fa2_rule_ok``; ``masked_keys``, the keys no
    query sees, and ``masked_keys_zero``, whether the kernel gave them exactly 0) and
    ``backward_ok``; the sweep body ``backward_ok`` (their conjunction) and ``backward_counts``.
    flash2 and naive take :func:`flashparity.attention_backward` (varlen batches
    :func:`flashparity.attention_varlen_backward`, judged per sequence); a third-party kernel's
    gradients come from ``torch.autograd.grad`` (a JAX kernel's from ``jax.vjp``) through its
    forward. Paged and FP8 cases, CUDA cases ("the CUDA backward is not built yet") and kernels with
    no gradients are ``unsupported`` with the reason. The sweep adds a GQA and a sliding-window case per dtype.
    """
    if not isinstance(backward, bool):
        raise TypeError(f"backward must be a bool, got {backward!r}")
    adapter = None
    if not (isinstance(impl, str) and IMPL_ALIASES.get(impl, impl) in IMPLS):
        from .adapters import resolve

        adapter = resolve(impl, convention=convention, capabilities=capabilities, allow_unpinned=allow_unpinned)
        adapter.prepare()
        impl = adapter.name
    elif convention is not None or capabilities is not None:
        raise ValueError(f"convention= and capabilities= are for third-party kernels, not {impl!r}")
    else:
        impl = IMPL_ALIASES.get(impl, impl)
    ref = IMPL_ALIASES.get(ref, ref)
    if ref not in IMPLS:
        raise ValueError(f"ref must be one of {', '.join(IMPLS)} (or apr's 'tiled'), got {ref!r}")
    base = Case(**case)
    if base.device == "cuda":
        from .._build import build_info

        if not build_info()["cuda_available"]:
            raise RuntimeError("no-gpu: no usable CUDA device (or this build has no CUDA kernels)")
    if sweep is False:
        return _one(impl, ref, base, adapter, backward)
    cases = (default_sweep(base, backward=True) if backward else default_sweep(base)) if sweep is True else list(sweep)
    unsupported = []
    if adapter is not None:
        from .adapters import Unsupported

        bodies = []
        for c in cases:
            try:
                bodies.append(_one(impl, ref, c, adapter, backward))
            except Unsupported as exc:  # (a layout or dtype the adapter does not take; a raise is no skip)
                unsupported.append({"case": asdict(c), "reason": str(exc)})
        if not bodies:
            raise ValueError(f"{adapter.name} supports none of the sweep's cases: {unsupported[0]['reason']}")
    else:
        bodies = [_one(impl, ref, c, backward=backward) for c in cases]
    worst_abs = max(bodies, key=lambda b: (b["max_abs_diff"] != b["max_abs_diff"], b["max_abs_diff"]))
    worst_cos = min(bodies, key=lambda b: (b["cosine_sim"] == b["cosine_sim"], b["cosine_sim"]))
    first = bodies[0]
    return {
        "kernel": impl,
        "reference": ref,
        "seq_len": first["seq_len"],
        "num_heads": first["num_heads"],
        "num_kv_heads": first["num_kv_heads"],
        "head_dim": first["head_dim"],
        "seed": first["seed"],
        "regime": "sweep",
        "max_abs_diff": worst_abs["max_abs_diff"],
        "cosine_sim": worst_cos["cosine_sim"],
        "attn_impl": first["attn_impl"],
        "kernel_source": first["kernel_source"],
        "fallback": first["fallback"],
        "device": first["device"],
        "fa2_rule_ok": all(b["fa2_rule_ok"] for b in bodies),
        "cases": bodies,
        **({"unsupported": unsupported} if adapter is not None else {}),
        **({"backward_ok": _backward_ok(bodies), "backward_counts": _backward_counts(bodies)} if backward else {}),
    }


def _backward_counts(bodies: list[dict[str, Any]]) -> dict[str, int]:
    out = {"pass": 0, "fail": 0, "unsupported": 0, "error": 0}
    for b in bodies:
        out[b["backward"]["verdict"]] += 1
    return out
