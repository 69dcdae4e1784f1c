"""flashparity kernel parity: one case, a sweep, or the conformance suite (--suite) of any kernel."""

from __future__ import annotations

import argparse

from ._common import (
    EXIT_FAILED, EXIT_OK, UsageError, _Parser, _case_from, _emit, _gate, _reject, _verdict, case_flags,
    gate_flags, kernel_flags,
)
from .._write import printable


def _cmd_conformance(args: argparse.Namespace) -> int:
    """kernel parity --suite: the conformance suite of --impl (flashparity.kernels.conformance)."""
    from ..kernels.conformance import ALL_DTYPES, DTYPES, conformance

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
                          allow_unpinned=args.allow_unpinned, backward=args.backward)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.html:
        try:
            rep.to_html(args.html)
        except OSError as exc:
            raise UsageError(f"cannot write {args.html!r}: {exc.strerror or exc}") from None
    _emit(args, rep.to_dict(), str(rep))
    return _verdict(args, EXIT_OK if rep.ok else EXIT_FAILED)


def _backward_cell(b: dict) -> str:
    """A case's gradient verdict in one word: ok (with the largest ratio), FAILED, ERROR or unsupported."""
    if b["verdict"] == "pass":
        return f"ok (ratio {max(b[g]['ratio'] for g in ('dq', 'dk', 'dv')):.2g})"
    return "unsupported" if b["verdict"] == "unsupported" else b["verdict"].upper().replace("FAIL", "FAILED")


def _cmd_kernel_parity(args: argparse.Namespace) -> int:
    from ..kernels.adapters import Unsupported
    from ..kernels.attention import UnsupportedHeadDimError
    from ..kernels.kernel_parity import kernel_parity

    if args.suite:
        return _cmd_conformance(args)
    if args.html:
        raise UsageError("--html writes the conformance report of --suite")
    case = _case_from(args)
    if args.impl not in ("flash2", "naive", "tiled"):
        from ..kernels.adapters import resolve

        try:  # (a kernel name or convention that names nothing: usage, before anything runs)
            resolve(args.impl, convention=args.convention, allow_unpinned=args.allow_unpinned)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif args.convention is not None:
        raise UsageError(f"--convention is for a package.module:function kernel, not --impl {args.impl}")
    from ..kernels.kernel_parity import KernelFailed

    try:
        body = kernel_parity(args.impl, args.ref, sweep=args.sweep, convention=args.convention,
                             allow_unpinned=args.allow_unpinned, backward=args.backward, **case.__dict__)
    except (UnsupportedHeadDimError, Unsupported, KernelFailed, ValueError) as exc:
        return _reject(args, exc)
    except RuntimeError as exc:
        return _reject(args, exc)
    code = _gate(args, body)
    if not body["fa2_rule_ok"] or not body.get("backward_ok", True):
        code = EXIT_FAILED
    if "cases" in body:
        lines = [f"kernel parity {body['kernel']} vs {body['reference']}: {len(body['cases'])} cases"]
        for c in body["cases"]:
            regime = c["regime"] + ("+alibi" if c["alibi"] else "") + (
                "+paged" if c["page_size"] else "+varlen" if c["varlen"] else "")
            lines.append(f"  {c['dtype']:<13} {regime:<14} D={c['head_dim']:<3} max_abs_diff {c['max_abs_diff']:.3g}"
                         f"  cosine {c['cosine_sim']:.8f}  fa2_rule {'ok' if c['fa2_rule_ok'] else 'FAILED'}"
                         + (f"  backward {_backward_cell(c['backward'])}" if "backward" in c else ""))
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
        if "backward" in body:
            b = body["backward"]
            lines.append(f"  backward: {_backward_cell(b)}" + (f" ({printable(b['reason'])})" if b["reason"] else ""))
            lines += [f"    {g}: error {b[g]['max_abs_diff']:.3g} vs baseline {b[g]['baseline_max_abs_diff']:.3g} "
                      f"(naive {b[g]['naive_max_abs_diff']:.3g}"
                      + (f", FA2 low-precision {b[g]['lowp_ref_max_abs_diff']:.3g}"
                         if b[g].get("lowp_ref_max_abs_diff") is not None else "")
                      + f"), ratio {b[g]['ratio']:.3g}" for g in ("dq", "dk", "dv") if b[g]]
            if b["masked_keys"]:
                lines.append(f"    {b['masked_keys']} keys no query sees: dk, dv exactly 0: "
                             f"{'yes' if b['masked_keys_zero'] else 'NO'}")
    if "cases" in body:
        failed = [c for c in body["cases"] if not c["fa2_rule_ok"]]
        lines.append(f"FA2 rule: ok in all {len(body['cases'])} cases" if not failed else
                     f"FA2 rule: FAILED in {len(failed)} of {len(body['cases'])} cases")
        reasons: dict[str, int] = {}
        for u in body.get("unsupported", []):
            general = u["reason"].split(" (got")[0]  # (the same reason, whatever the case)
            reasons[general] = reasons.get(general, 0) + 1
        lines += [f"  not run ({n} cases): {reason}" for reason, n in reasons.items()]
        if "backward_counts" in body:
            n = body["backward_counts"]
            lines.append(f"backward (dq, dk, dv): {n['pass']} passed, {n['fail']} failed, {n['error']} errors, "
                         f"{n['unsupported']} unsupported")
            for c in body["cases"]:
                b = c["backward"]
                if b["verdict"] in ("fail", "error"):
                    lines.append(f"  backward {b['verdict'].upper()} {c['dtype']} {c['regime']} D={c['head_dim']}: "
                                 f"{b['reason']}")
    if "check" in body:
        lines.append(f"  check: {'PASS' if body['check']['ok'] else 'FAIL'} ({body['check']['outcome']})")
    _emit(args, body, "\n".join(lines))
    return _verdict(args, code)


def add_parser(sub) -> None:
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
    kernel_flags(p_kp)
    p_kp.add_argument("--suite", choices=("quick", "default", "full"),
                      help="run the conformance suite instead of one case: every case judged against the float64 "
                      "oracle (max, mean, LSE and cosine rules); unsupported cases are listed, never failures")
    p_kp.add_argument("--backward", action="store_true",
                      help="also judge the gradients dq, dk, dv for a seeded output gradient against float64 gold "
                      "gradients (FlashAttention-2's rule: error <= 2 x the naive backward's in the same dtype + 1e-5, "
                      "and exactly 0 for keys no query sees); with --suite too. Dense and varlen CPU cases of flash2, "
                      "naive, torch-differentiable and JAX kernels; the others (paged, FP8) are reported unsupported. "
                      "A failed gradient exits 1")
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
