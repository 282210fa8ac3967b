"""Streaming the compared tensors through the metric kernels, on a few threads.

The main thread reads tensor pairs one after another and cuts each into spans; the threads of
:mod:`ckptkit.io.workers` (as many as its policy gives, ``--threads`` being an explicit request)
run :func:`~ckptkit.diffing.metrics.accumulate` on the spans (numpy releases the GIL in its loops,
so two threads use two cores). Tensors are read only while little else is in flight, so memory
stays near the largest pair for readers that load whole tensors, and near nothing for memory-
mapped ones. A tensor its reader decodes on read (a quantized GGUF tensor, see
:meth:`~ckptkit.core.model.Checkpoint.span_reader`) is never built whole: each span task decodes
its own elements, a cache-sized chunk at a time, next to the metric kernels. Span results are
merged in span order, so the figures do not depend on timing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.core.model import Checkpoint, ProgressFn
from ckptkit.diffing.metrics import CHUNK, Accumulator, accumulate
from ckptkit.io.workers import LOCAL, default_executor, executor_spec, shard_executor

SPAN = 6 * CHUNK  # elements per task: enough work to hide the cost of handing it to a thread
INFLIGHT_BYTES = 64 * 1024 * 1024  # read ahead while the tensors in flight hold less than this
PARALLEL_MIN_BYTES = 16 * 1024 * 1024  # smaller diffs are not worth starting threads for


@dataclass(frozen=True)
class Job:
    """One pair of same-shaped tensors to compare (names as the two checkpoints know them)."""

    a_name: str
    b_name: str


def run(
    a: Checkpoint,
    b: Checkpoint,
    jobs: Sequence[Job],
    threads: int | None = None,
    progress: ProgressFn | None = None,
) -> list[Accumulator]:
    """The accumulated sums of each job, in job order; ``threads`` is an explicit request.

    With a Dask executor chosen (``--executor dask://...``), the pairs of shards run as tasks on
    the cluster (:func:`diff_shards`), when both sides can be reopened there.
    """
    if executor_spec() != LOCAL:
        pairs = _shard_pairs(a, b, jobs)
        if pairs is not None:
            return _run_on_cluster(jobs, pairs, progress)
    total = sum(_nbytes(a, j.a_name) + _nbytes(b, j.b_name) for j in jobs)
    executor = default_executor(concurrent=total >= PARALLEL_MIN_BYTES, workers=threads)
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

    with executor.stream() as tasks:
        for index, job in enumerate(jobs):
            nbytes = _nbytes(a, job.a_name) + _nbytes(b, job.b_name)
            while pending and inflight + nbytes > INFLIGHT_BYTES:
                finish_oldest()
            xa, xb = _source(a, job.a_name), _source(b, job.b_name)
            if xa.size != xb.size:
                raise CorruptCheckpointError(
                    f"tensor {job.b_name!r} read back with {xb.size} elements where {job.a_name!r} has {xa.size}; "
                    "the two files' headers promised the same shape"
                )
            spans = []
            for lo in range(0, max(xa.size, 1), SPAN):
                hi = min(lo + SPAN, xa.size)
                share = nbytes * (hi - lo) // max(xa.size, 1)
                spans.append((tasks.submit(_accumulate, xa, xb, lo, hi), share))
            pending.append((index, spans, nbytes))
            inflight += nbytes
            # Drop this pair before reading the next: a reader that builds its arrays (GGUF dequantizing)
            # would otherwise hold two large tensors at once.
            del xa, xb
        while pending:
            finish_oldest()
    return results


def _nbytes(ckpt: Checkpoint, name: str) -> int:
    return ckpt.info(ckpt.aliases.get(name, name)).nbytes


@dataclass(frozen=True)
class _Decoded:
    """A tensor read span by span (:meth:`~ckptkit.core.model.Checkpoint.span_reader`)."""

    read: Callable[[int, int], np.ndarray]
    size: int


def _source(ckpt: Checkpoint, name: str) -> np.ndarray | _Decoded:
    stored = ckpt.aliases.get(name, name)
    reader = ckpt.span_reader(stored)
    if reader is not None:
        return _Decoded(reader, ckpt.info(stored).numel)
    return _flat(ckpt, name)


def _accumulate(xa: np.ndarray | _Decoded, xb: np.ndarray | _Decoded, lo: int, hi: int) -> Accumulator:
    """:func:`accumulate` over ``lo:hi``, decoding a span-read side one kernel chunk at a time (the
    same chunks and the same order of sums as on whole arrays, so the figures are the same)."""
    if isinstance(xa, np.ndarray) and isinstance(xb, np.ndarray):
        return accumulate(xa, xb, lo, hi)
    acc = Accumulator()
    for start in range(lo, hi, CHUNK):
        stop = min(start + CHUNK, hi)
        ca = xa[start:stop] if isinstance(xa, np.ndarray) else xa.read(start, stop)
        cb = xb[start:stop] if isinstance(xb, np.ndarray) else xb.read(start, stop)
        acc.merge(accumulate(ca, cb))
    return acc


def _flat(ckpt: Checkpoint, name: str) -> np.ndarray:
    """The tensor as a flat C-ordered array; a view when the reader's array is contiguous."""
    return np.ascontiguousarray(ckpt.read_tensor(ckpt.aliases.get(name, name))).reshape(-1)


@dataclass(frozen=True)
class ShardPair:
    """The jobs whose tensors lie in one shard of each side (names as those shards know them).

    Sent to a Dask worker, the two shards travel as the recipes that reopen them there.
    """

    a: Checkpoint
    b: Checkpoint
    jobs: tuple[Job, ...]
    positions: tuple[int, ...]  # where each job sits in the whole diff's job list


def diff_shards(pair: ShardPair) -> list[Accumulator]:
    """The sums of each job of ``pair``, spans merged in span order as :func:`run` merges them, so
    the figures equal a local run's to the last bit."""
    results = []
    for job in pair.jobs:
        xa, xb = _source(pair.a, job.a_name), _source(pair.b, job.b_name)
        if xa.size != xb.size:
            raise CorruptCheckpointError(
                f"tensor {job.b_name!r} read back with {xb.size} elements where {job.a_name!r} has {xa.size}; "
                "the two files' headers promised the same shape"
            )
        acc = Accumulator()
        for lo in range(0, max(xa.size, 1), SPAN):
            acc.merge(_accumulate(xa, xb, lo, min(lo + SPAN, xa.size)))
        results.append(acc)
    return results


def _shard_pairs(a: Checkpoint, b: Checkpoint, jobs: Sequence[Job]) -> list[ShardPair] | None:
    """The jobs grouped by the pair of shards holding their tensors, in order of first use; ``None``
    when a side cannot be reopened on another process (a view made by a normalizer, a checkpoint
    in memory): those are diffed here."""
    groups: dict[tuple[int, int], tuple[Checkpoint, Checkpoint, list[Job], list[int]]] = {}
    for position, job in enumerate(jobs):
        name_a, name_b = a.aliases.get(job.a_name, job.a_name), b.aliases.get(job.b_name, job.b_name)
        shard_a, shard_b = a.shard_of(name_a), b.shard_of(name_b)
        if shard_a.reopen is None or shard_b.reopen is None:
            return None
        group = groups.setdefault((id(shard_a), id(shard_b)), (shard_a, shard_b, [], []))
        group[2].append(Job(name_a, name_b))
        group[3].append(position)
    return [ShardPair(sa, sb, tuple(js), tuple(ps)) for sa, sb, js, ps in groups.values()]


def _run_on_cluster(jobs: Sequence[Job], pairs: Sequence[ShardPair], progress: ProgressFn | None) -> list[Accumulator]:
    results: list[Accumulator] = [Accumulator() for _ in jobs]
    for pair, sums in zip(pairs, shard_executor().map(diff_shards, pairs), strict=True):
        for position, acc in zip(pair.positions, sums, strict=True):
            results[position] = acc
    if progress:  # the cluster reports nothing until the tasks are done
        progress(sum(_nbytes(p.a, j.a_name) + _nbytes(p.b, j.b_name) for p in pairs for j in p.jobs))
    return results
