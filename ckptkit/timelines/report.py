"""A run's timeline: per layer and snapshot, the figures, the events found in them, and the CI verdict."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ckptkit.core.errors import UsageError
from ckptkit.diffing.report import layer_depth, layer_of
from ckptkit.diffing.thresholds import Condition
from ckptkit.io.jsonfile import dumps_text
from ckptkit.timelines.engine import PairSums, Point, TensorSeries, is_second_moment
from ckptkit.timelines.snapshots import Snapshot

SCHEMA_ID = "ckptkit.timeline/1"
NONFINITE, FROZEN, EXPLODING, JUMP, OPTIMIZER = "nonfinite", "frozen", "exploding", "jump", "optimizer"
EVENT_KINDS = (NONFINITE, FROZEN, EXPLODING, JUMP, OPTIMIZER)
METRICS = ("norm", "update_ratio", "drift", "max_update", "max_drift", "nan", "inf")
SERIES = METRICS  # the per-snapshot lists of a layer or tensor, in the order they are written
DEFAULT_EXPLODE_FACTOR = 10.0
DEFAULT_JUMP_FACTOR = 10.0
MIN_JUMP = 1e-6  # an update ratio below this is noise, whatever the layer's median


@dataclass(frozen=True)
class Settings:
    """When a change counts as an event."""

    explode_factor: float = DEFAULT_EXPLODE_FACTOR  # a norm this many times the first snapshot's
    jump_factor: float = DEFAULT_JUMP_FACTOR  # an update ratio this many times the layer's median


@dataclass
class Series:
    """Figures of one layer or tensor, one value per snapshot (``None`` where undefined)."""

    norm: list[float | None]
    update_ratio: list[float | None]
    drift: list[float | None]  # relative L2 from the first snapshot
    max_update: list[float | None]
    max_drift: list[float | None]
    nan: list[int | None]
    inf: list[int | None]

    @classmethod
    def of(cls, columns: Sequence[Sequence[Point]]) -> Series:
        """Aggregate per snapshot: ``columns[t]`` holds the points present in snapshot ``t``."""
        out = cls([], [], [], [], [], [], [])
        for points in columns:
            if not points:
                for values in out.__dict__.values():
                    values.append(None)
                continue
            out.norm.append(math.sqrt(sum(p.sum_sq for p in points)))
            out.update_ratio.append(_ratio([(p.sum_sq_update, p.sum_sq_prev) for p in points]))
            out.drift.append(_ratio([(p.sum_sq_drift, p.sum_sq_first) for p in points]))
            out.max_update.append(_max([p.max_update for p in points]))
            out.max_drift.append(_max([p.max_drift for p in points]))
            out.nan.append(sum(p.nan for p in points))
            out.inf.append(sum(p.inf for p in points))
        return out

    def to_dict(self) -> dict[str, list[Any]]:
        return {k: [_json_value(v) for v in getattr(self, k)] for k in SERIES}


def _ratio(pairs: Sequence[tuple[float | None, float | None]]) -> float | None:
    defined = [(d, b) for d, b in pairs if d is not None and b is not None]
    if not defined:
        return None
    diff, base = math.sqrt(sum(d for d, _ in defined)), math.sqrt(sum(b for _, b in defined))
    if base > 0:
        return diff / base
    return 0.0 if diff == 0 else math.inf


def _max(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return max(defined) if defined else None


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


@dataclass
class Layer:
    """Tensors grouped by module path, as ``diff`` groups them."""

    name: str
    optimizer: bool
    tensors: list[str]
    parameters: int
    series: Series


@dataclass
class Event:
    """Something that happened in the run. ``snapshot`` is an index into the snapshots (``None``: the whole run)."""

    kind: str
    snapshot: int | None
    layer: str | None
    tensor: str | None
    detail: str

    def to_dict(self, snapshots: Sequence[Snapshot]) -> dict[str, Any]:
        step = snapshots[self.snapshot].step if self.snapshot is not None else None
        return {
            "kind": self.kind, "snapshot": self.snapshot, "step": step,
            "tensor": self.tensor, "layer": self.layer, "detail": self.detail,
        }  # fmt: skip


@dataclass
class Violation:
    """A ``--fail-on`` condition met."""

    condition: str
    layer: str | None
    tensor: str | None
    snapshot: int | None
    value: float | None = None


@dataclass
class FailOn:
    """Parsed ``--fail-on``: event kinds and ``METRIC OP NUMBER`` conditions on layers."""

    kinds: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    text: tuple[str, ...] = ()

    @classmethod
    def parse(cls, expressions: Sequence[str]) -> FailOn:
        kinds: list[str] = []
        conditions: list[Condition] = []
        parts = [p.strip() for e in expressions for p in e.split(",") if p.strip()]
        for part in parts:
            if part in EVENT_KINDS:
                kinds.append(part)
            elif any(op in part for op in "<>=!"):
                conditions.append(Condition.parse(part, "--fail-on", METRICS))
            else:
                raise UsageError(
                    f"invalid --fail-on expression {part!r}: an event ({', '.join(EVENT_KINDS)}) "
                    f"or METRIC OP NUMBER (metrics: {', '.join(METRICS)})"
                )
        return cls(tuple(kinds), tuple(conditions), tuple(parts))


@dataclass
class TimelineReport:
    """What :func:`ckptkit.timeline` found; :meth:`to_dict` is ``ckptkit timeline --json``."""

    snapshots: list[Snapshot]
    formats: list[str]
    order: str
    layers: list[Layer]
    tensors: list[TensorSeries]
    tensor_series: dict[str, Series]
    events: list[Event]
    settings: Settings
    fail_on: FailOn = field(default_factory=FailOn)
    violations: list[Violation] = field(default_factory=list)
    matrix: dict[str, list[list[float | None]]] | None = None
    skipped: list[str] = field(default_factory=list)  # tensors not followed (integers, bools), by name
    notes: list[str] = field(default_factory=list)  # how the snapshots were found and ordered, where it matters

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data, schema ``ckptkit.timeline/1``."""
        return {
            "schema": SCHEMA_ID,
            "order": self.order,
            "snapshots": [
                {"index": i, "path": str(s.path), "step": s.step, "step_source": s.step_source, "format": f}
                for i, (s, f) in enumerate(zip(self.snapshots, self.formats, strict=True))
            ],
            "layers": [
                {
                    "name": x.name,
                    "optimizer": x.optimizer,
                    "tensors": len(x.tensors),
                    "parameters": x.parameters,
                    **x.series.to_dict(),
                }
                for x in self.layers
            ],
            "tensors": [
                {
                    "name": t.name,
                    "layer": self._layer_of[t.name],
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "optimizer": t.optimizer,
                    **self.tensor_series[t.name].to_dict(),
                }
                for t in self.tensors
            ],
            "events": [e.to_dict(self.snapshots) for e in self.events],
            "matrix": None
            if self.matrix is None
            else {k: [[_json_value(v) for v in row] for row in rows] for k, rows in self.matrix.items()},
            "skipped": self.skipped,
            "notes": self.notes,
            "settings": {"explode_factor": self.settings.explode_factor, "jump_factor": self.settings.jump_factor},
            "fail_on": list(self.fail_on.text),
            "violations": [
                {
                    "condition": v.condition,
                    "layer": v.layer,
                    "tensor": v.tensor,
                    "snapshot": v.snapshot,
                    "value": _json_value(v.value),
                }
                for v in self.violations
            ],
            "passed": self.passed,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return dumps_text(self.to_dict(), indent=indent)

    def to_markdown(self, top: int = 20) -> str:
        from ckptkit.timelines.render import render_markdown

        return render_markdown(self, top)

    def to_html(self) -> str:
        from ckptkit.timelines.render import render_html

        return render_html(self)

    @property
    def _layer_of(self) -> dict[str, str]:
        return {t: layer.name for layer in self.layers for t in layer.tensors}


def build_report(
    snapshots: list[Snapshot],
    formats: list[str],
    order: str,
    series: list[TensorSeries],
    depth: int | None,
    settings: Settings,
    fail_on: FailOn,
    matrix: list[list[PairSums]] | None = None,
    skipped: list[str] | None = None,
    notes: list[str] | None = None,
) -> TimelineReport:
    """Group tensors into layers, find the events and check the ``--fail-on`` conditions."""
    n = len(snapshots)
    weights = [t.name for t in series if not t.optimizer]
    cut = depth if depth is not None else layer_depth(weights)
    groups: dict[tuple[str, bool], list[TensorSeries]] = defaultdict(list)
    for t in series:
        groups[(layer_of(t.name, cut), t.optimizer)].append(t)
    layers = []
    for (name, optimizer), members in groups.items():
        columns = [[p for t in members if (p := t.points[i]) is not None] for i in range(n)]
        parameters = sum(max((p.elements for p in t.points if p is not None), default=0) for t in members)
        layers.append(Layer(name, optimizer, [t.name for t in members], parameters, Series.of(columns)))
    layers.sort(key=lambda x: x.optimizer)  # weights first, then optimizer state; stable within
    per_tensor = {t.name: Series.of([[p] if p is not None else [] for p in t.points]) for t in series}
    report = TimelineReport(
        snapshots, formats, order, layers, series, per_tensor, [], settings, fail_on,
        matrix=_matrix(matrix) if matrix is not None else None, skipped=skipped or [], notes=notes or [],
    )  # fmt: skip
    report.events = find_events(report)
    report.violations = check(report)
    return report


def _matrix(sums: list[list[PairSums]]) -> dict[str, list[list[float | None]]]:
    n = len(sums)
    rel: list[list[float | None]] = [[0.0 if i == j else None for j in range(n)] for i in range(n)]
    cos: list[list[float | None]] = [[1.0 if i == j else None for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            s = sums[i][j]
            norm_a, norm_b, d = math.sqrt(s.sum_sq_a), math.sqrt(s.sum_sq_b), math.sqrt(s.sum_sq_diff)
            rel[i][j] = d / norm_a if norm_a > 0 else (0.0 if d == 0 else math.inf)
            if norm_a > 0 and norm_b > 0:
                cos[i][j] = min(1.0, max(-1.0, 1.0 - (s.sum_sq_diff - (norm_a - norm_b) ** 2) / (2 * norm_a * norm_b)))
            else:
                cos[i][j] = 1.0 if norm_a == norm_b else 0.0
    return {"rel_l2": rel, "cosine": cos}


def find_events(report: TimelineReport) -> list[Event]:
    """NaN/Inf onsets per tensor; frozen, exploding and jumping weight layers; Adam second moments of zero or Inf."""
    events: list[Event] = []
    layer_of_tensor = report._layer_of
    for t in report.tensors:
        seen_bad = False
        for i, p in enumerate(t.points):
            bad = p is not None and p.nan + p.inf > 0
            if bad and not seen_bad:
                events.append(Event(NONFINITE, i, layer_of_tensor[t.name], t.name, f"{p.nan} NaN, {p.inf} Inf"))  # type: ignore[union-attr]
            seen_bad = seen_bad or bad
        if t.optimizer and is_second_moment(t.name):
            events.extend(_optimizer_events(t, layer_of_tensor[t.name]))
    settings = report.settings
    for layer in report.layers:
        if layer.optimizer:
            continue
        ratios = [(i, r) for i, r in enumerate(layer.series.update_ratio) if r is not None]
        if len(ratios) >= 1 and all(r == 0 for _, r in ratios):
            events.append(Event(FROZEN, None, layer.name, None, f"unchanged across {len(ratios) + 1} snapshots"))
        norms = [(i, v) for i, v in enumerate(layer.series.norm) if v is not None]
        if norms and norms[0][1] > 0:
            first_norm = norms[0][1]
            grown = next(((i, v) for i, v in norms if v > settings.explode_factor * first_norm), None)
            if grown is not None:
                events.append(
                    Event(EXPLODING, grown[0], layer.name, None,
                          f"norm {grown[1]:.4g} is {grown[1] / first_norm:.3g}x the first snapshot's {first_norm:.4g}")
                )  # fmt: skip
        finite = [r for _, r in ratios if math.isfinite(r)]
        if len(finite) >= 3:
            median = statistics.median(finite)
            for i, r in ratios:
                if r > MIN_JUMP and r > settings.jump_factor * median:
                    events.append(
                        Event(JUMP, i, layer.name, None, f"update ratio {r:.4g} against a median of {median:.4g}")
                    )
    return events


def _optimizer_events(t: TensorSeries, layer: str) -> list[Event]:
    out: list[Event] = []
    zero_seen = inf_seen = False
    for i, p in enumerate(t.points):
        if p is None:
            continue
        if p.inf > 0 and not inf_seen:
            out.append(Event(OPTIMIZER, i, layer, t.name, f"second moment holds {p.inf} Inf"))
            inf_seen = True
        if i > 0 and p.elements > 0 and not p.nonzero and not zero_seen:
            out.append(
                Event(OPTIMIZER, i, layer, t.name, "second moment is all zero: no gradient reaches these weights")
            )
            zero_seen = True
    return out


def check(report: TimelineReport) -> list[Violation]:
    """The ``--fail-on`` conditions met: events of the listed kinds, and metric conditions per layer and snapshot."""
    out: list[Violation] = []
    kinds = set(report.fail_on.kinds)
    for e in report.events:
        if e.kind in kinds:
            out.append(Violation(e.kind, e.layer, e.tensor, e.snapshot))
    for cond in report.fail_on.conditions:
        for layer in report.layers:
            values = getattr(layer.series, cond.metric)
            for i, value in enumerate(values):
                if value is not None and cond.holds({cond.metric: value}):
                    out.append(Violation(cond.text, layer.name, None, i, float(value)))
    return out
