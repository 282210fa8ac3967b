"""The translated checkpoint: a view computing each output tensor from the source when read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.layout.ops import Step, run
from ckptkit.layout.plan import LayoutPlan


class LayoutCheckpoint(Checkpoint):
    """``base`` seen through a :class:`LayoutPlan`; a renamed tensor keeps its raw bytes.

    Steps that compute the same thing from the same stored tensor (the two names of a tied weight,
    translated alike) give one tensor and an alias, so a tie stays a tie in the target.
    """

    def __init__(self, base: Checkpoint, plan: LayoutPlan, metadata: dict[str, str]) -> None:
        super().__init__(base.path)
        self.base = base
        self.plan = plan
        self.format_name = base.format_name
        self.metadata = metadata
        self.extras = dict(base.extras)
        self._steps: dict[str, Step] = {s.out: s for s in plan.steps}
        self._infos: list[TensorInfo] = []
        first: dict[tuple[Any, ...], str] = {}
        for s in plan.steps:
            key = (tuple(base.aliases.get(i, i) for i in s.inputs), s.combine, s.pre, s.post, s.shape, s.dtype.name)
            if s.inputs and key in first:
                self.aliases[s.out] = first[key]
                continue
            first.setdefault(key, s.out)
            source = f"from {', '.join(s.inputs) or 'the layout record'}"
            self._infos.append(TensorInfo(s.out, s.dtype, s.shape, source))

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def _read_base(self, name: str) -> np.ndarray:
        return self.base.read_tensor(self.base.aliases.get(name, name))

    def read_tensor(self, name: str) -> np.ndarray:
        step = self._steps[name]
        return run(step, [self._read_base(i) for i in step.inputs])

    def raw_extent(self, name: str) -> RawExtent | None:
        step = self._steps[name]
        if not step.is_rename:
            return None
        source = step.inputs[0]
        return self.base.raw_extent(self.base.aliases.get(source, source))

    def close(self) -> None:
        self.base.close()
