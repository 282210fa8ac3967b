"""``diff`` across frameworks: a Keras checkpoint seen with PyTorch names and layouts.

When one side of a diff is a Keras checkpoint (or a file ``convert --layout keras`` wrote) and
the other has PyTorch names, the Keras side is read through the plan ``convert --layout torch``
would write: the recorded translation undone when the file has one, the layout rules otherwise.
A PyTorch checkpoint and its Keras translation then match name for name, with zero drift.

Layers the rules cannot translate without a ``--layout-hint`` keep their Keras names (and show
as unmatched) instead of failing the diff; Keras tensors PyTorch has no place for (optimizer
state) also keep theirs, so nothing in the file is silently left out of the report. Without a
recorded translation, tensors the rules would make up (zeros) are left out rather than compared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ckptkit.core.errors import UsageError
from ckptkit.core.model import Checkpoint
from ckptkit.layout import plan_layout
from ckptkit.layout.hints import parse_hints
from ckptkit.layout.ops import rename
from ckptkit.layout.plan import LayoutAmbiguityError, LayoutPlan
from ckptkit.layout.record import RECORD_KEY
from ckptkit.layout.view import LayoutCheckpoint

KERAS_FORMATS = ("keras", "keras-h5")


def keras_to_torch_layout(ckpt: Checkpoint, other: Checkpoint) -> Checkpoint | None:
    """``ckpt`` with PyTorch names and layouts when it is Keras and ``other`` has PyTorch names, else ``None``."""
    return _torch_view(ckpt, other, ())


def keras_to_torch_layout_with(hints: Sequence[str]) -> Callable[[Checkpoint, Checkpoint], Checkpoint | None]:
    """:func:`keras_to_torch_layout` with ``--layout-hint``s (``PATTERN=KIND``) for what the rules cannot tell."""
    parse_hints(list(hints))  # a malformed hint is reported now, not swallowed as "does not apply"
    chosen = tuple(hints)

    def normalizer(ckpt: Checkpoint, other: Checkpoint) -> Checkpoint | None:
        return _torch_view(ckpt, other, chosen)

    normalizer.__qualname__ = keras_to_torch_layout.__qualname__
    return normalizer


def _torch_view(ckpt: Checkpoint, other: Checkpoint, hints: Sequence[str]) -> Checkpoint | None:
    if not _is_keras(ckpt) or not _has_torch_names(other):
        return None
    try:
        plan = plan_layout(ckpt, "torch", hints)
    except LayoutAmbiguityError as err:
        if err.partial is None:
            return None
        plan = err.partial
        plan.notes.append(str(err))
    except UsageError:  # already in PyTorch layout, or no Keras names after all
        return None
    if not plan.restored:
        _only_what_the_file_holds(plan, ckpt)
    # The view is only read from: it carries the file's own metadata, not a new layout record.
    return LayoutCheckpoint(ckpt, plan, dict(ckpt.metadata))


def _is_keras(ckpt: Checkpoint) -> bool:
    return ckpt.format_name in KERAS_FORMATS or RECORD_KEY in ckpt.metadata


def _has_torch_names(ckpt: Checkpoint) -> bool:
    names = [*ckpt.names(), *ckpt.aliases]
    return bool(names) and not any("/" in n for n in names)


def _only_what_the_file_holds(plan: LayoutPlan, ckpt: Checkpoint) -> None:
    """Drop the tensors the rules make up, and keep every tensor no step reads under its Keras name.

    A converted file gets zeros where Keras has nothing (``num_batches_tracked``, an LSTM's
    ``bias_hh``); compared, those would show drift the Keras file does not have, so they are
    left out and the report lists the PyTorch ones as only in one side.
    """
    plan.steps = [step for step in plan.steps if step.inputs]
    used = {name for step in plan.steps for name in step.inputs}
    made = {step.out for step in plan.steps}
    for ti in ckpt.tensor_infos():
        if ti.name not in used and ti.name not in made:
            why = plan.dropped.get(ti.name, "no rule translates it without a --layout-hint")
            plan.steps.append(rename(ti.name, ti.name, ti.shape, ti.dtype, "", f"kept as is: {why}"))
