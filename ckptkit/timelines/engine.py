"""Streaming a run's snapshots tensor by tensor: norms, updates, drift and NaN/Inf per snapshot.

The work is tensor-major: for one tensor name, its value in each snapshot is read in turn and
compared with the previous snapshot's and the first snapshot's, then dropped. At any moment a
worker holds one tensor of at most three snapshots (first, previous, current), and none at all
for memory-mapped formats, whatever the number of snapshots; every snapshot file is read once.
Tensors are dealt to the worker pool in groups of similar size; the sums are those of
:mod:`ckptkit.diffing.metrics` (chunked, float64 totals), so a timeline and a diff of the same two
snapshots agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ckptkit.core.model import Checkpoint, ProgressFn
from ckptkit.diffing.metrics import Accumulator, accumulate
from ckptkit.io.workers import balanced_groups, default_executor

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


def _point(elements: int, sum_sq: float, nan: int, inf: int) -> Point:
    return Point(elements=elements, sum_sq=sum_sq, nan=nan, inf=inf, nonzero=sum_sq > 0 or nan + inf > 0)


def _own(x: np.ndarray) -> Point:
    acc = accumulate(x, x)
    return _point(acc.elements, acc.sum_sq_b, acc.nan_b, acc.inf_b)


def _against(base: np.ndarray, x: np.ndarray) -> Accumulator:
    return accumulate(base, x)


def tensor_series(snapshots: Sequence[Checkpoint], name: str, progress: ProgressFn | None = None) -> TensorSeries:
    """Read ``name`` from each snapshot in turn and measure it against the previous and the first."""
    points: list[Point | None] = []
    first: np.ndarray | None = None
    prev: np.ndarray | None = None
    first_shape: tuple[int, ...] = ()
    prev_shape: tuple[int, ...] = ()
    info = next(s.info(name) for s in snapshots if name in s)
    for ckpt in snapshots:
        if name not in ckpt:
            points.append(None)
            prev = None
            continue
        x = _flat(ckpt, name)
        shape = tuple(ckpt.info(name).shape)
        if prev is not None and prev.size == x.size and shape == prev_shape:
            acc = _against(prev, x)
            # Where every element of the previous value is finite, the pair sums cover x's own: one pass saved.
            all_finite = acc.nan_a + acc.inf_a == 0
            point = _point(acc.elements, acc.sum_sq_b, acc.nan_b, acc.inf_b) if all_finite else _own(x)
            point.sum_sq_prev, point.sum_sq_update, point.max_update = acc.sum_sq_a, acc.sum_sq_diff, float(acc.max_abs)
        else:
            point = _own(x)
        if first is not None and first.size == x.size and shape == first_shape:
            if first is prev:  # the previous snapshot is the first: the same sums
                point.sum_sq_first, point.sum_sq_drift, point.max_drift = (
                    point.sum_sq_prev, point.sum_sq_update, point.max_update,
                )  # fmt: skip
            else:
                acc = _against(first, x)
                point.sum_sq_first, point.sum_sq_drift = acc.sum_sq_a, acc.sum_sq_diff
                point.max_drift = float(acc.max_abs)
        if first is None:
            first, first_shape = x, shape
        prev, prev_shape = x, shape
        points.append(point)
        if progress:
            progress(ckpt.info(name).nbytes)
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

    def work(group: list[int]) -> list[TensorSeries]:
        return [tensor_series(snapshots, names[i], progress) for i in group]

    by_index: dict[int, TensorSeries] = {}
    for group, results in zip(groups, executor.map(work, groups), strict=True):
        by_index.update(zip(group, results, strict=True))
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
