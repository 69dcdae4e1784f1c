"""flashparity compare: two tensor files or directories, or two fp.dump directories."""

from __future__ import annotations

import argparse
import sys

from .._write import printable
from ._common import (
    EXIT_FAILED, EXIT_OK, Rejected, UsageError, _emit, _gate, _int_at_least, _nonempty, _number_in,
    _reject, _tolerance, _verdict, gate_flags, void_flags,
)



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
    from ..models.modules import is_dump

    return is_dump(path)


def _compare_dumps(args: argparse.Namespace, progress) -> int:
    """Two fp.dump directories: compare_modules' verdicts, in A's execution order."""
    from ..models.modules import compare_dumps

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
    from ..compare.engines import WorkersFailed
    from ..compare.files import IncompatibleSides, compare_files
    from ..io import BadFile

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


def add_parser(sub) -> None:
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
    void_flags(p_cmp)
    gate_flags(p_cmp)
    p_cmp.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p_cmp.add_argument("--json", action="store_true", help="print the JSON body")
    p_cmp.add_argument("-o", "--output", metavar="FILE", help="also write the JSON body to FILE")
    p_cmp.set_defaults(func=_cmd_compare)
