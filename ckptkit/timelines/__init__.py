"""``ckptkit.timeline``: how a training run's weights moved, snapshot by snapshot.

Given the checkpoints a run saved (any formats, mixed), it orders them by training step and
reports per layer and snapshot the weight norm, the update ratio ``|W_t - W_{t-1}| / |W_{t-1}|``,
the drift from the first snapshot and NaN/Inf counts, and it names the events a user looks for:
where NaN or Inf first appeared, layers that never changed, norms that exploded, sudden jumps, and
Adam second moments of zero or Inf.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path

from ckptkit.core.errors import UsageError
from ckptkit.core.model import ProgressFn
from ckptkit.core.trust import trusting
from ckptkit.timelines import engine
from ckptkit.timelines.report import (
    DEFAULT_EXPLODE_FACTOR,
    DEFAULT_JUMP_FACTOR,
    SCHEMA_ID,
    Event,
    FailOn,
    Layer,
    Settings,
    TimelineReport,
    build_report,
)
from ckptkit.timelines.snapshots import Order, Snapshot, open_snapshots, order_snapshots

__all__ = ["SCHEMA_ID", "Event", "Layer", "Snapshot", "TimelineReport", "timeline"]


def timeline(
    paths: Sequence[str | Path],
    *,
    order: Order = "step",
    format: str | None = None,
    depth: int | None = None,
    matrix: bool = False,
    fail_on: Sequence[str] = (),
    explode_factor: float = DEFAULT_EXPLODE_FACTOR,
    jump_factor: float = DEFAULT_JUMP_FACTOR,
    progress: ProgressFn | None = None,
    on_open: Callable[[int], ProgressFn | None] | None = None,
    allow_globals: Iterable[str] = (),
) -> TimelineReport:
    """Follow every floating-point tensor through the snapshots at ``paths``.

    ``paths`` are checkpoint files or folders, folders holding several checkpoints, or glob
    patterns. ``order="step"`` sorts by the step the checkpoints record (or the numbers in their
    names); ``"given"`` keeps the order given. ``depth`` groups tensors into layers as ``diff``
    does. ``matrix`` adds pairwise distances between all snapshots. ``fail_on`` holds event kinds
    (``nonfinite``, ``frozen``, ``exploding``, ``jump``, ``optimizer``) and conditions such as
    ``update_ratio>0.1``; :attr:`TimelineReport.passed` tells whether none was met.
    ``on_open`` is called with the total bytes to read once every snapshot is open and returns
    the progress callback to use (the CLI's progress bar). ``allow_globals`` are pickle globals
    trusted as ``--allow-global`` trusts them.
    """
    if depth is not None and depth < 1:
        raise UsageError(f"--depth must be 1 or more, not {depth}")
    if explode_factor <= 1 or jump_factor <= 1:
        raise UsageError("--explode-factor and --jump-factor must be greater than 1")
    if order not in ("step", "given"):
        raise UsageError(f"--order must be 'step' or 'given', not {order!r}")
    rules = FailOn.parse(fail_on)
    notes: list[str] = []
    with ExitStack() as stack:
        stack.enter_context(trusting(allow_globals))
        opened = open_snapshots(paths, stack, format, notes)
        if len(opened) < 2:
            shown = ", ".join(map(str, paths))
            why = "".join(f"; {note}" for note in notes)
            raise UsageError(f"a timeline needs at least two snapshots; {len(opened)} found in {shown}{why}")
        snapshots, how, ordering_notes = order_snapshots(list(opened), opened, order)
        notes += ordering_notes
        checkpoints = [opened[s.path] for s in snapshots]
        names = engine.comparable_names(checkpoints)
        if not names:
            raise UsageError("the snapshots hold no floating-point tensor to follow")
        skipped = sorted({n for c in checkpoints for n in c.names()} - set(names))
        if on_open is not None:
            total = sum(c.info(n).nbytes for c in checkpoints for n in names if n in c)
            progress = on_open(total * (2 if matrix else 1)) or progress
        series = engine.run(checkpoints, names, progress)
        sums = engine.distance_sums(checkpoints, names, progress) if matrix else None
        formats = [c.format_name for c in checkpoints]
    return build_report(
        snapshots, formats, how, series, depth, Settings(explode_factor, jump_factor), rules, sums, skipped, notes
    )
