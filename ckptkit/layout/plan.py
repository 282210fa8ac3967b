"""A layout plan: every output tensor's step, what is dropped, and what the user must still say."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ckptkit.core.errors import UsageError
from ckptkit.core.model import TensorInfo
from ckptkit.layout.hints import Hint, find, hint_help
from ckptkit.layout.ops import Op, Step, rename

TARGETS = ("keras", "torch")


class LayoutAmbiguityError(UsageError):
    """The names and shapes do not say how to translate some tensors; hints are needed.

    ``partial`` is the plan for the tensors that could be translated (the others have no step).
    """

    def __init__(self, message: str, partial: LayoutPlan | None = None) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass
class LayoutPlan:
    """What ``--layout`` does to a checkpoint; ``--plan`` prints it without writing anything."""

    source: str
    target: str
    steps: list[Step] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # tensor -> why
    classes: dict[str, str] = field(default_factory=dict)  # Keras layer path -> class
    notes: list[str] = field(default_factory=list)
    splits: dict[str, tuple[str, str]] = field(default_factory=dict)  # Keras bias -> PyTorch (ih, hh)
    restored: bool = False  # undoes an earlier translation recorded in the metadata
    remove_metadata: list[str] = field(default_factory=list)

    @property
    def renamed(self) -> dict[str, str]:
        """New name -> old name, for one-input steps."""
        return {s.out: s.inputs[0] for s in self.steps if len(s.inputs) == 1 and s.out != s.inputs[0]}

    @property
    def transformed(self) -> dict[str, str]:
        """New name -> what was done to make it, for steps that change data or layout."""
        return {s.out: describe(s) for s in self.steps if not s.is_rename}

    def lines(self) -> list[str]:
        out = [f"layout {self.source} -> {self.target}: {len(self.steps)} tensors"]
        if self.restored:
            out[0] += " (undoing the translation recorded in the metadata)"
        for s in self.steps:
            source = " + ".join(s.inputs) if s.inputs else "(recorded value)"
            out.append(f"  {source} -> {s.out} {list(s.shape)}: {describe(s)}")
        for name, why in self.dropped.items():
            out.append(f"  {name}: dropped ({why})")
        out.extend(f"  note: {n}" for n in self.notes)
        return out


def describe(step: Step) -> str:
    parts = [step.why] if step.why else []
    combine = {"sum": "sum", "stack": "stack", "const": "restore recorded value", "zeros": "zeros"}.get(step.combine)
    if step.combine.startswith("row:"):
        combine = f"row {step.combine[4:]}"
    # In the order they run: each input's ops, the combination, then the result's ops.
    ops = [*map(_describe_op, step.pre), *([combine] if combine else []), *map(_describe_op, step.post)]
    return ": ".join([*parts, ", ".join(ops) or "rename"])


def _describe_op(op: Op) -> str:
    if op[0] == "gates":
        return f"reorder gates {tuple(op[2])} on axis {op[1]}"
    return f"{op[0]}{tuple(op[1])}"


def check_unique(steps: list[Step]) -> None:
    seen: dict[str, Step] = {}
    for s in steps:
        if s.out in seen:
            raise UsageError(
                f"two tensors would both be named {s.out!r} ({', '.join(s.inputs)} and {', '.join(seen[s.out].inputs)})"
            )
        seen[s.out] = s


class Planner:
    """What both directions share: hints, the questions to ask, ``keep``, the final checks."""

    def __init__(self, infos: list[TensorInfo], hints: list[Hint], source: str, target: str) -> None:
        self.infos = infos
        self.hints = hints
        self.plan = LayoutPlan(source, target)
        self.asks: list[str] = []
        self.channels: int | None = None  # channels of the last feature map seen
        self.spatial = False  # whether the last layer with weights made a feature map

    def ask(self, text: str) -> None:
        self.asks.append(text)

    def keep_hinted(self, layer: str, params: dict[str, TensorInfo], hint: Hint | None) -> None:
        """Pass tensors hinted ``keep`` through untouched, and take them out of ``params``."""
        for key, ti in list(params.items()):
            own = find(self.hints, ti.name)
            if (hint and hint.kind == "keep") or (own and own.kind == "keep"):
                del params[key]
                self.plan.steps.append(rename(ti.name, ti.name, ti.shape, ti.dtype, layer, "kept as is (hint)"))

    def only(self, layer: str, params: dict[str, TensorInfo], allowed: set[str]) -> bool:
        """True if ``params`` holds nothing but ``allowed``; else asks for a hint."""
        extra = set(params) - allowed
        if extra:
            self.ask(
                f"{layer} has {', '.join(sorted(extra))} besides {' and '.join(sorted(allowed))} "
                f"({hint_help(layer, ('keep',))})"
            )
        return not extra

    def flatten_ops(self, layer: str, dims: tuple[int, ...], inputs: int, outputs: int) -> tuple[Op, ...] | None:
        """PyTorch ``(O, C*H*W)`` -> Keras ``(H*W*C, O)`` for a Linear after Flatten of ``dims`` = (C, H, W...).

        PyTorch flattens a channels-first map, Keras a channels-last one: the rows are reordered.
        """
        if len(dims) < 2 or math.prod(dims) != inputs:
            self.ask(
                f"{layer}: flatten:{'x'.join(map(str, dims))} holds {math.prod(dims)} values, the layer takes {inputs}"
            )
            return None
        c, spatial = dims[0], dims[1:]
        n = len(spatial)
        return (
            ("reshape", (outputs, c, *spatial)),
            ("transpose", (*range(2, 2 + n), 1, 0)),
            ("reshape", (inputs, outputs)),
        )

    def finish(self) -> LayoutPlan:
        if self.asks:
            raise LayoutAmbiguityError(
                f"--layout {self.plan.target} cannot tell how to translate {len(self.asks)} layer(s): "
                + "; ".join(self.asks),
                self.plan,
            )
        check_unique(self.plan.steps)
        return self.plan
