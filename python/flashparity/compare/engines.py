"""Where comparison tasks run: in this process (the default), on a pool of local processes, or on a
Dask cluster.

The last two are no scheduler of ours. The pool is the standard library's ProcessPoolExecutor; a Dask
cluster's scheduler places the tasks, and reruns those of a worker it loses. The caller passes the
function a worker runs (a module-level function, pickled by reference: tasks.run_task) and the tasks
(which carry file paths only: workers read the files themselves); the results come back pickled,
and the caller merges them in task order, so the report does not depend on where or in which order
the tasks ran. In this process, the same tasks run in order on one read-ahead streamer.
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from ..io.source import TensorSource
from . import tasks as _tasks
from .stream import PairStreamer
from .tasks import RangeTask, run_task

# A pool whose worker died (killed, out of memory) is started again for the tasks without a result;
# this many times per comparison, then the error is raised.
POOL_RESTARTS = 3
# Seconds to wait for a Dask scheduler to answer.
CONNECT_TIMEOUT_S = 30


class WorkersFailed(RuntimeError):
    """The pool's worker processes kept dying (killed, out of memory): POOL_RESTARTS restarts did not help."""


def _init_worker(threads: int) -> None:
    # (set before the first reduction starts the C++ thread pool: the workers share the CPUs)
    os.environ["FLASHPARITY_NUM_THREADS"] = str(threads)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # (the CPUs this process may run on, as the C++ pool counts)
    except AttributeError:
        return os.cpu_count() or 1


def run_on_pool(run: Callable[[Any], Any], tasks: list[Any], workers: int, done: Callable[[int, Any], None]) -> None:
    """run(task) for each of `tasks` on `workers` local processes (spawned: safe with the threads this
    process has); done(i, result) is called here as each finishes. A lost worker's tasks are run again."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    pending = set(range(len(tasks)))
    threads = max(1, int(os.environ.get("FLASHPARITY_NUM_THREADS") or _cpus()) // workers)
    restarts = 0
    while pending:
        pool = ProcessPoolExecutor(min(workers, len(pending)), mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads,))
        try:
            futures = {pool.submit(run, tasks[i]): i for i in sorted(pending)}
            waiting = set(futures)
            while waiting:
                finished, waiting = wait_futures(waiting, return_when=FIRST_COMPLETED)
                for fut in sorted(finished, key=futures.__getitem__):
                    if fut.exception() is not None and isinstance(fut.exception(), BrokenProcessPool):
                        continue  # (its task stays pending)
                    i = futures[fut]
                    stats = fut.result()  # (a task's own error is the comparison's)
                    pending.discard(i)
                    done(i, stats)
                if any(isinstance(f.exception(), BrokenProcessPool) for f in finished):
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if pending:
            restarts += 1
            if restarts > POOL_RESTARTS:
                raise WorkersFailed(f"the worker processes died {restarts} times; {len(pending)} of {len(tasks)} "
                                   "tasks could not be run (out of memory?)")


def run_on_dask(run: Callable[[Any], Any], tasks: list[Any], cluster: Any, done: Callable[[int, Any], None]) -> None:
    """run(task) for each of `tasks` on a Dask cluster: `cluster` is a scheduler address
    ("tcp://host:8786") or a ``distributed.Client``. The workers must have flashparity installed and
    see the files at the same paths (shared storage). done(i, result) is called here as each finishes."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ImportError("comparing on a Dask cluster needs dask.distributed: pip install 'flashparity[dask]'") from None
    own = not isinstance(cluster, Client)
    if own:
        if not isinstance(cluster, str) or not cluster:
            raise ValueError(f"dask must be a scheduler address such as 'tcp://host:8786' or a Client, got {cluster!r}")
        try:
            client = Client(cluster, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"cannot reach the Dask scheduler at {cluster!r}: {exc}") from None
    else:
        client = cluster
    try:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"the Dask cluster at {client.scheduler.address!r} has no workers "
                                  f"(waited {CONNECT_TIMEOUT_S} s): {exc}") from None
        token = uuid.uuid4().hex
        keys = [f"flashparity-compare-{token}-{i}" for i in range(len(tasks))]
        futures = client.map(run, tasks, key=keys, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            # one gather at a time, of what has finished (on this client's loop: not the default
            # client's); a result the cluster loses with its worker before it is gathered is
            # computed again by the scheduler, and the gather waits for it
            for batch in as_completed(futures, loop=client.loop).batches():
                batch = sorted(batch, key=lambda f: index[f.key])
                for fut, stats in zip(batch, client.gather(batch)):
                    done(index[fut.key], stats)
        finally:
            client.cancel(futures)  # (nothing left after an error; a no-op once all finished)
    finally:
        if own:
            client.close()


def run_in_process(tasks: list[RangeTask], opened: dict[tuple[str, str], TensorSource],
                    done: Callable[[int, list], None], on_chunk: Callable[[int], None]) -> None:
    """Run the tasks in order in this process; `done(i, parts)` after each."""
    streamer = PairStreamer(_tasks.CHUNK_BYTES)  # (its buffers and reader thread serve every task)
    try:
        for i, task in enumerate(tasks):
            done(i, run_task(task, opened, streamer, on_chunk))
    finally:
        streamer.close()

