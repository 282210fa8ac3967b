"""The steps a layout translation is made of: each output tensor from one or two inputs.

A step reshapes, transposes and reorders gate blocks (lossless moves of data), or combines two
tensors (sum, stack, pick a row), or makes a tensor from a recorded value. Every step can be
written to JSON and, except a sum, inverted exactly.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ckptkit.core import dtypes
from ckptkit.core.dtypes import DType

Op = tuple[Any, ...]  # ("transpose", perm) | ("reshape", shape) | ("gates", axis, order)


@dataclass(frozen=True)
class Step:
    """``out`` made from ``inputs``: each input through ``pre``, then ``combine``, then ``post``.

    ``combine`` is "one" (the single input), "sum", "stack", "row:<i>" (one row of the input),
    "const" (``value``, base64 of the bytes) or "zeros".
    """

    out: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: DType
    combine: str = "one"
    pre: tuple[Op, ...] = ()
    post: tuple[Op, ...] = ()
    value: str | None = None
    layer: str = ""
    why: str = ""
    in_shapes: tuple[tuple[int, ...], ...] = field(default=())

    @property
    def is_rename(self) -> bool:
        return self.combine == "one" and not self.pre and not self.post

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "out": self.out,
            "in": list(self.inputs),
            "in_shapes": [list(s) for s in self.in_shapes],
            "shape": list(self.shape),
            "dtype": self.dtype.name,
            "combine": self.combine,
        }
        if self.pre:
            data["pre"] = [list(op) for op in self.pre]
        if self.post:
            data["post"] = [list(op) for op in self.post]
        if self.value is not None:
            data["value"] = self.value
        if self.layer:
            data["layer"] = self.layer
        if self.why:
            data["why"] = self.why
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> Step:
        return Step(
            out=data["out"],
            inputs=tuple(data["in"]),
            in_shapes=tuple(tuple(s) for s in data.get("in_shapes", [])),
            shape=tuple(data["shape"]),
            dtype=dtypes.by_name(data["dtype"]),
            combine=data.get("combine", "one"),
            pre=tuple(_op(o) for o in data.get("pre", [])),
            post=tuple(_op(o) for o in data.get("post", [])),
            value=data.get("value"),
            layer=data.get("layer", ""),
            why=data.get("why", ""),
        )


def _op(raw: list[Any]) -> Op:
    kind = raw[0]
    if kind == "gates":
        return ("gates", int(raw[1]), tuple(raw[2]))
    return (kind, tuple(raw[1]))


def apply_ops(x: np.ndarray, ops: tuple[Op, ...]) -> np.ndarray:
    for op in ops:
        if op[0] == "transpose":
            x = x.transpose(op[1])
        elif op[0] == "reshape":
            x = np.ascontiguousarray(x).reshape(op[1])
        elif op[0] == "gates":
            _, axis, order = op
            blocks = np.split(x, len(order), axis=axis)
            x = np.concatenate([blocks[i] for i in order], axis=axis)
    return x


def op_shapes(shape: tuple[int, ...], ops: tuple[Op, ...]) -> list[tuple[int, ...]]:
    """The shape before each op and after the last one."""
    shapes = [tuple(shape)]
    for op in ops:
        if op[0] == "transpose":
            shape = tuple(shape[i] for i in op[1])
        elif op[0] == "reshape":
            shape = tuple(op[1])
        shapes.append(shape)
    return shapes


def inverse_ops(shape: tuple[int, ...], ops: tuple[Op, ...]) -> tuple[Op, ...]:
    """Ops that undo ``ops`` applied to a tensor of ``shape``."""
    shapes = op_shapes(shape, ops)
    inverse: list[Op] = []
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        if op[0] == "transpose":
            inverse.append(("transpose", tuple(int(j) for j in np.argsort(op[1]))))
        elif op[0] == "reshape":
            inverse.append(("reshape", shapes[i]))
        elif op[0] == "gates":
            inverse.append(("gates", op[1], tuple(int(j) for j in np.argsort(op[2]))))
    return tuple(inverse)


def run(step: Step, inputs: list[np.ndarray]) -> np.ndarray:
    """Compute the step's output from its input arrays."""
    if step.combine == "const":
        raw = base64.b64decode(step.value or "")
        return np.frombuffer(raw, dtype=step.dtype.numpy).reshape(step.shape).copy()
    if step.combine == "zeros":
        return np.zeros(step.shape, step.dtype.numpy)
    xs = [apply_ops(x, step.pre) for x in inputs]
    if step.combine == "sum":
        # Adding zeros would turn -0.0 into +0.0; a bias summed with an all-zero one is kept as is.
        x = xs[0] if not np.any(xs[1]) else xs[1] if not np.any(xs[0]) else xs[0] + xs[1]
    elif step.combine == "stack":
        x = np.stack(xs)
    elif step.combine.startswith("row:"):
        x = xs[0][int(step.combine[4:])]
    else:
        x = xs[0]
    return np.ascontiguousarray(apply_ops(x, step.post))


def encode(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def rename(out: str, source: str, shape: tuple[int, ...], dtype: DType, layer: str, why: str) -> Step:
    return Step(out, (source,), shape, dtype, layer=layer, why=why, in_shapes=(shape,))


def moved(
    out: str, source: str, shape: tuple[int, ...], dtype: DType, post: tuple[Op, ...], layer: str, why: str
) -> Step:
    """A step that only moves data (reshape, transpose, gate reorder)."""
    final = op_shapes(shape, post)[-1]
    return Step(out, (source,), final, dtype, post=post, layer=layer, why=why, in_shapes=(shape,))


def inverse(step: Step) -> Step:
    """The step that recreates a one-input step's input from its output."""
    assert step.combine == "one"
    shape = step.in_shapes[0]
    ops = inverse_ops(shape, step.pre + step.post)
    return replace(
        step, out=step.inputs[0], inputs=(step.out,), shape=shape, pre=(), post=ops, in_shapes=(step.shape,), why=""
    )


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
