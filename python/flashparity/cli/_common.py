"""What every command shares: the exit codes, the parser that turns a usage error into one line,
argument types, JSON output, rejected input as an error body, and the flag groups two commands share."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from .. import classify as C
from .._write import printable, write_atomically
from ..kernels.kernel_parity import DTYPES as KP_DTYPES


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_CLASSIFIERS = ("parity", "provenance", "head-dim")
FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")  # (io.FP8_FORMATS; io is imported when a command reads a file)

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


def _verdict(args: argparse.Namespace, code: int) -> int:
    """The exit code of a judged report: `code`, or 0 under --report-only (which says so on stderr
    when the report would have failed)."""
    if args.report_only and code != EXIT_OK:
        print("flashparity: --report-only: outside the tolerance, exit 0 all the same", file=sys.stderr)
        return EXIT_OK
    return code


def _case_from(args: argparse.Namespace):
    from ..kernels.kernel_parity import Case

    try:
        return Case(seq_len=args.seq_len, num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
                    head_dim=args.head_dim, seed=args.seed, batch=args.batch, seqlen_q=args.seqlen_q,
                    causal=args.causal, window=tuple(args.window), softcap=args.softcap, alibi=args.alibi,
                    varlen=args.varlen, page_size=args.page_size, dtype=args.dtype or "float32",
                    device=args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def case_flags(p: argparse.ArgumentParser) -> None:
    """The flags that shape one attention case (kernel parity, run)."""
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
    """--check / --report-only and --check's tolerances (kernel parity, compare)."""
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


def void_flags(p: argparse.ArgumentParser) -> None:
    """How .npy elements NumPy saved as raw voids are read (run, compare)."""
    p.add_argument("--void2-as-bfloat16", action="store_true",
                   help="read 2-byte void .npy elements (NumPy's way of saving bfloat16) as bfloat16")
    p.add_argument("--void1-as", choices=FP8_FORMATS, metavar="FP8",
                   help="read 1-byte void .npy elements (NumPy's way of saving float8_e4m3fn) as this FP8 "
                   "format: float8_e4m3fn or float8_e5m2 (float8_e5m2's own .npy files are read as such)")


def kernel_flags(p: argparse.ArgumentParser) -> None:
    """How a kernel named package.module:function or hub:ORG/REPO@REVISION is taken (kernel parity, run)."""
    p.add_argument("--convention", metavar="NAME",
                   help="calling convention of a package.module:function kernel: bshd, bshd-numpy, fa2, fa2-varlen, fa2-kvcache, fa3, fa3-varlen, fa3-kvcache, sdpa, flashinfer, xformers or jax")
    p.add_argument("--allow-unpinned", action="store_true",
                   help="let a hub:ORG/REPO@REVISION kernel's revision be a branch or tag (reported as unpinned)")
