"""Compare two tensor files or directories (:func:`compare_files`): open both sides, match their
tensors by name, plan the tasks, run them on an engine, merge each tensor's chunks in order and
judge every tensor (isclose counts, cosine floor; integers, bools and complex element for element)."""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np

from ..io.source import _VOID1_WORDS, TensorSource, Voids
from ..io.tree import _open_side
from . import tasks as _tasks
from .engines import run_in_process
from .tasks import COMPARABLE, RangeTask, _plan, run_task


class IncompatibleSides(ValueError):
    """Two sides that cannot be compared with each other, whatever they hold (exit 2: the usage)."""



def _match(ta: list[TensorSource], tb: list[TensorSource], by_name: bool):
    if not by_name and len(ta) == 1 and len(tb) == 1:  # one tensor each (e.g. two .npy files): compare them
        return [(ta[0].name or tb[0].name or "tensor", ta[0], tb[0])], [], []
    ia = {t.name: t for t in ta}
    ib = {t.name: t for t in tb}
    pairs = [(n, ia[n], ib[n]) for n in ia if n in ib]
    return pairs, [n for n in ia if n not in ib], [n for n in ib if n not in ia]




def compare_files(path_a: str, path_b: str, *, atol: float = 0.0, rtol: float = 0.0, void2_as_bfloat16: bool = False,
                  void1_as: str | None = None, progress: Callable[[int, int], None] | None = None, workers: int | None = None,
                  dask: object = None, tolerance: Callable[[str, str, str], tuple[float, float]] | None = None,
                  stats_out: dict | None = None, max_mismatch_ratio: float = 0.0,
                  min_cosine: float | None = None) -> dict:
    """Parity of the tensors of two files or directories, streamed in chunks merged exactly.

    Files: .npy, .npz, .safetensors; a directory is a sharded checkpoint with a
    ``*.safetensors.index.json`` or any tree of tensor files (see :func:`open_side`); tensors are
    matched by name (two single-tensor files are compared whatever their names). The work is split
    into tasks (tensors, and 64 MiB ranges of large ones), run in this process (the default), on a
    pool of ``workers`` local processes, or on a Dask cluster (``dask``: a scheduler address or a
    ``distributed.Client``); each task's stats are merged in a fixed order, so every mode gives the
    same report, bit for bit. ``progress(done_bytes, total_bytes)`` is called as tasks finish.
    ``tolerance(name, dtype_a, dtype_b) -> (atol, rtol)`` sets each tensor's tolerances instead of
    ``atol``/``rtol``; ``stats_out``, a dict, receives each compared tensor's ``ParityStats`` by name.

    Tensors of another dtype (bools, integers, complex) are compared element for element with a
    tensor of the same dtype in either byte order (see :func:`_unequal_elements`): their rows hold
    ``numel``, ``mismatches``, ``max_abs_diff`` and ``exact: true``.

    The verdict (``ok``, per tensor and for the whole comparison): a tensor passes when at most
    ``max_mismatch_ratio`` of its elements are outside atol/rtol (default 0: none) and, when
    ``min_cosine`` is given, its cosine similarity is at least that; an empty tensor passes; a tensor
    that could not be compared (shape mismatch, dtypes that do not match) fails. The comparison passes when
    every tensor does and none is found on one side only.

    Returns the compare body: per-tensor stats (or an error) and verdicts, the names found on one
    side only, the worst max_abs_diff / cosine_sim over the tensors and ``ok``. OSError for
    unreadable files, BadFile for invalid ones, ValueError for a bad ratio or cosine.
    """
    from ..parity import ParityStats

    max_mismatch_ratio = check_mismatch_ratio(max_mismatch_ratio)
    min_cosine = check_min_cosine(min_cosine)

    voids = Voids.of(void2_as_bfloat16, void1_as)
    ta = _open_side(path_a, voids)
    tb = _open_side(path_b, voids)
    if os.path.isdir(path_a) != os.path.isdir(path_b):
        (file, tensors), folder = ((path_a, ta), path_b) if os.path.isdir(path_b) else ((path_b, tb), path_a)
        if any(t.name == "" for t in tensors):
            raise IncompatibleSides(f"{file!r} is a .npy file and {folder!r} a directory: a .npy file's one tensor has no "
                             "name to match by; compare it with a file of the directory, or a directory with a "
                             "directory")
    pairs, only_a, only_b = _match(ta, tb, by_name=os.path.isdir(path_a) or os.path.isdir(path_b))
    rows: list[dict] = []
    exact: list[tuple[int, TensorSource, TensorSource]] = []  # (row, a, b) of non-float pairs
    tasks: list[RangeTask] = []
    owner: list[int] = []  # the row of each task
    for name, a, b in pairs:
        row: dict = {"name": name, "shape": list(a.shape), "dtypes": [a.dtype.name, b.dtype.name]}
        if a.shape != b.shape:
            row["error"] = f"shape-mismatch: {a.shape} vs {b.shape}"
        elif (a.dtype.name not in COMPARABLE or b.dtype.name not in COMPARABLE) \
                and _native(a.dtype) == _native(b.dtype) and a.dtype.kind in "biuc":
            exact.append((len(rows), a, b))  # integers, bools, ...: element for element, after the floats
        elif a.dtype.name not in COMPARABLE or b.dtype.name not in COMPARABLE:
            hint = _VOID1_WORDS if "void8" in (a.dtype.name, b.dtype.name) else (
                "float tensors are compared with any float; other tensors only with their own dtype")
            row["error"] = f"unsupported-dtype: {a.dtype.name} vs {b.dtype.name} ({hint})"
        elif a.numel == 0:
            row["numel"] = 0
        else:
            t_atol, t_rtol = (atol, rtol) if tolerance is None else tolerance(name, a.dtype.name, b.dtype.name)
            planned = _plan(a, b, t_atol, t_rtol, voids)
            tasks += planned
            owner += [len(rows)] * len(planned)
        rows.append(row)

    total = sum(t.nbytes for t in tasks)
    finished = 0
    merged: dict[int, ParityStats] = {}  # row -> the stats of its chunks so far
    ready: dict[int, list] = {}  # finished tasks waiting for an earlier one
    next_task = 0

    def advance(nbytes: int) -> None:
        nonlocal finished
        finished += nbytes
        if progress is not None:
            progress(finished, total)

    def done(i: int, parts: list) -> None:
        # every chunk of a tensor merged in order, whatever order the tasks finished in: the same
        # bits in every mode (and as one pass over the chunks)
        nonlocal next_task
        ready[i] = parts
        while next_task in ready:
            r = owner[next_task]
            for part in ready.pop(next_task):
                merged[r] = part if r not in merged else merged[r].merge(part)
            next_task += 1

    if dask is not None and workers is not None:
        raise ValueError("give workers or dask, not both")
    if dask is not None:
        from .engines import run_on_dask

        run_on_dask(run_task, tasks, dask, lambda i, parts: (done(i, parts), advance(tasks[i].nbytes)))
    elif workers is not None:
        from .engines import run_on_pool

        run_on_pool(run_task, tasks, workers, lambda i, parts: (done(i, parts), advance(tasks[i].nbytes)))
    else:
        opened = {(os.path.abspath(t.path), t.key): t for _, a, b in pairs for t in (a, b)}
        run_in_process(tasks, opened, done, advance)
    assert next_task == len(tasks) and not ready

    for r, acc in merged.items():
        row = rows[r]
        stats = ParityStats(acc._acc, tuple(row["shape"]), acc.dtypes, acc.atol, acc.rtol)
        row.update({k: v for k, v in stats.to_dict().items() if k not in ("shape", "dtypes", "atol", "rtol")})
        if tolerance is not None:
            row.update(atol=stats.atol, rtol=stats.rtol)
        if stats_out is not None:
            stats_out[row["name"]] = stats

    for r, a, b in exact:
        unequal, worst = _unequal_elements(a, b)
        rows[r].update(numel=a.numel, mismatches=unequal, max_abs_diff=worst, exact=True)
    for row in rows:
        row["ok"] = _row_ok(row, max_mismatch_ratio, min_cosine)
    compared = [r for r in rows if "max_abs_diff" in r]
    problems = [r["name"] for r in rows if "error" in r]
    # Nothing compared (no pair matched, or every pair unusable): NaN, so that no gate reads the body
    # as a perfect match. (Pairs that are all empty tensors did compare: equal, 0 and 1.)
    nothing = not compared and (problems or only_a or only_b or not rows)
    fallback = (math.nan, math.nan) if nothing else (0.0, 1.0)
    worst_abs = max((r["max_abs_diff"] for r in compared), key=lambda x: (x != x, x), default=fallback[0])
    worst_cos = min((r["cosine_sim"] for r in compared if "cosine_sim" in r), key=lambda x: (x == x, x),
                    default=fallback[1])
    return {
        "a": path_a,
        "b": path_b,
        "atol": atol,
        "rtol": rtol,
        "max_abs_diff": worst_abs,
        "cosine_sim": worst_cos,
        "numel": sum(r.get("numel", 0) for r in rows),
        "mismatches": sum(r.get("mismatches", 0) for r in rows),
        "tensors": rows,
        "only_in_a": only_a,
        "only_in_b": only_b,
        "complete": not (only_a or only_b or problems),
        "max_mismatch_ratio": max_mismatch_ratio,
        "min_cosine": min_cosine,
        "ok": bool(rows) and not (only_a or only_b) and all(r["ok"] for r in rows),
    }


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=")


def _unequal_elements(a: TensorSource, b: TensorSource) -> tuple[int, float]:
    """How many elements of two tensors of one bool, integer or complex dtype differ, and the greatest
    |a - b|. Integers and bools: by value, which is their bits (the gap exact, as an integer, before it
    becomes a float); complex numbers as floats are, a NaN never equal (so a NaN gap: no gate passes
    it). Either byte order. Read in C order in chunks, in this process: such tensors of a checkpoint
    are small beside its weights."""
    n = a.numel
    if n == 0:
        return 0, 0.0
    kind = a.dtype.kind
    step = max(1, _tasks.CHUNK_BYTES // a.dtype.itemsize)
    buf_a, buf_b = np.empty(min(step, n), a.dtype), np.empty(min(step, n), b.dtype)
    ra, rb = a.open(), b.open()
    unequal, worst = 0, 0
    try:
        for start in range(0, n, step):
            k = min(step, n - start)
            ra.read_into(start, buf_a[:k])
            rb.read_into(start, buf_b[:k])
            xa, xb = (x[:k].astype(_native(x.dtype), copy=False) for x in (buf_a, buf_b))
            if kind == "b":  # (any nonzero byte is True; the bytes are compared, as the file holds them)
                xa, xb = xa.view(np.uint8), xb.view(np.uint8)
            differ = xa != xb  # (complex: NaN != NaN, as for floats)
            count = int(np.count_nonzero(differ))
            if not count:
                continue
            unequal += count
            da, db = xa[differ], xb[differ]
            if kind == "c":
                with np.errstate(invalid="ignore", over="ignore"):
                    gap = float(np.max(np.abs(da.astype(np.complex128) - db.astype(np.complex128))))
                worst = math.nan if math.isnan(gap) or worst != worst else max(worst, gap)
            elif kind == "b":  # (a bool differs by one, whatever bytes stand for True)
                worst = worst if worst != worst else max(worst, 1)
            else:  # max - min in the unsigned type of the same width: exact (no wrap past 2^w - 1)
                unsigned = np.dtype(f"u{xa.dtype.itemsize}")
                hi, lo = np.maximum(da, db).view(unsigned), np.minimum(da, db).view(unsigned)
                gap_int = int(np.max(hi - lo))
                worst = worst if worst != worst else max(worst, gap_int)
    finally:
        ra.close()
        rb.close()
    return unequal, float(worst)


def check_mismatch_ratio(value: Any) -> float:
    """A fraction of elements in [0, 1] (ValueError naming the value otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"max_mismatch_ratio must be a number from 0 to 1, got {value!r}")
    return float(value)


def check_min_cosine(value: Any) -> float | None:
    """None, or a cosine similarity floor in [-1, 1] (ValueError naming the value otherwise: NaN too)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        raise ValueError(f"min_cosine must be a number from -1 to 1, got {value!r}")
    return float(value)


def _row_ok(row: dict, max_mismatch_ratio: float, min_cosine: float | None) -> bool:
    """One tensor's verdict: not compared fails; empty passes; else the mismatch ratio and cosine rules
    (a NaN cosine never reaches a floor)."""
    from ..parity import within_gates

    if "error" in row:
        return False
    return within_gates(row.get("numel", 0), row.get("mismatches", 0),
                        None if row.get("exact") else row.get("cosine_sim"), max_mismatch_ratio, min_cosine)
