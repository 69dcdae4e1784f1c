"""The ``flashparity`` command line (also ``python -m flashparity``).

Exit codes, one rule for every command that judges (kernel parity, compare, classify): 0 within
tolerance; 1 outside it (a kernel failing FlashAttention-2's rule, tensors differing beyond
--max-mismatch-ratio or under --min-cosine, a tensor on one side only, a failed --check gate) or
input rejected; 2 usage error, unreadable input or a missing package, with one line on stderr and no
traceback. --report-only reports without judging: exit 0 whatever the differences.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Sequence

from . import classify as C
from ._build import build_info, kernel_source
from ._optional import missing_package
from ._write import printable, write_atomically
from .kernel_parity import DTYPES as KP_DTYPES

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_CLASSIFIERS = ("parity", "provenance", "head-dim")
FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")  # (files.FP8_FORMATS; files is imported when a command reads one)

#: The exit-code rule, said once in `flashparity --help` (each judging command's help says it for itself).
EXIT_RULE = ("Exit codes of every command that judges (kernel parity, compare, classify): 0 within "
             "tolerance; 1 outside it or input rejected (error JSON); 2 usage error, unreadable input or a "
             "missing package (one line on stderr). --report-only (kernel parity, compare) reports without "
             "judging: exit 0.")


class UsageError(Exception):
    """Bad arguments or unreadable input: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _number_in(name: str, lo: int, hi: int):
    """argparse type: a number from lo to hi (NaN is none: it fails the comparison)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be a number from {lo} to {hi}, got {text!r}")
        return value

    return parse


def _nonempty(name: str):
    """argparse type: a non-empty string."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{name} needs a scheduler address such as tcp://host:8786")
        return text

    return parse


def _tolerance(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"{name} must be a finite number >= 0, got {text!r}")
        return value

    parse.__name__ = name
    return parse


def _int_at_least(name: str, minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {text!r}")
        return value

    return parse


def _lengths(text: str) -> tuple[int, ...]:
    """--varlen: comma-separated sequence lengths >= 0."""
    try:
        lens = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--varlen must be comma-separated integers, got {text!r}") from None
    if any(n < 0 for n in lens):
        raise argparse.ArgumentTypeError(f"--varlen lengths must be >= 0, got {text!r}")
    return lens


def _dump(obj: Any) -> str:
    # Python's json writes NaN/Infinity as bare tokens: a parity report never hides a NaN.
    return json.dumps(obj, allow_nan=True)


def _read_json(path: str) -> Any:
    """Parse a JSON file (``-`` is stdin); any failure is a UsageError naming the file."""
    label = "<stdin>" if path == "-" else repr(path)
    try:
        if path == "-":
            data = sys.stdin.buffer.read() if sys.stdin is not None else b""
        else:
            with open(path, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read {label}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{label} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{label} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise UsageError(f"{label} is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # (an integer past Python's digit limit)
        raise UsageError(f"{label} is not valid JSON: {exc}") from None


# ------------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------------


def _cmd_kernels(args: argparse.Namespace) -> int:
    from .adapters import ADAPTERS, CONVENTIONS, HUB_PATTERN, adapter_status

    rows = [adapter_status(name) for name in (*ADAPTERS, HUB_PATTERN)]
    if args.json:
        print(_dump({"adapters": rows, "conventions": list(CONVENTIONS)}))
        return EXIT_OK
    width = max(len(r["name"]) for r in rows)
    lines = ["attention kernels flashparity can judge (kernel parity --impl NAME [--suite quick|default|full]):"]
    for r in rows:
        state = f"{r['package']} {r['version']}" if r["installed"] else f"not installed: {r['install']}"
        lines.append(f"  {r['name']:<{width}}  {state}" + (f"  ({r['note']})" if r.get("note") else ""))
    lines.append(f"  package.module:function with --convention {'|'.join(CONVENTIONS)}")
    print("\n".join(lines))
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    info = build_info(occupancy=True)
    if args.json:
        print(_dump(info))
        return EXIT_OK
    if info["cuda"]:
        cuda = f"CUDA {info['cuda_runtime']} compiled in ({info['cuda_compiler']}, architectures {info['cuda_architectures']}, static cudart)"
    else:
        cuda = "CPU only (built without CUDA)"
    if info["devices"]:
        devs = "; ".join(
            f"{d['index']}: {d['name']} (sm_{d['compute_capability'].replace('.', '')}, "
            f"{d['total_memory'] / 2**30:.1f} GiB, {d['multiprocessors']} SMs)"
            for d in info["devices"]
        )
    else:
        devs = f"none ({info['cuda_status']})" if info.get("cuda_status") else "none"
    lines = [
        f"flashparity {info['version']}",
        f"  build         {info['build_type']}, {info['cxx_compiler']}",
        f"  cuda          {cuda}",
        f"  cuda driver   {info['cuda_driver'] or 'none'}",
        f"  devices       {devs}",
        f"  cpu simd      {info['simd']} (detected {info['simd_detected']}: {' '.join(info['cpu_features']) or '-'})",
        f"  simd levels   {' '.join(info['simd_levels'])} (FLASHPARITY_SIMD caps the level)",
        f"  kernel digest {info['kernel_digest']}",
    ]
    lines += [f"  kernel        {src}" for src in info["kernel_source"].values()]
    print("\n".join(lines))
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# classify
# ------------------------------------------------------------------------------------------------


def _judge(which: str, body: Any, args: argparse.Namespace) -> C.Outcome:
    if which == "parity":
        tol_abs = C.DEFAULT_MAX_ABS_DIFF if args.tol_abs is None else args.tol_abs
        tol_cos = C.DEFAULT_MIN_COSINE_SIM if args.tol_cos is None else args.tol_cos
        return C.classify_parity_numerics(body, tol_abs, tol_cos)
    if which == "provenance":
        prefix = C.KERNEL_SOURCE_PREFIX if args.kernel_source_prefix is None else args.kernel_source_prefix
        return C.classify_provenance(body, prefix)
    return C.classify_head_dim_error(body)


def _describe(outcome: C.Outcome) -> str:
    fields = " ".join(f"{k}={v!r}" for k, v in outcome.fields().items())
    return f"{outcome.kind} {fields}".rstrip()


def _cmd_classify(args: argparse.Namespace) -> int:
    lint = {
        "parity": args.parity_file,
        "provenance": args.provenance_file,
        "head-dim": args.head_dim_error_file,
    }
    lint = {k: v for k, v in lint.items() if v is not None}
    if args.kind is not None and lint:
        raise UsageError("classify: give either KIND [FILE] or the --*-file options, not both")
    if args.kind is None and lint:
        jobs = lint
    elif args.kind is not None:
        jobs = {args.kind: args.file if args.file is not None else "-"}
    else:
        raise UsageError(
            "classify: give KIND (parity|provenance|head-dim) [FILE|-], "
            "or at least one of --parity-file/--provenance-file/--head-dim-error-file"
        )
    if args.kind is None and args.file is not None:
        raise UsageError(f"classify: unexpected FILE {args.file!r} without KIND")
    if "parity" not in jobs and (args.tol_abs is not None or args.tol_cos is not None):
        raise UsageError("classify: --tol-abs/--tol-cos apply only to the parity classifier")
    if "provenance" not in jobs and args.kernel_source_prefix is not None:
        raise UsageError("classify: --kernel-source-prefix applies only to the provenance classifier")
    if list(jobs.values()).count("-") > 1:
        raise UsageError("classify: stdin ('-') can be read for only one file")

    bodies = {which: _read_json(path) for which, path in jobs.items()}  # all readable, or exit 2
    outcomes = {which: _judge(which, body, args) for which, body in bodies.items()}
    passed = all(o.ok for o in outcomes.values())

    if args.kind is not None:  # positional form: the outcome JSON itself
        print(_dump(outcomes[args.kind].to_dict()))
    elif args.json:
        print(_dump({"ok": passed, "checks": {w: o.to_dict() for w, o in outcomes.items()}}))
    else:
        for which, outcome in outcomes.items():
            verdict = "PASS" if outcome.ok else "FAIL"
            print(f"{which:<11} {verdict}  {_describe(outcome)}  ({jobs[which]})")
    return EXIT_OK if passed else EXIT_FAILED



# ------------------------------------------------------------------------------------------------
# errors as JSON bodies
# ------------------------------------------------------------------------------------------------


class Rejected(Exception):
    """The input was understood but rejected: `{"error": "<code>: <text>"}`, exit 1."""

    def __init__(self, code: str, text: str):
        super().__init__(f"{code}: {text}" if not text.startswith(code) else text)


def _reject(args: argparse.Namespace, exc: Exception) -> int:
    message = str(exc)
    if getattr(args, "json", False):
        print(_dump({"error": message}))
    else:
        print(f"flashparity: {printable(message)}", file=sys.stderr)
    return EXIT_FAILED


def _emit(args: argparse.Namespace, body: dict, human: str) -> None:
    human = "\n".join(map(printable, human.split("\n")))  # (a last guard: each line inert on a terminal)
    text = _dump(body)
    if getattr(args, "output", None):
        try:
            write_atomically(args.output, lambda fh: fh.write((text + "\n").encode("utf-8")))
        except OSError as exc:
            raise UsageError(f"cannot write {args.output!r}: {exc.strerror or exc}") from None
    print(text if args.json else human)


def _gate(args: argparse.Namespace, body: dict) -> int:
    if not args.check:
        return EXIT_OK
    tol_abs = C.DEFAULT_MAX_ABS_DIFF if args.tol_abs is None else args.tol_abs
    tol_cos = C.DEFAULT_MIN_COSINE_SIM if args.tol_cos is None else args.tol_cos
    outcome = C.classify_parity_numerics(body, tol_abs, tol_cos)
    body["check"] = outcome.to_dict()
    return EXIT_OK if outcome.ok else EXIT_FAILED


# ------------------------------------------------------------------------------------------------
# kernel parity
# ------------------------------------------------------------------------------------------------


def _case_from(args: argparse.Namespace):
    from .kernel_parity import Case

    try:
        return Case(seq_len=args.seq_len, num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
                    head_dim=args.head_dim, seed=args.seed, batch=args.batch, seqlen_q=args.seqlen_q,
                    causal=args.causal, window=tuple(args.window), softcap=args.softcap, alibi=args.alibi,
                    varlen=args.varlen, page_size=args.page_size, dtype=args.dtype or "float32",
                    device=args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _cmd_conformance(args: argparse.Namespace) -> int:
    """kernel parity --suite: the conformance suite of --impl (flashparity.conformance)."""
    from .conformance import ALL_DTYPES, DTYPES, conformance

    if args.check or args.sweep:
        raise UsageError("--suite runs the conformance suite, judged by its own rules; --check and --sweep are "
                         "for single kernel parity bodies")
    case_defaults = {"seq_len": 128, "seqlen_q": None, "batch": 1, "num_heads": 8, "num_kv_heads": 8, "head_dim": 64,
                     "window": (-1, -1), "softcap": 0.0, "causal": False, "alibi": False, "varlen": None,
                     "page_size": None, "ref": "naive"}
    given = [name for name, default in case_defaults.items()
             if (tuple(getattr(args, name)) if name == "window" else getattr(args, name)) != default]
    if given:
        raise UsageError(f"--suite runs its own cases; {', '.join('--' + n.replace('_', '-') for n in given)} "
                         "shape one kernel parity case (drop them, or drop --suite)")
    if args.dtype is not None and args.dtype not in ALL_DTYPES:
        raise UsageError(f"--suite runs {', '.join(ALL_DTYPES)} cases, got --dtype {args.dtype}")
    impl = {"flash2": "flashparity:flash2", "tiled": "flashparity:flash2", "naive": "flashparity:naive"}.get(
        args.impl, args.impl)
    try:
        rep = conformance(impl, convention=args.convention, suite=args.suite,
                          dtypes=[args.dtype] if args.dtype else DTYPES, seed=args.seed, device=args.device,
                          allow_unpinned=args.allow_unpinned)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.html:
        try:
            rep.to_html(args.html)
        except OSError as exc:
            raise UsageError(f"cannot write {args.html!r}: {exc.strerror or exc}") from None
    _emit(args, rep.to_dict(), str(rep))
    return _verdict(args, EXIT_OK if rep.ok else EXIT_FAILED)


def _cmd_kernel_parity(args: argparse.Namespace) -> int:
    from .adapters import Unsupported
    from .attention import UnsupportedHeadDimError
    from .kernel_parity import kernel_parity

    if args.suite:
        return _cmd_conformance(args)
    if args.html:
        raise UsageError("--html writes the conformance report of --suite")
    case = _case_from(args)
    if args.impl not in ("flash2", "naive", "tiled"):
        from .adapters import resolve

        try:  # (a kernel name or convention that names nothing: usage, before anything runs)
            resolve(args.impl, convention=args.convention, allow_unpinned=args.allow_unpinned)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif args.convention is not None:
        raise UsageError(f"--convention is for a package.module:function kernel, not --impl {args.impl}")
    from .kernel_parity import KernelFailed

    try:
        body = kernel_parity(args.impl, args.ref, sweep=args.sweep, convention=args.convention,
                             allow_unpinned=args.allow_unpinned, **case.__dict__)
    except (UnsupportedHeadDimError, Unsupported, KernelFailed, ValueError) as exc:
        return _reject(args, exc)
    except RuntimeError as exc:
        return _reject(args, exc)
    code = _gate(args, body)
    if not body["fa2_rule_ok"]:
        code = EXIT_FAILED
    if "cases" in body:
        lines = [f"kernel parity {body['kernel']} vs {body['reference']}: {len(body['cases'])} cases"]
        for c in body["cases"]:
            regime = c["regime"] + ("+alibi" if c["alibi"] else "") + (
                "+paged" if c["page_size"] else "+varlen" if c["varlen"] else "")
            lines.append(f"  {c['dtype']:<13} {regime:<14} D={c['head_dim']:<3} max_abs_diff {c['max_abs_diff']:.3g}"
                         f"  cosine {c['cosine_sim']:.8f}  fa2_rule {'ok' if c['fa2_rule_ok'] else 'FAILED'}")
    else:
        lines = [f"kernel parity {body['kernel']} vs {body['reference']} ({body['regime']}, {body['dtype']}, "
                 + ("ALiBi, " if body["alibi"] else "")
                 + (f"varlen {body['varlen']}, " if body["varlen"] and not body["page_size"] else "")
                 + (f"paged KV (pages of {body['page_size']}), " if body["page_size"] else "")
                 + (f"caches {body['varlen']} Sq={body['seqlen_q']} " if body["varlen"] and body["page_size"]
                    else "" if body["varlen"] else
                    f"B={body['batch']} Sq={body['seqlen_q']} Sk={body['seq_len']} ") +
                 f"H={body['num_heads']}/{body['num_kv_heads']} D={body['head_dim']}, seed {body['seed']})",
                 f"  max_abs_diff {body['max_abs_diff']:.6g} at {tuple(body['max_abs_index'])}, "
                 f"cosine_sim {body['cosine_sim']:.10g}",
                 f"  FA2 rule: kernel error {body['ref_max_abs_diff']:.3g} vs naive {body['baseline_max_abs_diff']:.3g}"
                 f" in {body['dtype']}: {'ok' if body['fa2_rule_ok'] else 'FAILED'}",
                 f"  kernel_source {body['kernel_source']}"]
    if "cases" in body:
        failed = [c for c in body["cases"] if not c["fa2_rule_ok"]]
        lines.append(f"FA2 rule: ok in all {len(body['cases'])} cases" if not failed else
                     f"FA2 rule: FAILED in {len(failed)} of {len(body['cases'])} cases")
        reasons: dict[str, int] = {}
        for u in body.get("unsupported", []):
            general = u["reason"].split(" (got")[0]  # (the same reason, whatever the case)
            reasons[general] = reasons.get(general, 0) + 1
        lines += [f"  not run ({n} cases): {reason}" for reason, n in reasons.items()]
    if "check" in body:
        lines.append(f"  check: {'PASS' if body['check']['ok'] else 'FAIL'} ({body['check']['outcome']})")
    _emit(args, body, "\n".join(lines))
    return _verdict(args, code)


def _verdict(args: argparse.Namespace, code: int) -> int:
    """The exit code of a judged report: `code`, or 0 under --report-only (which says so on stderr
    when the report would have failed)."""
    if args.report_only and code != EXIT_OK:
        print("flashparity: --report-only: outside the tolerance, exit 0 all the same", file=sys.stderr)
        return EXIT_OK
    return code


# ------------------------------------------------------------------------------------------------
# run
# ------------------------------------------------------------------------------------------------


def _load_inputs(args: argparse.Namespace):
    from .files import BadFile, load_npy
    from .kernel_parity import case_inputs

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

    from .adapters import Unsupported
    from .adapters import host_array
    from .conformance import ALL_DTYPES, DESCALES, Case
    from .kernel_parity import alibi_slopes

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

    from .adapters import Unsupported
    from .attention import UnsupportedHeadDimError
    from .kernel_parity import run_attention

    try:
        q, k, v, meta = _load_inputs(args)
    except Rejected as exc:
        return _reject(args, exc)
    impl = {"tiled": "flash2"}.get(args.attn, args.attn)
    adapter = None
    no_gpu = None
    if impl not in ("flash2", "naive"):
        from .adapters import resolve
        from .conformance import prepare_adapter

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
        from .kernel_parity import alibi_slopes

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


# ------------------------------------------------------------------------------------------------
# compare
# ------------------------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar of the bytes compared (both sides), on stderr when it is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            try:
                from tqdm import tqdm
            except ImportError:  # (a dependency; without it, no bar)
                self.enabled = False
                return
            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="compare",
                            file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.2)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_dump(path: str) -> bool:
    from .modules import is_dump

    return is_dump(path)


def _compare_dumps(args: argparse.Namespace, progress) -> int:
    """Two fp.dump directories: compare_modules' verdicts, in A's execution order."""
    from .modules import compare_dumps

    if args.check:
        raise UsageError("--check gates files; two dumps are judged per module output (exit 1 on a divergence, "
                         "or --report-only)")
    rep = compare_dumps(args.a, args.b, atol=args.atol, rtol=args.rtol, min_cosine=args.min_cosine,
                        max_mismatch_ratio=args.max_mismatch_ratio or 0.0, workers=args.workers, dask=args.dask,
                        progress=progress, void2_as_bfloat16=args.void2_as_bfloat16, void1_as=args.void1_as)
    progress.close()
    if args.html:
        try:
            rep.to_html(args.html)
        except OSError as exc:
            raise UsageError(f"cannot write {args.html!r}: {exc.strerror or exc}") from None
    body = rep.to_dict()
    fd = rep.first_divergence
    human = "" if args.json else str(rep) + (f"\nfirst_divergence: {printable(fd.key)}" if fd is not None else "")
    _emit(args, body, human)
    return _verdict(args, EXIT_OK if rep.ok else EXIT_FAILED)


def _importable_here(module: str | None) -> bool:
    """False when `module` (a ModuleNotFoundError's name) is missing in this process too."""
    import importlib.util

    try:
        return module is not None and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _cmd_compare(args: argparse.Namespace) -> int:
    from ._parallel import WorkersFailed
    from .files import BadFile, IncompatibleSides, compare_files

    progress = _Progress(enabled=not args.quiet and sys.stderr is not None and sys.stderr.isatty())
    try:
        if _is_dump(args.a) and _is_dump(args.b):
            return _compare_dumps(args, progress)
        if args.html:
            raise UsageError("--html is for two dump directories (fp.dump); A and B are not both dumps")
        body = compare_files(args.a, args.b, atol=args.atol or 0.0, rtol=args.rtol or 0.0,
                             void2_as_bfloat16=args.void2_as_bfloat16, void1_as=args.void1_as, progress=progress,
                             workers=args.workers, dask=args.dask, min_cosine=args.min_cosine,
                             max_mismatch_ratio=args.max_mismatch_ratio or 0.0)
    except ModuleNotFoundError as exc:
        if args.dask is None or not _importable_here(exc.name):  # (missing here too: main() names the fix)
            raise
        raise UsageError(f"a Dask worker cannot import {exc.name!r}: install flashparity on the workers") from None
    except BrokenPipeError:  # (a ConnectionError: stdout closed, `... | head`; main() ends quietly)
        raise
    except (ImportError, ConnectionError) as exc:  # --dask without dask.distributed, or no scheduler there
        raise UsageError(str(exc)) from None
    except WorkersFailed as exc:
        return _reject(args, Rejected("workers-failed", str(exc)))
    except OSError as exc:
        if exc.filename is None:
            raise UsageError(f"compare failed: {exc.strerror or exc}") from None
        raise UsageError(f"cannot read {exc.filename!r}: {exc.strerror or exc}") from None
    except BadFile as exc:
        return _reject(args, Rejected("bad-file", str(exc)))
    except IncompatibleSides as exc:  # (what A and B are does not fit together: a .npy file against a directory)
        raise UsageError(str(exc)) from None
    finally:
        progress.close()
    code = _gate(args, body)
    if not body["ok"]:
        code = EXIT_FAILED
    lines = [f"{'tensor':<32} {'shape':<18} {'dtypes':<19} {'max_abs_diff':>12} {'cosine_sim':>14} "
             f"{'mismatches':>22}  ok"]
    for r in body["tensors"]:
        shape = "x".join(map(str, r["shape"])) or "scalar"
        dts = "/".join(r["dtypes"])
        name = printable(r["name"])[:32]  # (names come from the files: untrusted)
        if "error" in r:
            lines.append(f"{name:<32} {shape:<18} {dts:<19} {printable(r['error'])}")
        elif r.get("numel", 0) == 0:
            lines.append(f"{name:<32} {shape:<18} {dts:<19} (empty)")
        elif r.get("exact"):
            lines.append(f"{name:<32} {shape:<18} {dts:<19} {r['max_abs_diff']:>12.4g} {'(exact)':>14} "
                         f"{r['mismatches']:>10,} / {r['numel']:<10,} {'ok' if r['ok'] else 'NO'}")
        else:
            lines.append(f"{name:<32} {shape:<18} {dts:<19} {r['max_abs_diff']:>12.4g} "
                         f"{r['cosine_sim']:>14.10f} {r['mismatches']:>10,} / {r['numel']:<10,} "
                         f"{'ok' if r['ok'] else 'NO'}")
    if body["only_in_a"]:
        lines.append(f"only in {printable(args.a)}: {', '.join(map(printable, body['only_in_a']))}")
    if body["only_in_b"]:
        lines.append(f"only in {printable(args.b)}: {', '.join(map(printable, body['only_in_b']))}")
    lines.append(f"worst max_abs_diff {body['max_abs_diff']:.6g}, worst cosine_sim {body['cosine_sim']:.10g}")
    lines.append(_compare_verdict(body))
    if "check" in body:
        lines.append(f"check: {'PASS' if body['check']['ok'] else 'FAIL'} ({body['check']['outcome']})")
    _emit(args, body, "\n".join(lines))
    return _verdict(args, code)


def _compare_verdict(body: dict) -> str:
    """The line that says why a file comparison passed or failed."""
    rule = f"isclose(atol={body['atol']:g}, rtol={body['rtol']:g})"
    rule += f", mismatches <= {body['max_mismatch_ratio']:g}" if body["max_mismatch_ratio"] else ", no mismatch"
    if body["min_cosine"] is not None:
        rule += f", cosine >= {body['min_cosine']:g}"
    rows = body["tensors"]
    if body["ok"]:
        return f"OK: {len(rows)} tensors within {rule}"
    why = [] if rows else ["no tensor to compare"]
    outside = sum(1 for r in rows if not r["ok"] and "error" not in r)
    if outside:
        why.append(f"{outside} of {len(rows)} tensors outside {rule}")
    broken = sum(1 for r in rows if "error" in r)
    if broken:
        why.append(f"{broken} not compared")
    one_side = len(body["only_in_a"]) + len(body["only_in_b"])
    if one_side:
        why.append(f"{one_side} on one side only")
    return "FAIL: " + "; ".join(why)


# ------------------------------------------------------------------------------------------------
# parser
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="flashparity",
        description="Attention-kernel parity: kernel parity checks, attention runs with provenance, "
        "tensor file comparison, apr's classifiers, build facts. " + EXIT_RULE,
    )
    parser.add_argument("--version", action="version", version=f"flashparity {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p_info = sub.add_parser("info", help="build info: version, CUDA, devices, SIMD level, kernel sources")
    p_info.add_argument("--json", action="store_true", help="print one JSON object")
    p_info.set_defaults(func=_cmd_info)

    p_kernels = sub.add_parser("kernels", help="the attention kernels kernel parity --impl can judge, and whether "
                               "each is installed")
    p_kernels.add_argument("--json", action="store_true", help="print one JSON object")
    p_kernels.set_defaults(func=_cmd_kernels)

    def case_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seq-len", type=_int_at_least("--seq-len", 1), default=128, metavar="N",
                       help="keys per sequence (the KV cache length; default 128)")
        p.add_argument("--seqlen-q", type=_int_at_least("--seqlen-q", 1), default=None, metavar="N",
                       help="queries per sequence (default 1: apr's decode regime)")
        p.add_argument("--batch", type=_int_at_least("--batch", 1), default=1, metavar="N", help="batch size (default 1)")
        p.add_argument("--num-heads", type=_int_at_least("--num-heads", 1), default=8, metavar="N", help="query heads (8)")
        p.add_argument("--num-kv-heads", type=_int_at_least("--num-kv-heads", 1), default=8, metavar="N",
                       help="key/value heads (8; fewer is GQA/MQA)")
        p.add_argument("--head-dim", type=_int_at_least("--head-dim", 1), default=64, metavar="D", help="head dim (64)")
        p.add_argument("--seed", type=_int_at_least("--seed", 0), default=0, metavar="S", help="input seed (0)")
        p.add_argument("--dtype", choices=KP_DTYPES, default=None,
                       help="input dtype (float32; with --suite, every dtype of the suite); the FP8 formats run "
                       "with unit descales and give bfloat16 outputs")
        p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="where the kernels run (cuda: the CUDA kernels on GPU 0, inputs copied there)")
        p.add_argument("--causal", action="store_true", help="causal mask (bottom-right aligned)")
        p.add_argument("--window", type=int, nargs=2, default=(-1, -1), metavar=("LEFT", "RIGHT"),
                       help="sliding window (-1: unbounded)")
        p.add_argument("--softcap", type=_tolerance("--softcap"), default=0.0, metavar="C",
                       help="softcap·tanh(s/softcap) on the scores (0: off)")
        p.add_argument("--alibi", action="store_true",
                       help="ALiBi with the paper's slopes for --num-heads (-slope·|i + Sk - Sq - j| on the scores)")
        p.add_argument("--varlen", type=_lengths, metavar="LENS",
                       help="a packed varlen batch (fp.attention_varlen): comma-separated sequence lengths, each "
                       "sequence's queries and keys; with --page-size, the KV cache lengths")
        p.add_argument("--page-size", type=_int_at_least("--page-size", 1), metavar="N",
                       help="a paged KV cache of N-key pages and a seeded block table (fp.attention_kvcache): "
                       "--batch caches of --seq-len keys (or --varlen's lengths), --seqlen-q queries each")

    def gate_flags(p: argparse.ArgumentParser) -> None:
        judging = p.add_mutually_exclusive_group()  # (both given: a usage error before any work)
        judging.add_argument("--check", action="store_true",
                             help="also gate with apr's parity classifier: exit 1 unless max_abs_diff <= tol-abs "
                             "and cosine_sim >= tol-cos")
        judging.add_argument("--report-only", action="store_true",
                             help="report without judging: exit 0 whatever the differences (not with --check)")
        p.add_argument("--tol-abs", type=_tolerance("--tol-abs"), metavar="X",
                       help=f"max_abs_diff tolerance of --check (default {C.DEFAULT_MAX_ABS_DIFF})")
        p.add_argument("--tol-cos", type=_tolerance("--tol-cos"), metavar="Y",
                       help=f"cosine_sim floor of --check (default {C.DEFAULT_MIN_COSINE_SIM})")

    p_kernel = sub.add_parser("kernel", help="kernel checks (kernel parity)")
    ksub = p_kernel.add_subparsers(dest="kernel_command", metavar="KERNEL_COMMAND", parser_class=_Parser)
    p_kp = ksub.add_parser(
        "parity",
        help="run an attention kernel and its reference on seeded inputs and report parity (apr kernel parity)",
        description="A drop-in for `apr kernel parity --json`: runs --impl and --ref on seeded random inputs "
        "(decode regime by default: one query over a --seq-len KV cache) and prints the parity body, "
        "with FlashAttention-2's rule (kernel error <= 2 x naive error in the same dtype + 1e-5). "
        "Exit 0 when every case meets the rule (and --check's gate, if given), 1 when one does not or the "
        "input is rejected, 2 on a usage error; --report-only: exit 0 whatever the errors.",
    )
    p_kp.add_argument("--impl", default="flash2", metavar="KERNEL",
                      help="kernel under test: flash2 (apr's tiled) or naive, a built-in adapter (flashparity "
                      "kernels lists them: torch-sdpa, torch-sdpa:math, flash-attn, ...), a Hugging Face hub kernel "
                      "hub:ORG/REPO@COMMIT, or package.module:function with --convention")
    p_kp.add_argument("--convention", metavar="NAME",
                      help="calling convention of a package.module:function kernel: bshd, bshd-numpy, fa2, fa2-varlen, fa2-kvcache, fa3, fa3-varlen, fa3-kvcache, sdpa, flashinfer, xformers or jax")
    p_kp.add_argument("--allow-unpinned", action="store_true",
                      help="let a hub:ORG/REPO@REVISION kernel's revision be a branch or tag (reported as unpinned)")
    p_kp.add_argument("--suite", choices=("quick", "default", "full"),
                      help="run the conformance suite instead of one case: every case judged against the float64 "
                      "oracle (max, mean, LSE and cosine rules); unsupported cases are listed, never failures")
    p_kp.add_argument("--html", metavar="FILE", help="with --suite: also write the report as a self-contained HTML page")
    p_kp.add_argument("--ref", choices=("naive", "flash2", "tiled"), default="naive", help="reference (naive)")
    case_flags(p_kp)
    p_kp.add_argument("--sweep", action="store_true",
                      help="a grid of prefill and decode cases across head dims 64/128/96/80 and float32/bfloat16/float16, "
                      "plus per dtype ALiBi prefill and decode cases, a varlen prefill batch and a paged decode cache, "
                      "and float8_e4m3fn/float8_e5m2 prefill and decode at head dims 64/128 and a paged cache each")
    gate_flags(p_kp)
    p_kp.add_argument("--json", action="store_true", help="print the JSON body")
    p_kp.add_argument("-o", "--output", metavar="FILE", help="also write the JSON body to FILE")
    p_kp.set_defaults(func=_cmd_kernel_parity)

    p_run = sub.add_parser("run", help="one attention forward; prints the run provenance body (apr run --attn)",
                           description="One attention forward on --q/--k/--v .npy files or seeded inputs of the "
                           "given shape. Prints the provenance body (attn_impl, kernel_source, fallback, ...). "
                           "An unsupported head_dim or an unusable --device is an error (exit 1) unless "
                           "--fallback, which runs naive instead (on the CPU when the GPU is the problem) and says why.")
    p_run.add_argument("--attn", default="flash2", metavar="KERNEL",
                       help="implementation: flash2 (apr's tiled) or naive, or any kernel kernel parity --impl takes "
                       "(a built-in adapter, hub:ORG/REPO@COMMIT, or package.module:function with --convention): "
                       "dense inputs")
    p_run.add_argument("--convention", metavar="NAME",
                       help="calling convention of a package.module:function kernel: bshd, bshd-numpy, fa2, fa2-varlen, fa2-kvcache, fa3, fa3-varlen, fa3-kvcache, sdpa, flashinfer, xformers or jax")
    p_run.add_argument("--allow-unpinned", action="store_true",
                       help="let a hub:ORG/REPO@REVISION kernel's revision be a branch or tag (reported as unpinned)")
    p_run.add_argument("--fallback", action="store_true", help="fall back to naive (and say why) instead of failing")
    p_run.add_argument("--q", metavar="FILE", help=".npy [batch, seqlen_q, heads_q, head_dim]")
    p_run.add_argument("--k", metavar="FILE", help=".npy [batch, seqlen_k, heads_kv, head_dim]")
    p_run.add_argument("--v", metavar="FILE", help=".npy [batch, seqlen_k, heads_kv, head_dim]")
    p_run.add_argument("--void2-as-bfloat16", action="store_true",
                       help="read 2-byte void .npy elements (NumPy's way of saving bfloat16) as bfloat16")
    p_run.add_argument("--void1-as", choices=FP8_FORMATS, metavar="FP8",
                       help="read 1-byte void .npy elements (NumPy's way of saving float8_e4m3fn) as this FP8 "
                       "format: float8_e4m3fn or float8_e5m2 (float8_e5m2's own .npy files are read as such)")
    case_flags(p_run)
    p_run.add_argument("--out", metavar="FILE", help="write the output as .npy to FILE (atomically: a temporary file renamed into place)")
    p_run.add_argument("--json", action="store_true", help="(the body is always JSON; accepted for apr)")
    p_run.set_defaults(func=_cmd_run)

    p_cmp = sub.add_parser("compare", help="parity of two tensor files or directories (.npy, .npz, .safetensors)",
                           description="Streams both sides in chunks (bounded memory) and reports per-tensor "
                           "parity. A side is a file or a directory: a sharded checkpoint with a "
                           "*.safetensors.index.json (the two sides may be sharded differently), or any tree of "
                           "tensor files (.safetensors tensors under their own names, a .npy file under its relative "
                           "path without the suffix, a .npz member as that path/member). Tensors are matched by "
                           "name. Exit 0 when every tensor is within the tolerance: at most --max-mismatch-ratio of its "
                           "elements (default 0: none) outside isclose(--atol, --rtol), and a cosine similarity of "
                           "at least --min-cosine when given; exit 1 when one is not, when a tensor is on one side "
                           "only or cannot be compared (shape, dtype), or when --check's gate of the worst "
                           "max_abs_diff and cosine_sim fails; exit 2 on a usage error or an unreadable file; "
                           "--report-only: exit 0 whatever the differences. The work is split into tasks (tensors, "
                           "64 MiB ranges of large ones) run in this process, on --workers N local processes or on "
                           "a Dask cluster (--dask); the report is the same, bit for bit, in every mode. Two "
                           "fp.dump directories are judged per module output in A's execution order (default "
                           "tolerances: torch.testing.assert_close's per dtype) and the first divergence is printed; "
                           "exit 0 match, 1 divergence, 2 usage error.")
    p_cmp.add_argument("a", metavar="A", help="file or directory under test")
    p_cmp.add_argument("b", metavar="B", help="reference file or directory")
    where = p_cmp.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_int_at_least("--workers", 1), metavar="N",
                       help="run the tasks on N local worker processes (default: in this process)")
    where.add_argument("--dask", metavar="ADDRESS", type=_nonempty("--dask"),
                       help="run the tasks on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786); "
                       "its workers read the files at the same paths (needs flashparity[dask])")
    p_cmp.add_argument("--atol", type=_tolerance("--atol"), default=None, metavar="X",
                       help="isclose atol (0; for two dumps, torch.testing.assert_close's per dtype)")
    p_cmp.add_argument("--rtol", type=_tolerance("--rtol"), default=None, metavar="X",
                       help="isclose rtol (0; for two dumps, torch.testing.assert_close's per dtype)")
    p_cmp.add_argument("--html", metavar="FILE", help="two dumps: also write the HTML report to FILE")
    p_cmp.add_argument("--min-cosine", type=_number_in("--min-cosine", -1, 1), metavar="Y",
                       help="a tensor (a module output, for two dumps) also fails below this cosine similarity")
    p_cmp.add_argument("--max-mismatch-ratio", type=_number_in("--max-mismatch-ratio", 0, 1), metavar="F",
                       help="the fraction of a tensor's elements (a module output's, for two dumps) that may lie "
                       "outside atol/rtol (default 0)")
    p_cmp.add_argument("--void2-as-bfloat16", action="store_true",
                       help="read 2-byte void .npy elements (NumPy's way of saving bfloat16) as bfloat16")
    p_cmp.add_argument("--void1-as", choices=FP8_FORMATS, metavar="FP8",
                       help="read 1-byte void .npy elements (NumPy's way of saving float8_e4m3fn) as this FP8 "
                       "format: float8_e4m3fn or float8_e5m2 (float8_e5m2's own .npy files are read as such)")
    gate_flags(p_cmp)
    p_cmp.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p_cmp.add_argument("--json", action="store_true", help="print the JSON body")
    p_cmp.add_argument("-o", "--output", metavar="FILE", help="also write the JSON body to FILE")
    p_cmp.set_defaults(func=_cmd_compare)

    p_cls = sub.add_parser(
        "classify",
        help="judge a JSON body with apr's classifiers (prints the outcome JSON)",
        description="Judge apr JSON bodies. Positional form: KIND [FILE|-] prints the outcome "
        "JSON. apr's lint form: any of --parity-file/--provenance-file/--head-dim-error-file, "
        "each judged. Exit 0 when every outcome is Ok, 1 when one is not, 2 on bad usage or "
        "unreadable/invalid JSON (the rule of every command that judges).",
    )
    p_cls.add_argument("kind", nargs="?", choices=_CLASSIFIERS, metavar="KIND",
                       help="parity | provenance | head-dim")
    p_cls.add_argument("file", nargs="?", metavar="FILE", help="JSON file, or - for stdin (default)")
    p_cls.add_argument("--parity-file", metavar="F", help="kernel parity body (apr kernel parity --json)")
    p_cls.add_argument("--provenance-file", metavar="F", help="run provenance body (apr run --attn ... --json)")
    p_cls.add_argument("--head-dim-error-file", metavar="F", help="error body of an unsupported head_dim")
    p_cls.add_argument("--tol-abs", type=_tolerance("--tol-abs"), metavar="X",
                       help=f"max_abs_diff tolerance (default {C.DEFAULT_MAX_ABS_DIFF})")
    p_cls.add_argument("--tol-cos", type=_tolerance("--tol-cos"), metavar="Y",
                       help=f"cosine_sim floor (default {C.DEFAULT_MIN_COSINE_SIM})")
    p_cls.add_argument("--kernel-source-prefix", metavar="P",
                       help=f"pinned kernel source prefix (default {C.KERNEL_SOURCE_PREFIX!r})")
    p_cls.add_argument("--json", action="store_true",
                       help="lint form: one JSON object {ok, checks} instead of lines")
    p_cls.set_defaults(func=_cmd_classify)
    return parser


def _check_environment() -> None:
    """FLASHPARITY_SIMD and FLASHPARITY_NUM_THREADS, read by the kernels: a bad value is a usage error
    before any work, not a traceback from the first kernel call."""
    from . import _core

    try:
        _core.simd_level()
        _core.num_threads()
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None or (args.command == "kernel" and args.kernel_command is None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        _check_environment()
        return args.func(args)
    except UsageError as exc:
        print(f"flashparity: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:  # an optional package a command needs, or one uninstalled by hand
        print(f"flashparity: error: {missing_package(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("flashparity: error: out of memory: the inputs need more memory than this machine can give "
              "(a smaller case, or fewer --workers)", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `flashparity ... | head`: not an error of ours
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
