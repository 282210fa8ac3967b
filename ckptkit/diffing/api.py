"""``ckptkit.diff``: compare two checkpoints, layer by layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ckptkit import registry
from ckptkit.core.errors import UsageError
from ckptkit.core.model import Checkpoint, MemoryCheckpoint, ProgressFn
from ckptkit.diffing import engine
from ckptkit.diffing.matching import Matching, RenameRule, load_map, match_names
from ckptkit.diffing.metrics import Accumulator
from ckptkit.diffing.normalize import Normalizer, normalize, registered_normalizers
from ckptkit.diffing.report import (
    COMPARED,
    ONLY_A,
    ONLY_B,
    SHAPE_CHANGED,
    UNSUPPORTED,
    DiffReport,
    Side,
    TensorDiff,
    group_layers,
    layer_depth,
    layer_of,
)
from ckptkit.diffing.thresholds import Thresholds

Source = str | Path | Checkpoint | Mapping[str, Any]


def diff(
    a: Source,
    b: Source,
    *,
    a_format: str | None = None,
    b_format: str | None = None,
    depth: int | None = None,
    rename: Sequence[str] = (),
    map: str | Path | Mapping[str, str] | None = None,
    fail_on: Sequence[str] = (),
    tolerance: Sequence[str] = (),
    normalizers: Sequence[Normalizer] | None = None,
    threads: int | None = None,
    progress: ProgressFn | None = None,
) -> DiffReport:
    """Compare checkpoint ``a`` with ``b``: what is only in one, what changed shape or dtype, and
    how far every shared tensor drifted, per tensor, per layer and in total.

    ``a`` and ``b`` are paths (any format ckptkit reads; ``a_format``/``b_format`` skip detection),
    open checkpoints or dicts of arrays. ``rename`` holds ``PATTERN=REPLACEMENT`` rules applied to
    names on both sides, ``map`` a file or dict pairing names of ``a`` with names of ``b``.
    ``depth`` cuts module paths into layers (default: at the repeated blocks). ``fail_on`` and
    ``tolerance`` are the CLI's threshold expressions; :attr:`DiffReport.passed` tells the outcome.
    ``normalizers`` are tried on each side (default: those registered; ``ckptkit.diff`` adds the
    PyTorch <-> Keras layout rules, see :mod:`ckptkit.diffing.normalize`). ``progress`` is called
    with byte counts as tensors are compared.

    Tensors are read one at a time from both sides, large ones in chunks, on ``threads`` threads
    (default: :func:`ckptkit.io.workers.worker_count`'s policy).
    """
    thresholds = Thresholds.parse(fail_on, tolerance)
    if depth is not None and depth < 1:
        raise UsageError(f"--depth must be 1 or more, not {depth}")
    rules = [RenameRule.parse(r) for r in rename]
    mapping = load_map(map) if isinstance(map, (str, Path)) else map
    with ExitStack() as stack:
        ckpt_a = _open(a, a_format, stack)
        ckpt_b = _open(b, b_format, stack)
        chosen = registered_normalizers() if normalizers is None else list(normalizers)
        view_a, how_a = normalize(ckpt_a, ckpt_b, chosen)
        view_b, how_b = normalize(ckpt_b, view_a, chosen)
        # Tensors ckptkit cannot read are matched like the others, then reported as not comparable.
        unsupported = (view_a.unsupported or ckpt_a.unsupported, view_b.unsupported or ckpt_b.unsupported)
        names_a = [*view_a.names(), *view_a.aliases, *unsupported[0]]
        names_b = [*view_b.names(), *view_b.aliases, *unsupported[1]]
        matching = match_names(names_a, names_b, rules, mapping)
        if not matching.pairs:
            raise UsageError(
                f"the two checkpoints have no tensor in common ({_examples(names_a)} against {_examples(names_b)}); "
                "pair names with --rename PATTERN=REPLACEMENT or --map FILE"
            )
        tensors = _entries(view_a, view_b, matching, unsupported)
        compared = [t for t in tensors if t.status == COMPARED]
        jobs = [engine.Job(t.a_name or "", t.b_name or "") for t in compared]
        for t, acc in zip(compared, engine.run(view_a, view_b, jobs, threads, progress), strict=True):
            t.accumulator = acc
        side_a, side_b = Side.of(view_a, how_a), Side.of(view_b, how_b)
    chosen_depth = depth if depth is not None else layer_depth(t.name for t in tensors)
    for t in tensors:
        t.layer = layer_of(t.name, chosen_depth)
    total = Accumulator()
    for t in compared:
        total.merge(t.accumulator or Accumulator())
    report = DiffReport(
        a=side_a,
        b=side_b,
        depth=chosen_depth,
        tensors=tensors,
        layers=group_layers(tensors),
        total=total,
        fail_on=list(fail_on),
        tolerances=list(tolerance),
    )
    report.violations = thresholds.check(tensors)
    return report


def _open(source: Source, format: str | None, stack: ExitStack) -> Checkpoint:
    if isinstance(source, Checkpoint):
        return source
    if isinstance(source, Mapping):
        return MemoryCheckpoint(source)
    return stack.enter_context(registry.open_checkpoint(source, format))


def _examples(names: Sequence[str]) -> str:
    if not names:
        return "no tensors"
    shown = ", ".join(repr(n) for n in names[:2])
    return f"{shown}{', ...' if len(names) > 2 else ''}"


def _entries(
    a: Checkpoint, b: Checkpoint, matching: Matching, unsupported: tuple[Mapping[str, str], Mapping[str, str]]
) -> list[TensorDiff]:
    """One entry per name: matched pairs (compared or shape changed), then names only in one side.

    A name that is a tensor ckptkit cannot read on either side is not comparable (``unsupported``).
    """
    entries: list[TensorDiff] = []
    for pair in matching.pairs:
        t = TensorDiff(name=pair.a, status=COMPARED, layer="", a_name=pair.a, b_name=pair.b, match=pair.how)
        _fill_side(t, a, pair.a, "a", unsupported[0])
        _fill_side(t, b, pair.b, "b", unsupported[1])
        if t.status == COMPARED and t.shape_a != t.shape_b:
            t.status = SHAPE_CHANGED
        entries.append(t)
    for name in matching.only_a:
        t = TensorDiff(name=name, status=ONLY_A, layer="", a_name=name)
        _fill_side(t, a, name, "a", unsupported[0])
        entries.append(t)
    for name in matching.only_b:
        t = TensorDiff(name=name, status=ONLY_B, layer="", b_name=name)
        _fill_side(t, b, name, "b", unsupported[1])
        entries.append(t)
    return entries


def _fill_side(t: TensorDiff, ckpt: Checkpoint, name: str, side: str, unsupported: Mapping[str, str]) -> None:
    if name in unsupported:
        t.status = UNSUPPORTED
        setattr(t, f"unsupported_{side}", unsupported[name])
        return
    target = ckpt.aliases.get(name)
    info = ckpt.info(target or name)
    setattr(t, f"dtype_{side}", info.dtype.name)
    setattr(t, f"shape_{side}", info.shape)
    setattr(t, f"alias_{side}", target)
    stored = ckpt.stored_type(info.name)
    if stored != info.dtype.name:
        setattr(t, f"storage_{side}", stored)
    if target is None:  # a tied alias's storage is counted once, under the tensor it points at
        setattr(t, f"parameters_{side}", info.numel)
        setattr(t, f"bytes_{side}", ckpt.stored_bytes(info.name))
