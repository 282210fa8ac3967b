"""The layout record: what a translation did, kept in the output's metadata so it can be undone.

Stored as JSON under ``ckptkit:layout``: every step, the original order of the tensors, the
values of tensors the target has no place for (a BatchNorm's ``num_batches_tracked``), the two
PyTorch biases an LSTM's Keras bias was summed from, and the source's tied names (aliases).
Translating back to the source framework replays the steps inverted, so names, layouts, values
and ties come back bit for bit; a tensor that changed in between (fine-tuned, say) is translated
by the rules instead, with a note.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import numpy as np

from ckptkit.core import dtypes
from ckptkit.core.compare import arrays_identical
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.core.model import Checkpoint
from ckptkit.layout.ops import Step, encode, inverse, inverse_ops, op_shapes, rename, run
from ckptkit.layout.plan import LayoutPlan

RECORD_KEY = "ckptkit:layout"
CLASSES_KEY = "keras:classes"
VERSION = 1
MAX_RECORDED_BYTES = 1 << 20  # larger dropped tensors are reported, not kept


def make_record(plan: LayoutPlan, ckpt: Checkpoint, added_metadata: list[str]) -> str:
    """The record of ``plan`` applied to ``ckpt`` (reads the small tensors it must keep)."""
    dropped: dict[str, Any] = {}
    tied = {*ckpt.aliases, *ckpt.aliases.values()}  # a dropped tied name comes back from "ties", not a value
    for name in plan.dropped:
        ti = ckpt.info(ckpt.aliases.get(name, name))
        if name not in tied and ti.nbytes <= MAX_RECORDED_BYTES:
            dropped[name] = {"dtype": ti.dtype.name, "shape": list(ti.shape), "value": encode(ckpt.read_tensor(name))}
    summed = {s.out: [encode(ckpt.read_tensor(i)) for i in s.inputs] for s in plan.steps if s.combine == "sum"}
    record = {
        "version": VERSION,
        "from": plan.source,
        "to": plan.target,
        "order": ckpt.names(),
        "steps": [s.to_json() for s in plan.steps],
        "dropped": dropped,
        "summed": summed,
        "splits": {k: list(v) for k, v in plan.splits.items()},
        "ties": dict(ckpt.aliases),
        "added_metadata": added_metadata,
    }
    return json.dumps(record, separators=(",", ":"))


def load_record(ckpt: Checkpoint) -> dict[str, Any] | None:
    text = ckpt.metadata.get(RECORD_KEY)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        raise CorruptCheckpointError(f"the {RECORD_KEY} metadata is not valid JSON") from None
    if not isinstance(record, dict) or record.get("version") != VERSION:
        raise CorruptCheckpointError(f"the {RECORD_KEY} metadata is not a layout record ckptkit {VERSION} knows")
    return record


def undo(record: dict[str, Any], ckpt: Checkpoint) -> LayoutPlan | None:
    """The plan that undoes ``record`` on ``ckpt``; ``None`` when the tensors no longer match it."""
    steps = [Step.from_json(s) for s in record["steps"]]
    have = {ti.name: ti for ti in ckpt.tensor_infos()}
    have.update({alias: replace(ckpt.info(target), name=alias) for alias, target in ckpt.aliases.items()})
    for s in steps:
        ti = have.get(s.out)
        if ti is None or ti.shape != s.shape:
            return None
    plan = LayoutPlan(record["to"], record["from"], restored=True)
    made: list[Step] = []
    rows: dict[str, dict[int, Step]] = {}  # a tensor split into rows (a Keras GRU bias) -> its row steps
    splits = {tuple(v): k for k, v in record.get("splits", {}).items()}
    split_outputs = {name for pair in splits for name in pair}
    for s in steps:
        if s.out in split_outputs:
            continue
        if s.combine == "one":
            made.append(replace(inverse(s), dtype=have[s.out].dtype))
        elif s.combine == "sum":
            made.extend(_unsum(s, record["summed"].get(s.out), ckpt, plan))
        elif s.combine == "stack":
            made.extend(_unstack(s))
        elif s.combine.startswith("row:"):
            rows.setdefault(s.inputs[0], {})[int(s.combine[4:])] = s
        # "zeros" and "const" made tensors the source never had: undoing drops them.
    made.extend(step for source, parts in rows.items() if (step := _restack(source, parts)) is not None)
    for (ih, hh), bias in splits.items():
        made.append(_unsplit(bias, ih, hh, have, ckpt, plan))
    for name, entry in record.get("dropped", {}).items():
        dtype = dtypes.by_name(entry["dtype"])
        made.append(
            Step(
                name,
                (),
                tuple(entry["shape"]),
                dtype,
                combine="const",
                value=entry["value"],
                why="restored from the layout record",
            )
        )
    lost = [n for n in record["order"] if n not in {m.out for m in made}]
    if lost:
        plan.notes.append(
            f"{len(lost)} tensor(s) the earlier translation dropped cannot be restored: {', '.join(lost[:5])}"
        )
    rank = {name: i for i, name in enumerate(record["order"])}
    made.sort(key=lambda m: rank.get(m.out, len(rank)))
    covered = {s.out for s in steps}
    for ti in ckpt.tensor_infos():
        if ti.name not in covered:
            made.append(rename(ti.name, ti.name, ti.shape, ti.dtype, "", "not in the layout record: kept as is"))
    _tie(made, record.get("ties", {}), ckpt, plan)
    plan.steps = made
    plan.remove_metadata = [RECORD_KEY, *record.get("added_metadata", [])]
    return plan


def _tie(made: list[Step], ties: dict[str, str], ckpt: Checkpoint, plan: LayoutPlan) -> None:
    """Tie again the names the source had tied, where the target kept them as separate tensors.

    A tie across a layout change (an Embedding's table and a Linear's weight, a Dense kernel in
    Keras) needs two tensors in the target; back in the source framework they are one again when
    their values still agree bit for bit, else they stay apart with a note.
    """
    index = {m.out: i for i, m in enumerate(made)}
    for alias, target in ties.items():
        if (alias in index) != (target in index):  # the target framework kept one tensor for both names
            kept, other = (alias, target) if alias in index else (target, alias)
            made.append(replace(made[index[kept]], out=other, why=f"tied to {kept}"))
            index[other] = len(made) - 1
            continue
        if alias not in index or target not in index:
            continue
        a, t = made[index[alias]], made[index[target]]
        resolved = [tuple(ckpt.aliases.get(i, i) for i in s.inputs) for s in (a, t)]
        if resolved[0] == resolved[1] and (a.combine, a.pre, a.post) == (t.combine, t.pre, t.post):
            continue  # one stored tensor read alike: the view ties them already
        values = [run(s, [ckpt.read_tensor(ckpt.aliases.get(i, i)) for i in s.inputs]) for s in (a, t)]
        if a.shape == t.shape and a.dtype == t.dtype and arrays_identical(values[0], values[1]):
            made[index[alias]] = replace(t, out=alias, why=f"tied to {target} again")
        else:
            plan.notes.append(f"{alias} was tied to {target}; their values differ now, so they stay apart")


def _decode(value: str, like: Step, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(value), dtype=like.dtype.numpy).reshape(shape)


def _unsum(s: Step, originals: list[str] | None, ckpt: Checkpoint, plan: LayoutPlan) -> list[Step]:
    a_name, b_name = s.inputs
    shape_a, shape_b = s.in_shapes
    if originals is not None:
        a, b = _decode(originals[0], s, shape_a), _decode(originals[1], s, shape_b)
        current = ckpt.read_tensor(s.out)
        if current.dtype == a.dtype and arrays_identical(current, a + b):
            return [
                Step(
                    a_name,
                    (),
                    shape_a,
                    s.dtype,
                    combine="const",
                    value=originals[0],
                    why="restored from the layout record",
                ),
                Step(
                    b_name,
                    (),
                    shape_b,
                    s.dtype,
                    combine="const",
                    value=originals[1],
                    why="restored from the layout record",
                ),
            ]
    plan.notes.append(f"{s.out} changed since it was summed from {a_name} and {b_name}: {a_name} = it, {b_name} = 0")
    return [
        rename(a_name, s.out, s.shape, s.dtype, s.layer, "bias changed since the earlier translation"),
        Step(
            b_name,
            (),
            shape_b,
            s.dtype,
            combine="zeros",
            layer=s.layer,
            why="bias changed since the earlier translation",
        ),
    ]


def _unstack(s: Step) -> list[Step]:
    """Row steps that take a stacked tensor apart again: undo its ``post``, pick a row, undo ``pre``."""
    stacked = (len(s.inputs), *op_shapes(s.in_shapes[0], s.pre)[-1])
    pre = inverse_ops(stacked, s.post)
    out = []
    for row, (name, shape) in enumerate(zip(s.inputs, s.in_shapes, strict=True)):
        post = inverse_ops(shape, s.pre)
        row_step = Step(name, (s.out,), shape, s.dtype, f"row:{row}", pre, post, layer=s.layer, in_shapes=(s.shape,))
        out.append(row_step)
    return out


def _restack(source: str, parts: dict[int, Step]) -> Step | None:
    """The tensor the ``row:<i>`` steps took apart, stacked again; ``None`` unless every row is there."""
    first = parts[min(parts)]
    shape = first.in_shapes[0]
    stacked = op_shapes(shape, first.pre)[-1]
    alike = all((p.pre, p.post) == (first.pre, first.post) for p in parts.values())
    if sorted(parts) != list(range(stacked[0])) or not alike:
        return None
    ordered = [parts[i] for i in range(stacked[0])]
    return Step(
        source,
        tuple(p.out for p in ordered),
        shape,
        first.dtype,
        combine="stack",
        pre=inverse_ops(stacked[1:], first.post),
        post=inverse_ops(shape, first.pre),
        layer=first.layer,
        in_shapes=tuple(p.shape for p in ordered),
    )


def _unsplit(bias: str, ih: str, hh: str, have: dict[str, Any], ckpt: Checkpoint, plan: LayoutPlan) -> Step:
    """Keras's bias from PyTorch's two: bias_ih itself while bias_hh is still all zeros (so -0.0 survives)."""
    b_ih, b_hh = have[ih], have[hh]
    hh_values = ckpt.read_tensor(hh)
    if not np.any(hh_values):
        return rename(bias, ih, b_ih.shape, b_ih.dtype, "", "bias_ih back to the one Keras bias")
    plan.notes.append(f"{hh} is no longer zero: {bias} = {ih} + {hh}")
    return Step(
        bias,
        (ih, hh),
        b_ih.shape,
        b_ih.dtype,
        combine="sum",
        why="sum of the two PyTorch biases",
        in_shapes=(b_ih.shape, b_hh.shape),
    )
