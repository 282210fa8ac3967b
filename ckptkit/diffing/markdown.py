"""The diff report as GitHub-flavoured Markdown, sized to fit a pull-request comment."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ckptkit.core.names import printable
from ckptkit.diffing import formatting as fmt
from ckptkit.diffing.status import ONLY_A, ONLY_B, SHAPE_CHANGED, UNSUPPORTED

if TYPE_CHECKING:
    from ckptkit.diffing.report import DiffReport, TensorDiff

MAX_CHARS = 60_000  # GitHub refuses comments over 65,536 characters


def render_markdown(report: DiffReport, top: int = 20) -> str:
    """Summary, sizes, the most drifted layers and tensors, and the structural changes.

    Tables and lists are cut until the text fits :data:`MAX_CHARS`.
    """
    limit = top if top > 0 else max(len(report.tensors), 1)
    while True:
        text = _render(report, limit)
        if len(text) <= MAX_CHARS or limit <= 1:
            return text
        limit //= 2


def code(name: str) -> str:
    """A tensor name as inline code that is safe inside a table cell."""
    text = printable(name).replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _render(report: DiffReport, limit: int) -> str:
    a, b = report.a, report.b
    summary = report.summary()
    change = report.size_change()
    out = [f"### ckptkit diff: {code(a.path)} → {code(b.path)}", ""]
    if report.fail_on or report.tolerances:
        n = len(report.violations)
        out += ["**Within tolerance.**" if report.passed else f"**{n} threshold violation{'s' * (n != 1)}.**", ""]
    rows = [
        ["format", a.format, b.format, ""],
        ["tensors", fmt.count(a.tensors), fmt.count(b.tensors), fmt.count(b.tensors - a.tensors, signed=True)],
        ["parameters", fmt.count(a.parameters), fmt.count(b.parameters), fmt.count(change["parameters"], signed=True)],
        ["size", fmt.size(a.bytes), fmt.size(b.bytes), fmt.size(change["bytes"], signed=True)],
    ]
    for dtype, delta in change["bytes_by_dtype"].items():
        rows.append([
            f"size {dtype}", fmt.size(a.bytes_by_dtype.get(dtype, 0)), fmt.size(b.bytes_by_dtype.get(dtype, 0)),
            fmt.size(delta, signed=True),
        ])  # fmt: skip
    out += _table(["", "A", "B", "change"], rows)
    total = report.total.metrics()
    out += [
        f"**Drift** over {summary['compared']} compared tensors: "
        + ", ".join(f"{title} {fmt.metric(key, total)}" for key, title in fmt.DRIFT_COLUMNS)
        + f". {summary['identical']} of {summary['compared']} compared tensors identical.",
        "",
        f"Only in A: {summary['only_a']} · only in B: {summary['only_b']} · "
        f"shape changed: {summary['shape_changed']} · dtype changed: {summary['dtype_changed']}"
        + (f" · not comparable: {summary['unsupported']}" if summary["unsupported"] else ""),
        "",
    ]
    headings = [title for _, title in fmt.DRIFT_COLUMNS]
    if report.quantized:
        groups = report.by_storage()
        out += ["#### Drift by quantization type", ""]
        out += _table(
            ["stored as", "tensors", "parameters", "size A", "size B", *headings],
            (
                [code(g.storage), str(g.tensors), fmt.count(g.parameters), fmt.size(g.bytes_a), fmt.size(g.bytes_b),
                 *_cells(g.metrics)]
                for g in groups
            ),
        )  # fmt: skip
    layers = report.most_drifted_layers(limit)
    out += [f"#### Most drifted layers ({len(layers)} of {len(report.most_drifted_layers())})", ""]
    out += _table(
        ["layer", "tensors", "parameters", *headings],
        ([code(x.name), str(x.tensors), fmt.count(x.parameters_b), *_cells(x.metrics)] for x in layers),
    )
    tensors = report.most_drifted(limit)
    out += [f"#### Most drifted tensors ({len(tensors)} of {len(report.compared)})", ""]
    out += _table(
        ["tensor", "dtype", "shape", *headings],
        ([code(t.name), fmt.tensor_dtype(t), fmt.tensor_shape(t), *_cells(t.metrics)] for t in tensors),
        right_from=3,
    )
    out += _details(
        "Only in A", report.by_status(ONLY_A), limit, lambda t: f"{code(t.name)} {t.dtype_a} {fmt.tensor_shape(t)}"
    )
    out += _details(
        "Only in B", report.by_status(ONLY_B), limit, lambda t: f"{code(t.name)} {t.dtype_b} {fmt.tensor_shape(t)}"
    )
    out += _details(
        "Shape changed", report.by_status(SHAPE_CHANGED), limit,
        lambda t: f"{code(t.name)} {fmt.tensor_shape(t)}",
    )  # fmt: skip
    out += _details(
        "Dtype changed", [t for t in report.tensors if t.dtype_changed], limit,
        lambda t: f"{code(t.name)} {fmt.tensor_dtype(t)}",
    )  # fmt: skip
    out += _details(
        "Not comparable (ckptkit cannot read)", report.by_status(UNSUPPORTED), limit,
        lambda t: f"{code(t.name)} {fmt.unsupported_reason(t)}",
    )  # fmt: skip
    if report.violations:
        shown = report.violations[:limit]
        out += [f"<details><summary>Threshold violations ({len(report.violations)})</summary>", ""]
        out += _table(
            ["tensor", "condition", "value"],
            ([code(v.tensor), code(v.condition), fmt.num(v.value)] for v in shown),
            right_from=2,
        )
        if len(report.violations) > len(shown):
            out += [f"… and {len(report.violations) - len(shown)} more", ""]
        out += ["</details>", ""]
    return "\n".join(out)


def _cells(metrics: dict[str, Any] | None) -> list[str]:
    return [fmt.metric(key, metrics) for key, _ in fmt.DRIFT_COLUMNS]


def _details(title: str, items: Sequence[TensorDiff], limit: int, line: Callable[[TensorDiff], str]) -> list[str]:
    if not items:
        return []
    out = [f"<details><summary>{title} ({len(items)})</summary>", ""]
    out += [f"- {line(t)}" for t in items[:limit]]
    if len(items) > limit:
        out.append(f"- … and {len(items) - limit} more")
    return [*out, "", "</details>", ""]
