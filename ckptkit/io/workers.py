"""Running independent per-shard tasks, serially or on a few threads.

Work over a large checkpoint splits naturally by shard: write output shard 3, hash the tensors of
input shard 7. Commands express that work as a list of small task records (plain data: paths,
tensor names) and a function applied to each, and hand both to an :class:`Executor`. The thread
executor uses both cores of a small machine; the file copies, hashing and numpy comparisons inside
the tasks release the GIL. An engine that runs tasks on other processes or machines implements the
same :meth:`Executor.map`.

Tasks must not depend on each other's side effects, and results come back in task order, so the
outcome is the same whichever executor runs them.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from ckptkit.core.model import Checkpoint

T = TypeVar("T")
R = TypeVar("R")

WORKERS_ENV = "CKPTKIT_WORKERS"
DEFAULT_WORKERS = 2


class Executor(ABC):
    """Applies a function to every task record and returns the results in task order."""

    workers: int = 1

    @abstractmethod
    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        """``[fn(t) for t in tasks]``, possibly concurrently; the first error raised is re-raised."""


class SerialExecutor(Executor):
    """Runs tasks one after another in the calling thread."""

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        return [fn(t) for t in tasks]


class ThreadExecutor(Executor):
    """Runs tasks on a pool of threads; after a failure, tasks not yet started are cancelled."""

    def __init__(self, workers: int = DEFAULT_WORKERS) -> None:
        self.workers = max(1, workers)

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        if self.workers == 1 or len(tasks) < 2:
            return [fn(t) for t in tasks]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(tasks)), thread_name_prefix="ckptkit") as pool:
            futures: list[Future[R]] = [pool.submit(fn, t) for t in tasks]
            done, _pending = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in futures:
                err = fut.exception() if fut in done else None
                if err is not None:
                    for other in futures:
                        other.cancel()
                    raise err
            return [fut.result() for fut in futures]


def default_executor(concurrent: bool = True) -> Executor:
    """The executor commands use: ``CKPTKIT_WORKERS`` threads (default 2), or serial when the
    work cannot run concurrently (``concurrent=False``) or one worker is asked for."""
    try:
        workers = int(os.environ.get(WORKERS_ENV, DEFAULT_WORKERS))
    except ValueError:
        workers = DEFAULT_WORKERS
    workers = min(workers, os.cpu_count() or 1) if workers > 0 else 1
    if not concurrent or workers <= 1:
        return SerialExecutor()
    return ThreadExecutor(workers)


def balanced_groups(sizes: Sequence[int], groups: int) -> list[list[int]]:
    """Split item indices into at most ``groups`` lists of similar total size, keeping each list in
    the original order (largest items placed first, each into the lightest group)."""
    groups = max(1, min(groups, len(sizes)))
    loads = [0] * groups
    members: list[list[int]] = [[] for _ in range(groups)]
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        g = loads.index(min(loads))
        members[g].append(i)
        loads[g] += sizes[i]
    return [sorted(m) for m in members if m]


def map_tensors(
    ckpt: Checkpoint, fn: Callable[[str], R], names: Sequence[str] | None = None, executor: Executor | None = None
) -> dict[str, R]:
    """``fn(name)`` for every tensor (or those in ``names``), in the order given.

    The tensors are dealt into one task per worker of similar total size; the tasks run on
    ``executor`` (default: :func:`default_executor`, serial unless ``ckpt.concurrent_reads``).
    ``fn`` may read the tensor from ``ckpt`` and report progress; it must not depend on the other
    tensors' results.
    """
    todo = list(ckpt.names() if names is None else names)
    runner = executor or default_executor(ckpt.concurrent_reads)
    groups = balanced_groups([ckpt.info(n).nbytes for n in todo], runner.workers)
    results: dict[str, R] = {}
    for group, values in zip(groups, runner.map(lambda g: [fn(todo[i]) for i in g], groups), strict=True):
        results.update((todo[i], v) for i, v in zip(group, values, strict=True))
    return {n: results[n] for n in todo}
