"""Comparing two tensor files or directories, streamed in chunks and merged exactly.

Layer: imports :mod:`flashparity.io` (the files), :mod:`flashparity.parity` (the fused reduction)
and nothing above them. :mod:`.tasks` splits the work into element ranges (:class:`RangeTask`),
:mod:`.stream` reads a task's chunks ahead on a thread into buffers allocated once, and
:mod:`.engines` runs the tasks: in this process (the default), on a pool of local processes, or on
a Dask cluster. :mod:`.files` is the driver (:func:`compare_files`): it matches the tensors, plans
the tasks, merges each tensor's chunks in task order (so every engine reports the same bits) and
judges each tensor. Memory: 4 x ``tasks.CHUNK_BYTES`` whatever the file sizes.
"""

from __future__ import annotations

from .engines import WorkersFailed
from .files import IncompatibleSides, check_min_cosine, check_mismatch_ratio, compare_files
from .tasks import RangeTask, run_task

__all__ = ["IncompatibleSides", "RangeTask", "WorkersFailed", "check_min_cosine", "check_mismatch_ratio",
           "compare_files", "run_task"]
