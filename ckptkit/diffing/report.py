"""The diff report: per tensor, per layer and in total; its JSON form is schema ``ckptkit.diff/1``.

Metric values follow :meth:`~ckptkit.diffing.metrics.Accumulator.metrics`; in the JSON form a value
that is not a finite number (``rel_l2`` of an all-zero tensor that changed) is ``null``.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ckptkit.core.model import Checkpoint
from ckptkit.core.names import module_path
from ckptkit.diffing.metrics import Accumulator
from ckptkit.diffing.status import COMPARED, ONLY_A, ONLY_B, SHAPE_CHANGED, UNSUPPORTED
from ckptkit.io.jsonfile import dumps_text

SCHEMA_ID = "ckptkit.diff/1"
_DIGITS = re.compile(r"\d+")


@dataclass
class Side:
    """Sizes of one checkpoint (aliases of tied weights are not counted twice)."""

    path: str
    format: str
    tensors: int
    parameters: int
    bytes: int
    bytes_by_dtype: dict[str, int]
    parameters_by_dtype: dict[str, int]
    normalized_by: str | None = None

    @classmethod
    def of(cls, ckpt: Checkpoint, normalized_by: str | None = None) -> Side:
        by_dtype: Counter[str] = Counter()
        params: Counter[str] = Counter()
        for ti in ckpt.tensor_infos():
            stored = ckpt.stored_type(ti.name)
            by_dtype[stored] += ckpt.stored_bytes(ti.name)
            params[stored] += ti.numel
        return cls(
            path=ckpt.url or (str(ckpt.path) if ckpt.path is not None else "<memory>"),
            format=ckpt.format_name,
            tensors=len(ckpt.tensor_infos()),
            parameters=sum(params.values()),
            bytes=sum(by_dtype.values()),
            bytes_by_dtype=dict(by_dtype),
            parameters_by_dtype=dict(params),
            normalized_by=normalized_by,
        )


@dataclass
class TensorDiff:
    """One tensor name's comparison. ``status`` is compared, shape_changed, only_a, only_b or unsupported.

    ``unsupported`` (not comparable): on one side or both the name is a tensor ckptkit cannot read;
    ``unsupported_a``/``unsupported_b`` say why, and the other side's facts are filled if it has them.
    """

    name: str
    status: str
    layer: str
    a_name: str | None = None
    b_name: str | None = None
    match: str | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    parameters_a: int = 0
    parameters_b: int = 0
    bytes_a: int = 0
    bytes_b: int = 0
    alias_a: str | None = None  # the tensor this name shares storage with, when it is a tied alias
    alias_b: str | None = None
    unsupported_a: str | None = None  # why ckptkit cannot read this tensor in A
    unsupported_b: str | None = None
    storage_a: str | None = None  # how A stores it, when not as its dtype (a GGUF quantization: Q4_K)
    storage_b: str | None = None
    accumulator: Accumulator | None = None  # set once the values are compared

    @property
    def storage(self) -> str:
        """The encoding the comparison measures: B's storage (the quantized side, in A-against-quantized), else A's."""
        return self.storage_b or self.storage_a or self.dtype_b or self.dtype_a or "-"

    @property
    def metrics(self) -> dict[str, Any] | None:
        return self.accumulator.metrics() if self.accumulator is not None else None

    @property
    def dtype_changed(self) -> bool:
        return self.status in (COMPARED, SHAPE_CHANGED) and self.dtype_a != self.dtype_b

    @property
    def changed(self) -> bool:
        """Anything differs: values, shape, dtype or presence."""
        if self.status != COMPARED or self.dtype_changed or self.accumulator is None:
            return True
        return self.accumulator.identical < self.accumulator.elements


@dataclass
class LayerDiff:
    """Tensors grouped by module path, their drift and sizes aggregated."""

    name: str
    tensors: int = 0
    compared: int = 0
    only_a: int = 0
    only_b: int = 0
    shape_changed: int = 0
    dtype_changed: int = 0
    parameters_a: int = 0
    parameters_b: int = 0
    bytes_a: int = 0
    bytes_b: int = 0
    unsupported: int = 0
    accumulator: Accumulator = field(default_factory=Accumulator)

    @property
    def metrics(self) -> dict[str, Any] | None:
        return self.accumulator.metrics() if self.compared else None


@dataclass
class StorageDiff:
    """Compared tensors of one storage type (a quantization), their drift and sizes aggregated."""

    storage: str
    tensors: int = 0
    parameters: int = 0
    bytes_a: int = 0
    bytes_b: int = 0
    accumulator: Accumulator = field(default_factory=Accumulator)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.accumulator.metrics()


@dataclass
class Violation:
    """A tensor outside a threshold: the condition, where it came from and the value found."""

    tensor: str
    condition: str
    source: str
    value: float | int | None = None


@dataclass
class DiffReport:
    """Everything ``ckptkit diff`` reports; :meth:`to_dict` is the ``--json`` output."""

    a: Side
    b: Side
    depth: int | None
    tensors: list[TensorDiff]
    layers: list[LayerDiff]
    total: Accumulator
    fail_on: list[str] = field(default_factory=list)
    tolerances: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no threshold was crossed (always, when none was given)."""
        return not self.violations

    def by_status(self, status: str) -> list[TensorDiff]:
        return [t for t in self.tensors if t.status == status]

    @property
    def compared(self) -> list[TensorDiff]:
        return self.by_status(COMPARED)

    def most_drifted(self, top: int | None = None) -> list[TensorDiff]:
        """Compared tensors, the largest relative L2 first (then the largest max |Δ|)."""
        ranked = sorted(self.compared, key=lambda t: drift_rank(t.metrics))
        return ranked if not top else ranked[:top]

    def most_drifted_layers(self, top: int | None = None) -> list[LayerDiff]:
        """Layers holding compared tensors, the most drifted first."""
        ranked = sorted((x for x in self.layers if x.compared), key=lambda x: drift_rank(x.metrics))
        return ranked if not top else ranked[:top]

    def summary(self) -> dict[str, Any]:
        compared = self.compared
        return {
            "compared": len(compared),
            "identical": sum(1 for t in compared if not t.changed),
            "changed": sum(1 for t in self.tensors if t.changed),
            "only_a": len(self.by_status(ONLY_A)),
            "only_b": len(self.by_status(ONLY_B)),
            "shape_changed": len(self.by_status(SHAPE_CHANGED)),
            "dtype_changed": sum(1 for t in self.tensors if t.dtype_changed),
            "unsupported": len(self.by_status(UNSUPPORTED)),
            "matched_by": dict(Counter(t.match for t in self.tensors if t.match)),
        }

    def size_change(self) -> dict[str, Any]:
        dtypes = list(dict.fromkeys([*self.a.bytes_by_dtype, *self.b.bytes_by_dtype]))
        return {
            "parameters": self.b.parameters - self.a.parameters,
            "bytes": self.b.bytes - self.a.bytes,
            "bytes_by_dtype": {d: self.b.bytes_by_dtype.get(d, 0) - self.a.bytes_by_dtype.get(d, 0) for d in dtypes},
        }

    def by_storage(self) -> list[StorageDiff]:
        """Compared tensors grouped by how they are stored (``Q4_K``, ``Q6_K``, ``float16``), the most drifted first.

        Worth showing when a side is quantized: the drift of each quantization type taken together.
        """
        groups: dict[str, StorageDiff] = {}
        for t in self.compared:
            g = groups.setdefault(t.storage, StorageDiff(t.storage))
            g.tensors += 1
            g.parameters += t.parameters_b or t.parameters_a
            g.bytes_a += t.bytes_a
            g.bytes_b += t.bytes_b
            g.accumulator.merge(t.accumulator or Accumulator())
        return sorted(groups.values(), key=lambda g: drift_rank(g.metrics))

    @property
    def quantized(self) -> bool:
        """Whether either side stores tensors otherwise than as their dtype."""
        return any(t.storage_a or t.storage_b for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, schema ``ckptkit.diff/1`` (see ``schema.json``)."""
        return {
            "schema": SCHEMA_ID,
            "a": self.a.__dict__.copy(),
            "b": self.b.__dict__.copy(),
            "size_change": self.size_change(),
            "summary": self.summary(),
            "total": _json_metrics(self.total.metrics()),
            "depth": self.depth,
            "layers": [_layer_dict(layer) for layer in self.layers],
            "tensors": [_tensor_dict(t) for t in self.tensors],
            "thresholds": {
                "fail_on": list(self.fail_on),
                "tolerances": list(self.tolerances),
                "passed": self.passed,
                "violations": [_json_metrics(v.__dict__) for v in self.violations],
            },
        }

    def to_json(self, indent: int | None = 2) -> str:
        return dumps_text(self.to_dict(), indent=indent, allow_nan=False)

    def to_markdown(self, top: int = 20) -> str:
        from ckptkit.diffing.markdown import render_markdown

        return render_markdown(self, top=top)

    def to_html(self) -> str:
        from ckptkit.diffing.html import render_html

        return render_html(self)


def drift_rank(metrics: dict[str, Any] | None) -> tuple[int, float, float]:
    """Sort key: NaN or Inf on either side first (their drift sums leave those elements out), then the
    largest relative L2 (infinite ones before all), then the largest max |Δ|."""
    if metrics is None:
        return (1, math.inf, math.inf)
    nonfinite = sum(int(metrics.get(k) or 0) for k in ("nan_a", "nan_b", "inf_a", "inf_b"))
    return (0 if nonfinite else 1, -metrics["rel_l2"], -float(metrics["max_abs"]))


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_metrics(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if metrics is None else {k: _json_value(v) for k, v in metrics.items()}


def _tensor_dict(t: TensorDiff) -> dict[str, Any]:
    return {
        "name": t.name,
        "status": t.status,
        "layer": t.layer,
        "a_name": t.a_name,
        "b_name": t.b_name,
        "match": t.match,
        "dtype_a": t.dtype_a,
        "dtype_b": t.dtype_b,
        "dtype_changed": t.dtype_changed,
        "shape_a": None if t.shape_a is None else list(t.shape_a),
        "shape_b": None if t.shape_b is None else list(t.shape_b),
        "parameters_a": t.parameters_a,
        "parameters_b": t.parameters_b,
        "bytes_a": t.bytes_a,
        "bytes_b": t.bytes_b,
        "alias_a": t.alias_a,
        "alias_b": t.alias_b,
        "unsupported_a": t.unsupported_a,
        "unsupported_b": t.unsupported_b,
        "storage_a": t.storage_a,
        "storage_b": t.storage_b,
        "metrics": _json_metrics(t.metrics),
    }


def _layer_dict(layer: LayerDiff) -> dict[str, Any]:
    out = {k: v for k, v in layer.__dict__.items() if k != "accumulator"}
    out["metrics"] = _json_metrics(layer.metrics)
    return out


def layer_depth(names: Iterable[str]) -> int | None:
    """The depth at which most names first carry an index (``model.layers.3`` -> 2), else ``None``.

    Grouping at that depth gives one layer per repeated block; ``None`` groups by full module path.
    """
    depths: Counter[int] = Counter()
    for name in names:
        for i, part in enumerate(module_path(name)):
            if "." in part or part.isdigit():  # a numbered item: layers.3, or 3 in a top-level Sequential
                depths[i + 1] += 1
                break
    return depths.most_common(1)[0][0] if depths else None


def layer_of(name: str, depth: int | None) -> str:
    """The layer a tensor belongs to: its module path cut at ``depth`` (a top-level tensor is its own)."""
    path = module_path(name)
    if not path:
        return name
    return ".".join(path if depth is None else path[:depth])


def group_layers(tensors: Sequence[TensorDiff]) -> list[LayerDiff]:
    """Aggregate tensors into layers, ordered by :func:`_layer_order`."""
    layers: dict[str, LayerDiff] = defaultdict(lambda: LayerDiff(""))
    for t in tensors:
        layer = layers[t.layer]
        layer.name = t.layer
        layer.tensors += 1
        layer.parameters_a += t.parameters_a
        layer.parameters_b += t.parameters_b
        layer.bytes_a += t.bytes_a
        layer.bytes_b += t.bytes_b
        layer.dtype_changed += t.dtype_changed
        if t.status == COMPARED:
            layer.compared += 1
            if t.accumulator is not None:
                layer.accumulator.merge(t.accumulator)
        else:
            setattr(layer, t.status, getattr(layer, t.status) + 1)
    return _layer_order(list(layers.values()))


def _layer_order(layers: list[LayerDiff]) -> list[LayerDiff]:
    """Layers in the order their kind first appears, numbered ones in numeric order.

    ``layers.2`` comes before ``layers.10`` even where the file sorts names as text (safetensors
    does), while ``embed, layers.N, norm, head`` keeps the order a model defines them in.
    """
    first: dict[str, int] = {}
    for i, layer in enumerate(layers):
        first.setdefault(_DIGITS.sub("#", layer.name), i)

    def key(item: tuple[int, LayerDiff]) -> tuple[int, list[int], int]:
        i, layer = item
        return (first[_DIGITS.sub("#", layer.name)], [int(n) for n in _DIGITS.findall(layer.name)], i)

    return [layer for _, layer in sorted(enumerate(layers), key=key)]
