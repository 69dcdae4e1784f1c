"""flashparity classify: apr's classifiers on JSON bodies (KIND [FILE], or apr's lint form)."""

from __future__ import annotations

import argparse
from typing import Any

from .. import classify as C
from ._common import EXIT_FAILED, EXIT_OK, UsageError, _CLASSIFIERS, _dump, _read_json, _tolerance



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


def add_parser(sub) -> None:
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
