"""The diff report as one self-contained HTML page: a per-layer drift chart and the tables.

Everything is inline (style, SVG chart, a few lines of script to sort tables); the page loads
nothing from the network, so it can be attached to a CI run and opened anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from ckptkit.diffing import formatting as fmt
from ckptkit.diffing.status import COMPARED, ONLY_A, ONLY_B, SHAPE_CHANGED, UNSUPPORTED

if TYPE_CHECKING:
    from ckptkit.diffing.report import DiffReport, LayerDiff, TensorDiff

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1b1f24;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
code,td.n{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
.paths{color:#57606a;margin-bottom:12px}
.verdict{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600}
.pass{background:#dafbe1;color:#116329}.fail{background:#ffebe9;color:#a40e26}
table{border-collapse:collapse;margin:4px 0 8px}th,td{padding:3px 10px;border-bottom:1px solid #d8dee4;text-align:left}
th{background:#f6f8fa;cursor:pointer;user-select:none;position:sticky;top:0;white-space:nowrap}
td.n{text-align:right;white-space:nowrap}
tr.bad td{background:#fff5f5}.scroll{max-height:640px;overflow:auto;border:1px solid #d8dee4}
svg text{font:11px ui-monospace,Menlo,Consolas,monospace;fill:#1b1f24}.note{color:#57606a}
"""

# Sorts a table by the clicked column: numeric cells carry their value in data-v.
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var down = th.dataset.dir !== "down";
    th.dataset.dir = down ? "down" : "up";
    rows.sort(function (r1, r2) {
      var a = r1.cells[col], b = r2.cells[col];
      var x = a.dataset.v !== undefined ? parseFloat(a.dataset.v) : a.textContent;
      var y = b.dataset.v !== undefined ? parseFloat(b.dataset.v) : b.textContent;
      var c = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
      return down ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def render_html(report: DiffReport) -> str:
    """The whole page."""
    a, b = report.a, report.b
    bad = {v.tensor for v in report.violations}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>ckptkit diff: {escape(_basename(a.path))} → {escape(_basename(b.path))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>ckptkit diff</h1>",
        f'<div class="paths">A: <code>{escape(a.path)}</code> ({escape(a.format)})<br>'
        f"B: <code>{escape(b.path)}</code> ({escape(b.format)})</div>",
        _verdict(report),
        "<h2>Size</h2>",
        _size_table(report),
        *(["<h2>Drift by quantization type</h2>", _storage_table(report)] if report.quantized else []),
        "<h2>Drift per layer (relative L2, log scale)</h2>",
        _chart(report.layers, {t.layer for t in report.tensors if t.name in bad}),
        "<h2>Layers</h2>",
        _layer_table(report.layers),
        "<h2>Tensors</h2>",
        _tensor_table(report.tensors, bad),
    ]
    if report.violations:
        rows = "".join(
            f"<tr><td><code>{escape(v.tensor)}</code></td><td><code>{escape(v.condition)}</code></td>"
            f"<td>{escape(v.source)}</td>{_num_cell(v.value)}</tr>"
            for v in report.violations
        )
        parts += [
            "<h2>Threshold violations</h2>",
            '<div class="scroll"><table class="sortable"><thead><tr><th>tensor</th><th>condition</th><th>from</th>'
            f"<th>value</th></tr></thead><tbody>{rows}</tbody></table></div>",
        ]
    parts += [f"<script>{_SCRIPT}</script>", "</body></html>", ""]
    return "\n".join(parts)


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _verdict(report: DiffReport) -> str:
    summary = report.summary()
    total = report.total.metrics()
    drift = ", ".join(f"{title} {escape(fmt.metric(key, total))}" for key, title in fmt.DRIFT_COLUMNS)
    text = (
        f"<p>{summary['compared']} tensors compared ({summary['identical']} identical); "
        f"only in A: {summary['only_a']}, only in B: {summary['only_b']}, shape changed: {summary['shape_changed']}, "
        f"dtype changed: {summary['dtype_changed']}, not comparable: {summary['unsupported']}.<br>"
        f"Overall drift: {drift}.</p>"
    )
    if report.fail_on or report.tolerances:
        rules = escape(" ".join([*report.fail_on, *report.tolerances]))
        if report.passed:
            badge = '<span class="verdict pass">within tolerance</span>'
        else:
            badge = f'<span class="verdict fail">{len(report.violations)} threshold violation(s)</span>'
        text = f'<p>{badge} <span class="note">{rules}</span></p>' + text
    return text


def _size_table(report: DiffReport) -> str:
    a, b = report.a, report.b
    change = report.size_change()
    rows = [
        ("tensors", fmt.count(a.tensors), fmt.count(b.tensors), fmt.count(b.tensors - a.tensors, signed=True)),
        ("parameters", fmt.count(a.parameters), fmt.count(b.parameters), fmt.count(change["parameters"], signed=True)),
        ("bytes", fmt.size(a.bytes), fmt.size(b.bytes), fmt.size(change["bytes"], signed=True)),
    ]
    rows += [
        (f"bytes {dtype}", fmt.size(a.bytes_by_dtype.get(dtype, 0)), fmt.size(b.bytes_by_dtype.get(dtype, 0)),
         fmt.size(delta, signed=True))
        for dtype, delta in change["bytes_by_dtype"].items()
    ]  # fmt: skip
    body = "".join(
        f"<tr><td>{escape(r[0])}</td>" + "".join(f'<td class="n">{escape(c)}</td>' for c in r[1:]) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr><th></th><th>A</th><th>B</th><th>change</th></tr></thead><tbody>{body}</tbody></table>"


def _chart(layers: Sequence[LayerDiff], bad_layers: set[str]) -> str:
    """Horizontal bars, one per layer in checkpoint order, length by log10 of the relative L2."""
    values = [layer.metrics["rel_l2"] if layer.metrics else None for layer in layers]
    positive = [v for v in values if v is not None and 0 < v < math.inf]
    if not layers:
        return '<p class="note">No layers to chart.</p>'
    lo = math.floor(math.log10(min(positive))) if positive else -8
    hi = math.ceil(math.log10(max(positive))) if positive else 0
    hi = max(hi, lo + 1)
    label_w = min(420, 12 + 7 * max(len(layer.name) for layer in layers))
    bar_w, row_h, top = 520, 16, 22
    extra = 360 if any(fmt.nonfinite_count(layer.metrics) for layer in layers) else 90
    height = top + row_h * len(layers) + 6
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + extra}" height="{height}" role="img" '
        'aria-label="relative L2 drift per layer">'
    ]
    for decade in range(lo, hi + 1):
        x = label_w + bar_w * (decade - lo) / (hi - lo)
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height}" stroke="#d8dee4"/>')
        out.append(f'<text x="{x:.1f}" y="12" text-anchor="middle">1e{decade}</text>')
    for i, (layer, value) in enumerate(zip(layers, values, strict=True)):
        y = top + i * row_h
        name = layer.name if len(layer.name) * 7 < label_w else "…" + layer.name[-(label_w // 7 - 2) :]
        out.append(f'<text x="{label_w - 6}" y="{y + 11}" text-anchor="end">{escape(name)}</text>')
        if value is None:
            label = "not compared"
            width = 0.0
        elif value == 0:
            label, width = "0", 0.0
        else:
            label = fmt.num(value)
            frac = 1.0 if math.isinf(value) else (math.log10(value) - lo) / (hi - lo)
            width = max(2.0, bar_w * min(max(frac, 0.0), 1.0))
        if width:
            colour = "#cf222e" if layer.name in bad_layers else "#0969da"
            out.append(
                f'<rect x="{label_w}" y="{y + 2}" width="{width:.1f}" height="{row_h - 4}" fill="{colour}">'
                f"<title>{escape(f'{layer.name}: rel L2 {label}')}</title></rect>"
            )
        out.append(f'<text x="{label_w + width + 4:.1f}" y="{y + 11}">{escape(label)}</text>')
        if fmt.nonfinite_count(layer.metrics):
            # Drift sums leave NaN and Inf out; without this mark such a layer would read as unchanged.
            warn = f"NaN/Inf: {fmt.nonfinite(layer.metrics)}"
            x = label_w + width + 8 + 7 * len(label)
            out.append(f'<text x="{x:.1f}" y="{y + 11}" fill="#cf222e" font-weight="bold">{escape(warn)}</text>')
    out.append("</svg>")
    return "".join(out)


def _num_cell(value: Any, text: str | None = None) -> str:
    shown = fmt.num(value) if text is None else text
    if value is None:
        return f'<td class="n">{escape(shown)}</td>'
    v = float(value)
    sort_value = "1e308" if v == math.inf else ("-1e308" if v == -math.inf else repr(v))
    return f'<td class="n" data-v="{sort_value}">{escape(shown)}</td>'


def _metric_cells(metrics: dict[str, Any] | None) -> str:
    if metrics is None:
        return "".join('<td class="n">-</td>' for _ in fmt.DRIFT_COLUMNS)
    return "".join(
        _num_cell(fmt.nonfinite_count(metrics) if key == "nonfinite" else metrics.get(key), fmt.metric(key, metrics))
        for key, _ in fmt.DRIFT_COLUMNS
    )


def _headers(*names: str) -> str:
    cells = [*names, *(title for _, title in fmt.DRIFT_COLUMNS)]
    return "<thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in cells) + "</tr></thead>"


def _layer_table(layers: Sequence[LayerDiff]) -> str:
    rows = "".join(
        f"<tr><td><code>{escape(x.name)}</code></td>{_num_cell(x.tensors)}"
        f"{_num_cell(x.parameters_a, fmt.count(x.parameters_a))}"
        f"{_num_cell(x.parameters_b, fmt.count(x.parameters_b))}{_num_cell(x.bytes_b, fmt.size(x.bytes_b))}"
        f"{_metric_cells(x.metrics)}</tr>"
        for x in layers
    )
    head = _headers("layer", "tensors", "parameters A", "parameters B", "size B")
    return f'<div class="scroll"><table class="sortable">{head}<tbody>{rows}</tbody></table></div>'


def _storage_table(report: DiffReport) -> str:
    rows = "".join(
        f"<tr><td><code>{escape(g.storage)}</code></td>{_num_cell(g.tensors)}"
        f"{_num_cell(g.parameters, fmt.count(g.parameters))}{_num_cell(g.bytes_a, fmt.size(g.bytes_a))}"
        f"{_num_cell(g.bytes_b, fmt.size(g.bytes_b))}{_metric_cells(g.metrics)}</tr>"
        for g in report.by_storage()
    )
    head = _headers("stored as", "tensors", "parameters", "size A", "size B")
    return f'<div class="scroll"><table class="sortable">{head}<tbody>{rows}</tbody></table></div>'


_STATUS_TEXT = {
    COMPARED: "", SHAPE_CHANGED: "shape changed", ONLY_A: "only in A", ONLY_B: "only in B",
    UNSUPPORTED: "not comparable: ckptkit cannot read it",
}  # fmt: skip


def _tensor_table(tensors: Sequence[TensorDiff], bad: set[str]) -> str:
    rows = []
    for t in tensors:
        status = _STATUS_TEXT[t.status]
        if t.dtype_changed:
            status = ", ".join(s for s in (status, "dtype changed") if s)
        dtype, shape = fmt.tensor_dtype(t), fmt.tensor_shape(t)
        params = t.parameters_b or t.parameters_a
        css = ' class="bad"' if t.name in bad else ""
        rows.append(
            f"<tr{css}><td><code>{escape(t.name)}</code></td><td>{escape(status)}</td><td>{escape(dtype)}</td>"
            f"<td>{escape(shape)}</td>{_num_cell(params, fmt.count(params))}{_metric_cells(t.metrics)}</tr>"
        )
    head = _headers("tensor", "status", "dtype", "shape", "parameters")
    return f'<div class="scroll"><table class="sortable">{head}<tbody>{"".join(rows)}</tbody></table></div>'
