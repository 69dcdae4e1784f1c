"""The ``flashparity`` command line (also ``python -m flashparity``): one module per command
(:mod:`.info` for info and kernels, :mod:`.kernel`, :mod:`.run`, :mod:`.compare`, :mod:`.classify`),
what they share in :mod:`._common`. The top layer: it may import any part of flashparity, and nothing
imports it.

Exit codes, one rule for every command that judges (kernel parity, compare, classify): 0 within
tolerance; 1 outside it (a kernel failing FlashAttention-2's rule, tensors differing beyond
--max-mismatch-ratio or under --min-cosine, a tensor on one side only, a failed --check gate) or
input rejected; 2 usage error, unreadable input or a missing package, with one line on stderr and no
traceback. --report-only reports without judging: exit 0 whatever the differences.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .._optional import missing_package
from .._write import printable
from . import classify, compare, info, kernel, run
from ._common import EXIT_FAILED, EXIT_OK, EXIT_RULE, EXIT_USAGE, UsageError, _Parser

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_RULE", "UsageError"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog="flashparity",
        description="Attention-kernel parity: kernel parity checks, attention runs with provenance, "
        "tensor file comparison, apr's classifiers, build facts. " + EXIT_RULE,
    )
    parser.add_argument("--version", action="version", version=f"flashparity {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in (info, kernel, run, compare, classify):  # (the order of --help)
        command.add_parser(sub)
    return parser


def _check_environment() -> None:
    """FLASHPARITY_SIMD and FLASHPARITY_NUM_THREADS, read by the kernels: a bad value is a usage error
    before any work, not a traceback from the first kernel call."""
    from .. import _core

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
