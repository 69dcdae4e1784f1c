"""flashparity run: one attention forward with its provenance body (apr run --attn)."""

from __future__ import annotations

import argparse

from .._build import build_info, kernel_source
from .._write import write_atomically
from ._common import EXIT_OK, Rejected, UsageError, _case_from, _dump, _reject, case_flags, kernel_flags, void_flags



def _load_inputs(args: argparse.Namespace):
    from ..io import BadFile, load_npy
    from ..kernels.kernel_parity import case_inputs

    given = [args.q, args.k, args.v]
    if any(given) and not all(given):
        raise UsageError("run: give all of --q, --k and --v, or none (then the shape flags and --seed make them)")
    if any(given) and (args.varlen or args.page_size):
        raise UsageError("run: --varlen and --page-size make seeded inputs; they do not take --q/--k/--v")
    if all(given):
        arrays = []
        for flag, path in zip(("--q", "--k", "--v"), given):
            try:
                arrays.append(load_npy(path, void2_as_bfloat16=args.void2_as_bfloat16, void1_as=args.void1_as))
            except OSError as exc:
                raise UsageError(f"cannot read {flag} {path!r}: {exc.strerror or exc}") from None
            except BadFile as exc:
                raise Rejected("bad-file", str(exc)) from None
        return (*arrays, {})
    return case_inputs(_case_from(args))


def _run_adapter(adapter, q, k, v, args: argparse.Namespace):
    """One forward of a third-party kernel on dense host inputs (its output in q's layout and dtype);
    Unsupported when the case is outside what it supports."""
    import numpy as np

    from ..kernels.adapters import Unsupported
    from ..kernels.adapters import host_array
    from ..kernels.conformance import ALL_DTYPES, DESCALES, Case
    from ..kernels.kernel_parity import alibi_slopes

    if q.dtype.name not in ALL_DTYPES:
        raise Unsupported(f"{adapter.name} runs {', '.join(ALL_DTYPES)} inputs, not {q.dtype.name}")
    case = Case(dtype=q.dtype.name, batch=q.shape[0], seqlen_q=q.shape[1], seqlen_k=k.shape[1], heads_q=q.shape[2],
                heads_kv=k.shape[2], head_dim=q.shape[3], causal=args.causal, window=tuple(args.window),
                softcap=args.softcap, alibi=args.alibi)
    reasons = adapter.not_supported_reasons(case)
    if reasons:
        raise Unsupported(f"{adapter.name} does not support this case: {'; '.join(reasons)}")
    inputs = {"q": q, "k": k, "v": v, "alibi_slopes": alibi_slopes(q.shape[2]) if args.alibi else None}
    if case.fp8:  # (run's FP8 inputs carry unit descales, as flash2's own FP8 run)
        inputs.update({n: np.ones((case.batch, case.heads_kv), np.float32) for n in DESCALES})
    out, _ = adapter.run(case, inputs)
    return host_array(out, "output")


def _torch_sees_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _cmd_run(args: argparse.Namespace) -> int:
    import time

    from ..kernels.adapters import Unsupported
    from ..kernels.attention import UnsupportedHeadDimError
    from ..kernels.kernel_parity import run_attention

    try:
        q, k, v, meta = _load_inputs(args)
    except Rejected as exc:
        return _reject(args, exc)
    impl = {"tiled": "flash2"}.get(args.attn, args.attn)
    adapter = None
    no_gpu = None
    if impl not in ("flash2", "naive"):
        from ..kernels.adapters import resolve
        from ..kernels.conformance import prepare_adapter

        try:  # (a kernel name, a convention or a device the kernel does not run on that is wrong: usage)
            devices = resolve(impl, convention=args.convention, allow_unpinned=True).devices
            if args.device not in devices:
                raise ValueError(f"--attn {args.attn} runs on {' and '.join(devices)} only, not --device {args.device}")
            if args.device == "cuda" and not _torch_sees_cuda():
                no_gpu = f"no usable CUDA device for --attn {args.attn} (torch sees none)"
            else:
                adapter = prepare_adapter(impl, convention=args.convention, device=args.device,
                                          allow_unpinned=args.allow_unpinned)
                impl = adapter.name
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif args.convention is not None:
        raise UsageError(f"--convention is for a package.module:function kernel, not --attn {args.attn}")
    fallback = "requested" if impl == "naive" else None
    device = args.device
    if no_gpu is not None:  # (as flash2 without a GPU: an error, or with --fallback the CPU reference)
        if not args.fallback:
            return _reject(args, Rejected("no-gpu", no_gpu))
        device, impl, fallback = "cpu", "naive", "no-gpu"
    if adapter is not None and meta:
        raise UsageError(f"--attn {args.attn}: a kernel run through an adapter takes dense inputs here (no --varlen, "
                         "--page-size)")
    if adapter is None and device == "cuda" and not build_info()["cuda_available"]:
        # no usable GPU: an error, or with --fallback the CPU reference, saying why
        code, text = "no-gpu", "no usable CUDA device (or this build has no CUDA kernels)"
        if not args.fallback:
            return _reject(args, Rejected(code, text))
        device, impl, fallback = "cpu", "naive", code

    def forward(impl: str):
        from ..kernels.kernel_parity import alibi_slopes

        heads = q.shape[-2]
        if adapter is not None and impl == adapter.name:
            return _run_adapter(adapter, q, k, v, args)
        return run_attention(impl, q, k, v, device=device, causal=args.causal, window=tuple(args.window),
                             softcap=args.softcap, alibi=alibi_slopes(heads) if args.alibi else None, meta=meta)

    t0 = time.perf_counter()
    try:
        try:
            out = forward(impl)
        except (UnsupportedHeadDimError, Unsupported) as exc:
            if not args.fallback:
                return _reject(args, exc)
            impl, fallback = "naive", str(exc)
            out = forward(impl)
    except (ValueError, TypeError) as exc:
        return _reject(args, Rejected("bad-input", str(exc)))
    elapsed = time.perf_counter() - t0
    if args.out:
        import numpy as np

        try:  # (to the path as given: np.save on a file object adds no .npy suffix)
            write_atomically(args.out, lambda fh: np.save(fh, out, allow_pickle=False))
        except OSError as exc:
            raise UsageError(f"cannot write --out {args.out!r}: {exc.strerror or exc}") from None
    ran_adapter = adapter is not None and impl == adapter.name
    body = {
        "attn_impl": getattr(adapter, "attn_impl", impl) if ran_adapter else impl,
        "kernel_source": adapter.kernel_source() if ran_adapter else kernel_source(impl),
        "fallback": fallback,
        "device": device,
        "dtype": q.dtype.name,
        "out_dtype": out.dtype.name,  # (bfloat16 for FP8 inputs)
        "q_shape": list(q.shape),
        "k_shape": list(k.shape),
        "v_shape": list(v.shape),
        "causal": args.causal,
        "window": list(args.window),
        "softcap": args.softcap,
        "alibi": args.alibi,
        "varlen": None if args.varlen is None else list(args.varlen),
        "page_size": args.page_size,
        "out": args.out,
        "elapsed_ms": elapsed * 1e3,
    }
    print(_dump(body))
    return EXIT_OK


def add_parser(sub) -> None:
    p_run = sub.add_parser("run", help="one attention forward; prints the run provenance body (apr run --attn)",
                           description="One attention forward on --q/--k/--v .npy files or seeded inputs of the "
                           "given shape. Prints the provenance body (attn_impl, kernel_source, fallback, ...). "
                           "An unsupported head_dim or an unusable --device is an error (exit 1) unless "
                           "--fallback, which runs naive instead (on the CPU when the GPU is the problem) and says why.")
    p_run.add_argument("--attn", default="flash2", metavar="KERNEL",
                       help="implementation: flash2 (apr's tiled) or naive, or any kernel kernel parity --impl takes "
                       "(a built-in adapter, hub:ORG/REPO@COMMIT, or package.module:function with --convention): "
                       "dense inputs")
    kernel_flags(p_run)
    p_run.add_argument("--fallback", action="store_true", help="fall back to naive (and say why) instead of failing")
    p_run.add_argument("--q", metavar="FILE", help=".npy [batch, seqlen_q, heads_q, head_dim]")
    p_run.add_argument("--k", metavar="FILE", help=".npy [batch, seqlen_k, heads_kv, head_dim]")
    p_run.add_argument("--v", metavar="FILE", help=".npy [batch, seqlen_k, heads_kv, head_dim]")
    void_flags(p_run)
    case_flags(p_run)
    p_run.add_argument("--out", metavar="FILE", help="write the output as .npy to FILE (atomically: a temporary file renamed into place)")
    p_run.add_argument("--json", action="store_true", help="(the body is always JSON; accepted for apr)")
    p_run.set_defaults(func=_cmd_run)
