"""The ``flashparity`` command line (also ``python -m flashparity``).

Exit codes everywhere: 0 success / gate passed; 1 gate failed or the input was rejected;
2 usage error or unreadable input, with one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Sequence

from . import classify as C
from ._build import build_info

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_CLASSIFIERS = ("parity", "provenance", "head-dim")


class UsageError(Exception):
    """Bad arguments or unreadable input: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


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


# ------------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    info = build_info()
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
# parser
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="flashparity",
        description="Attention-kernel parity: classifiers for apr's parity, provenance and "
        "head-dim JSON bodies, and build facts. Exit codes: 0 pass, 1 gate failed or input "
        "rejected, 2 usage error or unreadable input.",
    )
    parser.add_argument("--version", action="version", version=f"flashparity {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p_info = sub.add_parser("info", help="build info: version, CUDA, devices, SIMD level, kernel sources")
    p_info.add_argument("--json", action="store_true", help="print one JSON object")
    p_info.set_defaults(func=_cmd_info)

    p_cls = sub.add_parser(
        "classify",
        help="judge a JSON body with apr's classifiers (prints the outcome JSON)",
        description="Judge apr JSON bodies. Positional form: KIND [FILE|-] prints the outcome "
        "JSON. apr's lint form: any of --parity-file/--provenance-file/--head-dim-error-file, "
        "each judged. Exit 0 when every outcome is Ok, 1 when one is not, 2 on bad usage or "
        "unreadable/invalid JSON.",
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return args.func(args)
    except UsageError as exc:
        print(f"flashparity: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `flashparity ... | head`: not an error of ours
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
