"""Streaming the compared tensors through the metric kernels, on a few threads.

The main thread reads tensor pairs one after another and cuts each into spans; worker threads
run :func:`~ckptkit.diffing.metrics.accumulate` on the spans (numpy releases the GIL in its loops,
so two threads use two cores). Tensors are read only while little else is in flight, so memory
stays near the largest pair for readers that load whole tensors, and near nothing for memory-
mapped ones. Span results are merged in span order, so the figures do not depend on timing.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.core.model import Checkpoint, ProgressFn
from ckptkit.diffing.metrics import Accumulator, accumulate

SPAN = 1 << 21  # elements per task: enough work to hide the cost of handing it to a thread
INFLIGHT_BYTES = 64 * 1024 * 1024  # read ahead while the tensors in flight hold less than this
PARALLEL_MIN_BYTES = 16 * 1024 * 1024  # smaller diffs are not worth starting threads for


@dataclass(frozen=True)
class Job:
    """One pair of same-shaped tensors to compare (names as the two checkpoints know them)."""

    a_name: str
    b_name: str


def default_threads() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 4))


def run(
    a: Checkpoint,
    b: Checkpoint,
    jobs: Sequence[Job],
    threads: int | None = None,
    progress: ProgressFn | None = None,
) -> list[Accumulator]:
    """The accumulated sums of each job, in job order."""
    total = sum(_nbytes(a, j.a_name) + _nbytes(b, j.b_name) for j in jobs)
    workers = default_threads() if threads is None else max(1, threads)
    if total < PARALLEL_MIN_BYTES:
        workers = 1
    pool = ThreadPoolExecutor(workers, thread_name_prefix="ckptkit-diff") if workers > 1 else None
    results: list[Accumulator] = [Accumulator() for _ in jobs]
    pending: deque[tuple[int, list[tuple[Future[Accumulator], int]], int]] = deque()
    inflight = 0

    def finish_oldest() -> None:
        nonlocal inflight
        index, spans, nbytes = pending.popleft()
        for fut, span_bytes in spans:
            results[index].merge(fut.result())
            if progress:
                progress(span_bytes)
        inflight -= nbytes

    try:
        for index, job in enumerate(jobs):
            nbytes = _nbytes(a, job.a_name) + _nbytes(b, job.b_name)
            while pending and inflight + nbytes > INFLIGHT_BYTES:
                finish_oldest()
            xa, xb = _flat(a, job.a_name), _flat(b, job.b_name)
            if xa.size != xb.size:
                raise CorruptCheckpointError(
                    f"tensor {job.b_name!r} read back with {xb.size} elements where {job.a_name!r} has {xa.size}; "
                    "the two files' headers promised the same shape"
                )
            spans = []
            for lo in range(0, max(xa.size, 1), SPAN):
                hi = min(lo + SPAN, xa.size)
                share = nbytes * (hi - lo) // max(xa.size, 1)
                if pool is None:
                    fut: Future[Accumulator] = Future()
                    fut.set_result(accumulate(xa, xb, lo, hi))
                else:
                    fut = pool.submit(accumulate, xa, xb, lo, hi)
                spans.append((fut, share))
            pending.append((index, spans, nbytes))
            inflight += nbytes
        while pending:
            finish_oldest()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def _nbytes(ckpt: Checkpoint, name: str) -> int:
    return ckpt.info(ckpt.aliases.get(name, name)).nbytes


def _flat(ckpt: Checkpoint, name: str) -> np.ndarray:
    """The tensor as a flat C-ordered array; a view when the reader's array is contiguous."""
    return np.ascontiguousarray(ckpt.read_tensor(ckpt.aliases.get(name, name))).reshape(-1)
