"""Several candidates (quantizations, fine-tunes) against one base, side by side.

``ckptkit diff BASE C1 C2 ...`` runs one ordinary diff per candidate (each a :class:`DiffReport`)
and :class:`CandidatesReport` puts them side by side: per candidate the overall drift, its size and
the layers that suffer most; per layer one column per candidate. Its JSON form is schema
``ckptkit.diff-candidates/1``: that summary plus every candidate's full ``ckptkit.diff/1`` report.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from ckptkit.diffing import formatting as fmt
from ckptkit.diffing.report import DiffReport, Side, _json_metrics, drift_rank
from ckptkit.io.jsonfile import dumps_text

SCHEMA_ID = "ckptkit.diff-candidates/1"
# The overall figures a candidate is judged by, in the order the tables show them: (metric, heading).
SUMMARY_COLUMNS = (("rel_l2", "rel L2"), ("snr_db", "SNR dB"), ("max_abs", "max |Δ|"), ("cosine", "cosine"))
_LEFT = ("candidate", "format", "worst layers", "verdict", "layer")
WORST_LAYERS = 3  # layers named per candidate in the summary table


@dataclass
class LayerRow:
    """One layer's drift in every candidate (``None`` where a candidate has no compared tensor there)."""

    name: str
    metrics: list[dict[str, Any] | None]

    def worst(self) -> tuple[int, float, float]:
        """The rank of its most drifted candidate (:func:`drift_rank`: smaller is worse)."""
        return min(drift_rank(m) for m in self.metrics)


@dataclass
class CandidatesReport:
    """One base diffed against several candidates; ``reports[i]`` is the diff of the base with candidate i."""

    reports: list[DiffReport]

    @property
    def base(self) -> Side:
        return self.reports[0].a

    @property
    def candidates(self) -> list[Side]:
        return [r.b for r in self.reports]

    @property
    def passed(self) -> bool:
        """True when every candidate is within the thresholds (always, when none was given)."""
        return all(r.passed for r in self.reports)

    def labels(self) -> list[str]:
        """Short column headings: the candidates' file names, with their index where two are alike."""
        names = [PurePath(s.path).name for s in self.candidates]
        return [f"{i + 1}: {n}" if names.count(n) > 1 else n for i, n in enumerate(names)]

    def layers(self, top: int | None = None) -> list[LayerRow]:
        """Every layer compared in some candidate, the one with the worst drift in any candidate first."""
        order: dict[str, list[dict[str, Any] | None]] = {}
        for i, report in enumerate(self.reports):
            for layer in report.layers:
                if layer.compared:
                    order.setdefault(layer.name, [None] * len(self.reports))[i] = layer.metrics
        rows = sorted((LayerRow(n, m) for n, m in order.items()), key=LayerRow.worst)
        return rows if not top else rows[:top]

    def worst_layers(self, index: int, top: int = WORST_LAYERS) -> list[str]:
        return [x.name for x in self.reports[index].most_drifted_layers(top)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data, schema ``ckptkit.diff-candidates/1``."""
        candidates = []
        for i, r in enumerate(self.reports):
            candidates.append({
                "path": r.b.path,
                "format": r.b.format,
                "bytes": r.b.bytes,
                "size_change": r.size_change(),
                "summary": r.summary(),
                "total": _json_metrics(r.total.metrics()),
                "worst_layers": self.worst_layers(i),
                "passed": r.passed,
                "violations": len(r.violations),
                "report": r.to_dict(),
            })  # fmt: skip
        return {
            "schema": SCHEMA_ID,
            "base": self.base.__dict__.copy(),
            "candidates": candidates,
            "layers": [{"name": x.name, "metrics": [_json_metrics(m) for m in x.metrics]} for x in self.layers()],
            "passed": self.passed,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return dumps_text(self.to_dict(), indent=indent, allow_nan=False)

    def summary_rows(self) -> list[list[str]]:
        """Per candidate: name, format, size, size change, the overall drift, worst layers, verdict."""
        rows = []
        gated = any(r.fail_on or r.tolerances for r in self.reports)
        for i, (label, r) in enumerate(zip(self.labels(), self.reports, strict=True)):
            total = r.total.metrics()
            verdict = ("pass" if r.passed else f"{len(r.violations)} violation(s)") if gated else ""
            rows.append([
                label, r.b.format, fmt.size(r.b.bytes), fmt.size(r.b.bytes - r.a.bytes, signed=True),
                *(fmt.metric(key, total) for key, _ in SUMMARY_COLUMNS),
                ", ".join(self.worst_layers(i)) or "-", verdict,
            ])  # fmt: skip
        return rows

    def to_markdown(self, top: int = 20, metric: str = "rel_l2") -> str:
        from ckptkit.diffing.markdown import code

        labels = self.labels()
        out = [f"### ckptkit diff: {code(self.base.path)} against {len(self.reports)} candidates", ""]
        if any(r.fail_on or r.tolerances for r in self.reports):
            failing = [label for label, r in zip(labels, self.reports, strict=True) if not r.passed]
            out += ["**Every candidate within tolerance.**" if not failing else
                    f"**Outside tolerance: {', '.join(code(x) for x in failing)}.**", ""]  # fmt: skip
        out += [
            f"Base: {self.base.format}, {fmt.count(self.base.parameters)} parameters, {fmt.size(self.base.bytes)}.",
            "",
        ]
        gated = any(r.fail_on or r.tolerances for r in self.reports)
        headers = ["candidate", "format", "size", "size change", *(h for _, h in SUMMARY_COLUMNS), "worst layers"]
        rows = []
        for i, row in enumerate(self.summary_rows()):
            worst = ", ".join(code(x) for x in self.worst_layers(i)) or "-"
            rows.append([code(row[0]), *row[1:-2], worst, *([row[-1]] if gated else [])])
        out += _table([*headers, *(["verdict"] if gated else [])], rows)
        layers = self.layers(top or None)
        title = dict(SUMMARY_COLUMNS).get(metric, metric)
        out += [f"#### {title} per layer, most drifted first ({len(layers)} of {len(self.layers())})", ""]
        out += _table(["layer", *labels], ([code(x.name), *(fmt.metric(metric, m) for m in x.metrics)] for x in layers))
        return "\n".join(out)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in headers) + " |",
             "| " + " | ".join("---" if h in _LEFT else "---:" for h in headers) + " |"]  # fmt: skip
    lines += ["| " + " | ".join(row) + " |" for row in rows]  # cells are numbers and code() names, table-safe
    return [*lines, ""]
