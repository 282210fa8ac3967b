"""CI thresholds: ``--fail-on`` conditions and per-pattern ``--tolerance`` limits.

``--fail-on`` takes comma-separated conditions, each a keyword (``missing``, ``only_a``,
``only_b``, ``shape``, ``dtype``, ``unsupported``) or ``METRIC OP NUMBER`` (``rel_l2>1e-3``, ``max_abs>0``); a
tensor for which any holds is a violation. ``--tolerance PATTERN:METRIC OP NUMBER[,...]`` states
what must hold for the tensors whose name matches PATTERN (a glob, or a module path such as
``encoder`` for everything under it); for those tensors it replaces the ``--fail-on`` conditions on
the same metrics, so it can tighten or loosen them. A metric that is undefined (no finite element
pair) fires no ``--fail-on`` condition and satisfies no tolerance. A tensor ckptkit cannot read
(quantized, sparse, ...) cannot be checked at all: it is a violation (``unsupported``) under any
``--fail-on``, and under a ``--tolerance`` whose pattern names it.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ckptkit.core.errors import UsageError
from ckptkit.core.views import name_matches
from ckptkit.diffing.report import COMPARED, ONLY_A, ONLY_B, SHAPE_CHANGED, UNSUPPORTED, TensorDiff, Violation

METRICS = (
    "max_abs", "mean_abs", "l2", "rel_l2", "snr_db", "cosine", "identical",
    "nan_a", "nan_b", "inf_a", "inf_b", "nonfinite_mismatch",
)  # fmt: skip
KEYWORDS = ("missing", "only_a", "only_b", "shape", "dtype", "unsupported")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
}  # fmt: skip
_CONDITION = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*([^\s<>=!]+)\s*$")
_HELP = f"write METRIC OP NUMBER (metrics: {', '.join(METRICS)}; OP: < <= > >= == !=)"


@dataclass(frozen=True)
class Condition:
    """``metric op value``, such as ``rel_l2 > 0.001``."""

    metric: str
    op: str
    value: float
    text: str

    @classmethod
    def parse(cls, text: str, option: str, metrics: Sequence[str] = METRICS) -> Condition:
        """Parse ``METRIC OP NUMBER``; ``metrics`` are the names the command knows."""
        hint = (
            _HELP
            if metrics is METRICS
            else f"write METRIC OP NUMBER (metrics: {', '.join(metrics)}; OP: < <= > >= == !=)"
        )
        m = _CONDITION.match(text)
        if not m:
            raise UsageError(f"invalid {option} expression {text!r}: {hint}")
        metric, op, number = m.groups()
        if metric not in metrics:
            raise UsageError(f"invalid {option} expression {text!r}: unknown metric {metric!r}; {hint}")
        try:
            value = float(number)
        except ValueError:
            raise UsageError(f"invalid {option} expression {text!r}: {number!r} is not a number") from None
        return cls(metric, op, value, f"{metric}{op}{number}")

    def holds(self, metrics: dict[str, Any]) -> bool | None:
        """Whether the condition holds; ``None`` when the metric is undefined."""
        found = metrics.get(self.metric)
        if found is None or (isinstance(found, float) and math.isnan(found)):
            return None
        return _OPS[self.op](found, self.value)


@dataclass(frozen=True)
class Thresholds:
    """Parsed ``--fail-on`` and ``--tolerance`` options."""

    conditions: tuple[Condition, ...] = ()
    keywords: tuple[str, ...] = ()
    tolerances: tuple[tuple[str, tuple[Condition, ...]], ...] = ()
    fail_on_text: tuple[str, ...] = ()
    tolerance_text: tuple[str, ...] = ()

    @classmethod
    def parse(cls, fail_on: Sequence[str] = (), tolerance: Sequence[str] = ()) -> Thresholds:
        conditions: list[Condition] = []
        keywords: list[str] = []
        for text in fail_on:
            for part in _split(text, "--fail-on"):
                if part in KEYWORDS:
                    keywords.append(part)
                elif part.isidentifier():
                    raise UsageError(
                        f"invalid --fail-on expression {text!r}: unknown keyword {part!r}; "
                        f"use one of {', '.join(KEYWORDS)}, or {_HELP}"
                    )
                else:
                    conditions.append(Condition.parse(part, "--fail-on"))
        tolerances: list[tuple[str, tuple[Condition, ...]]] = []
        for text in tolerance:
            pattern, sep, rest = text.rpartition(":")
            if not sep or not pattern.strip():
                raise UsageError(
                    f"invalid --tolerance {text!r}: write PATTERN:METRIC OP NUMBER, e.g. 'encoder.*:rel_l2<1e-4'"
                )
            conds = tuple(Condition.parse(part, "--tolerance") for part in _split(rest, "--tolerance"))
            tolerances.append((pattern.strip(), conds))
        return cls(tuple(conditions), tuple(keywords), tuple(tolerances), tuple(fail_on), tuple(tolerance))

    def __bool__(self) -> bool:
        return bool(self.conditions or self.keywords or self.tolerances)

    def check(self, tensors: Sequence[TensorDiff]) -> list[Violation]:
        """Every violation, tensor by tensor in report order."""
        found: list[Violation] = []
        for t in tensors:
            found.extend(self._structural(t))
            if t.status == COMPARED and t.metrics is not None:
                found.extend(self._metric(t, t.metrics))
        return found

    def _structural(self, t: TensorDiff) -> list[Violation]:
        if t.status == UNSUPPORTED:
            return self._not_comparable(t)
        hits = {
            "missing": t.status in (ONLY_A, ONLY_B),
            "only_a": t.status == ONLY_A,
            "only_b": t.status == ONLY_B,
            "shape": t.status == SHAPE_CHANGED,
            "dtype": t.dtype_changed,
            "unsupported": False,
        }
        return [Violation(t.name, k, "--fail-on") for k in dict.fromkeys(self.keywords) if hits[k]]

    def _not_comparable(self, t: TensorDiff) -> list[Violation]:
        # Nothing can be checked on a tensor ckptkit cannot read: every threshold covering it fails.
        if self.conditions or self.keywords:
            return [Violation(t.name, "unsupported", "--fail-on")]
        names = [n for n in (t.name, t.a_name, t.b_name) if n]
        pattern = next((p for p, _ in self.tolerances if any(name_matches(n, [p]) for n in names)), None)
        return [] if pattern is None else [Violation(t.name, f"{pattern}:unsupported", "--tolerance")]

    def _metric(self, t: TensorDiff, metrics: dict[str, Any]) -> list[Violation]:
        names = [n for n in (t.name, t.a_name, t.b_name) if n]
        local = [
            (pattern, cond)
            for pattern, conds in self.tolerances
            if any(name_matches(n, [pattern]) for n in names)
            for cond in conds
        ]
        covered = {cond.metric for _, cond in local}
        found = [
            Violation(t.name, c.text, "--fail-on", metrics[c.metric])
            for c in self.conditions
            if c.metric not in covered and c.holds(metrics)
        ]
        found += [
            Violation(t.name, f"{pattern}:{c.text}", "--tolerance", metrics[c.metric])
            for pattern, c in local
            if not c.holds(metrics)
        ]
        return found


def _split(text: str, option: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise UsageError(f"invalid {option} expression {text!r}: empty condition; {_HELP}")
    return parts
