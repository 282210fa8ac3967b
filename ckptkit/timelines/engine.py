"""Streaming a run's snapshots tensor by tensor: norms, updates, drift and NaN/Inf per snapshot.

The work is tensor-major: for one tensor name, the snapshots are walked chunk by chunk, each
chunk of each snapshot read once and compared with the previous snapshot's and the first
snapshot's same chunk (:mod:`ckptkit.timelines.kernel`). A tensor lying as-is in its file
(safetensors, numpy, uncompressed torch zips...) is read by ``pread`` into small reused buffers;
a view of a memory-mapped file is used in place; a tensor the reader builds in memory is measured
when read, after which only the first and previous snapshots' values are kept. So every snapshot
file is read once and memory stays near one tensor whatever the number of snapshots. Tensors are
dealt to the worker pool in groups of similar size; the sums are those of
:mod:`ckptkit.diffing.metrics` (float sums of blocks, float64 totals; NaN and Inf counted apart),
so a timeline and a diff of the same two snapshots agree.
"""

from __future__ import annotations

import mmap
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckptkit.core.model import Checkpoint, ProgressFn
from ckptkit.diffing.metrics import Accumulator, accumulate
from ckptkit.io.workers import balanced_groups, default_executor
from ckptkit.timelines import kernel

# Optimizer state, as torch, Lightning, Keras and TensorFlow name it.
_OPTIMIZER = re.compile(r"(^|[./])(optimizer|optimizer_states|optim|opt_state)([./]|$)|\.OPTIMIZER_SLOT/")
# Adam's second moments: torch exp_avg_sq, Keras 3 velocity, TF1 Adam_1, TF2 slot v.
_SECOND_MOMENT = re.compile(r"(exp_avg_sq$|velocity$|_velocity\b|/Adam_1$|\.OPTIMIZER_SLOT/.*/v/)")


def is_optimizer_state(name: str) -> bool:
    """Whether a tensor name is optimizer state rather than a model weight."""
    return bool(_OPTIMIZER.search(name))


def is_second_moment(name: str) -> bool:
    """Whether an optimizer tensor is an Adam-style second moment (a running mean of squared gradients)."""
    return bool(_SECOND_MOMENT.search(name))


@dataclass
class Point:
    """One tensor in one snapshot: its own sums, and those of its change from the previous and first snapshots.

    Sums run over finite elements in float64 (as :class:`~ckptkit.diffing.metrics.Accumulator`);
    the ``prev``/``first`` fields are ``None`` where there is nothing to compare with (the first
    snapshot, a snapshot without the tensor, a shape change).
    """

    elements: int
    sum_sq: float
    nan: int
    inf: int
    nonzero: bool
    sum_sq_prev: float | None = None  # |W_{t-1}|^2, over the elements finite on both sides
    sum_sq_update: float | None = None  # |W_t - W_{t-1}|^2
    max_update: float | None = None
    sum_sq_first: float | None = None  # |W_0|^2
    sum_sq_drift: float | None = None  # |W_t - W_0|^2
    max_drift: float | None = None


@dataclass
class TensorSeries:
    """A tensor across the run: one :class:`Point` per snapshot (``None`` where absent)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    optimizer: bool
    points: list[Point | None]


def _flat(ckpt: Checkpoint, name: str) -> np.ndarray:
    return np.ascontiguousarray(ckpt.read_tensor(name)).reshape(-1)


def _mapped(x: np.ndarray) -> bool:
    """Whether ``x`` views a memory-mapped file: holding it costs no memory of its own."""
    base: object = x
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    return isinstance(base, mmap.mmap)


def _point(s: kernel.Sums) -> Point:
    return Point(
        elements=s.elements, sum_sq=s.sum_sq, nan=s.nan, inf=s.inf, nonzero=s.sum_sq > 0 or s.nan + s.inf > 0,
        sum_sq_prev=s.sum_sq_prev, sum_sq_update=s.sum_sq_update, max_update=s.max_update,
        sum_sq_first=s.sum_sq_first, sum_sq_drift=s.sum_sq_drift, max_drift=s.max_drift,
    )  # fmt: skip


class Files:
    """File descriptors shared by the workers (``pread`` needs no file position), closed at the end."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()

    def fd(self, path: Path) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _source(ckpt: Checkpoint, name: str, files: Files | None) -> tuple[kernel.Source, bool]:
    """Where to read a snapshot's tensor from, and whether keeping it costs memory of its own."""
    info = ckpt.info(name)
    dtype = info.dtype.numpy
    if files is not None and sys.byteorder == "little":
        extent = ckpt.raw_extent(name)
        if extent is not None and extent.nbytes == info.numel * dtype.itemsize:
            path = Path(extent.path)
            try:
                fd = files.fd(path)
            except OSError:  # out of file descriptors, say, with many sharded snapshots: read it as the reader does
                fd = None
            if fd is not None:
                return kernel.FileSource(fd, extent.offset, dtype, info.numel, str(path)), False
    flat = _flat(ckpt, name)
    return kernel.ArraySource(flat), not _mapped(flat)


def tensor_series(
    snapshots: Sequence[Checkpoint], name: str, progress: ProgressFn | None = None, files: Files | None = None
) -> TensorSeries:
    """Read ``name`` from each snapshot in turn and measure it against the previous and the first.

    Consecutive snapshots whose tensor lies as-is in a file (read chunk by chunk through
    ``files``) or is a view of a memory-mapped file are measured together, chunk by chunk
    (:func:`ckptkit.timelines.kernel.measure_segment`), so that each chunk is read and widened
    once; a tensor read into memory is measured on its own, after which only the first and
    previous snapshots' values are kept.
    """
    present = [s for s in snapshots if name in s]
    info = present[0].info(name)
    work = kernel.working_type([s.info(name).dtype.numpy for s in present])
    points: list[Point | None] = [None] * len(snapshots)
    first: kernel.Held | None = None
    prev: kernel.Held | None = None
    first_shape: tuple[int, ...] = ()
    prev_shape: tuple[int, ...] = ()
    pending: list[tuple[int, kernel.Source, int]] = []
    shape: tuple[int, ...] = ()

    def measure() -> None:
        nonlocal first, prev, first_shape, prev_shape
        if not pending:
            return
        sources = [src for _, src, _ in pending]
        starts_run = first is None
        sums, held = kernel.measure_segment(
            sources, first if not starts_run and first_shape == shape else None,
            prev if prev is not None and prev_shape == shape else None, work, starts_run=starts_run,
        )  # fmt: skip
        for (t, _, _), s in zip(pending, sums, strict=True):
            points[t] = _point(s)
        if starts_run:
            first, first_shape = held[0], shape
        prev, prev_shape = held[-1], shape
        if progress:
            progress(sum(nbytes for _, _, nbytes in pending))
        pending.clear()

    for t, ckpt in enumerate(snapshots):
        if name not in ckpt:
            measure()
            prev = None
            continue
        x_shape = tuple(ckpt.info(name).shape)
        if pending and x_shape != shape:
            measure()
        source, in_memory = _source(ckpt, name, files)
        shape = x_shape
        pending.append((t, source, ckpt.info(name).nbytes))
        if in_memory:
            measure()
    measure()
    return TensorSeries(name, info.dtype.name, tuple(info.shape), is_optimizer_state(name), points)


def comparable_names(snapshots: Sequence[Checkpoint]) -> list[str]:
    """Floating-point tensors of any snapshot, in first-seen order (aliases of tied weights are not listed twice)."""
    seen: dict[str, None] = {}
    for ckpt in snapshots:
        for info in ckpt.tensor_infos():
            if info.dtype.kind == "f" and info.name not in seen:
                seen[info.name] = None
    return list(seen)


def run(
    snapshots: Sequence[Checkpoint], names: Sequence[str], progress: ProgressFn | None = None
) -> list[TensorSeries]:
    """Every tensor's series, in the order of ``names``, on the worker pool when every reader allows it."""
    executor = default_executor(all(s.concurrent_reads for s in snapshots))
    sizes = [max((s.info(n).nbytes for s in snapshots if n in s), default=0) for n in names]
    groups = balanced_groups(sizes, executor.workers)

    files = Files()

    def work(group: list[int]) -> list[TensorSeries]:
        return [tensor_series(snapshots, names[i], progress, files) for i in group]

    by_index: dict[int, TensorSeries] = {}
    try:
        for group, results in zip(groups, executor.map(work, groups), strict=True):
            by_index.update(zip(group, results, strict=True))
    finally:
        files.close()
    return [by_index[i] for i in range(len(names))]


@dataclass
class PairSums:
    """Sums over every weight shared by two snapshots, for the distance matrix."""

    sum_sq_a: float = 0.0
    sum_sq_b: float = 0.0
    sum_sq_diff: float = 0.0


def distance_sums(
    snapshots: Sequence[Checkpoint], names: Sequence[str], progress: ProgressFn | None = None
) -> list[list[PairSums]]:
    """Pairwise sums over the weights (optimizer state left out): ``[i][j]`` for snapshot ``i`` against ``j``.

    One tensor of every snapshot is held at a time (nothing, for memory-mapped formats).
    """
    n = len(snapshots)
    weights = [name for name in names if not is_optimizer_state(name)]
    executor = default_executor(all(s.concurrent_reads for s in snapshots))

    def pairs_of(name: str) -> dict[tuple[int, int], Accumulator]:
        arrays: list[np.ndarray | None] = []
        for ckpt in snapshots:
            arrays.append(_flat(ckpt, name) if name in ckpt else None)
            if progress and arrays[-1] is not None:
                progress(ckpt.info(name).nbytes)
        out: dict[tuple[int, int], Accumulator] = {}
        for i in range(n):
            for j in range(i + 1, n):
                a, b = arrays[i], arrays[j]
                if a is not None and b is not None and a.size == b.size:
                    out[(i, j)] = accumulate(a, b)
        return out

    totals = [[PairSums() for _ in range(n)] for _ in range(n)]
    sizes = [max((s.info(m).nbytes for s in snapshots if m in s), default=0) for m in weights]
    groups = balanced_groups(sizes, executor.workers)
    work: Callable[[list[int]], list[dict[tuple[int, int], Accumulator]]] = lambda g: [pairs_of(weights[i]) for i in g]  # noqa: E731
    for results in executor.map(work, groups):
        for pairs in results:
            for (i, j), acc in pairs.items():
                for x, y, sa, sb in ((i, j, acc.sum_sq_a, acc.sum_sq_b), (j, i, acc.sum_sq_b, acc.sum_sq_a)):
                    t = totals[x][y]
                    t.sum_sq_a += sa
                    t.sum_sq_b += sb
                    t.sum_sq_diff += acc.sum_sq_diff
    return totals
