"""The timeline as text: sparklines, Markdown, and one self-contained HTML page (SVG, no scripts from elsewhere)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from ckptkit.diffing import formatting as fmt
from ckptkit.diffing.markdown import code

if TYPE_CHECKING:
    from ckptkit.timelines.report import Layer, TimelineReport

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None]) -> str:
    """One block character per value, scaled between the finite minimum and maximum; a space where undefined."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return " " * len(values)
    lo, hi = min(finite), max(finite)
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        elif not math.isfinite(v):
            out.append("!")
        else:
            out.append(SPARKS[0 if hi == lo else round((v - lo) / (hi - lo) * (len(SPARKS) - 1))])
    return "".join(out)


def step_label(report: TimelineReport, index: int) -> str:
    step = report.snapshots[index].step
    return f"#{index}" if step is None else str(step)


def last_defined(values: Sequence[Any]) -> Any:
    return next((v for v in reversed(values) if v is not None), None)


def max_defined(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return max(finite) if finite else None


def nonfinite_total(layer: Layer) -> str:
    nan = max((v for v in layer.series.nan if v is not None), default=0)
    inf = max((v for v in layer.series.inf if v is not None), default=0)
    return "" if not (nan or inf) else f"{nan} NaN, {inf} Inf"


def ranked_layers(report: TimelineReport, top: int | None) -> list[Layer]:
    """Weight layers with NaN/Inf first, then by their largest update ratio."""

    def key(layer: Layer) -> tuple[int, float]:
        bad = any(v for v in layer.series.nan if v) or any(v for v in layer.series.inf if v)
        biggest = max_defined(layer.series.update_ratio)
        return (0 if bad else 1, -(biggest if biggest is not None and math.isfinite(biggest) else math.inf))

    weights = sorted((x for x in report.layers if not x.optimizer), key=key)
    return weights if top is None else weights[:top]


def event_line(report: TimelineReport, e: Any) -> str:
    where = f"step {step_label(report, e.snapshot)}" if e.snapshot is not None else "whole run"
    what = e.tensor or e.layer or ""
    return f"{e.kind} at {where}: {what} ({e.detail})"


def render_markdown(report: TimelineReport, top: int = 20) -> str:
    """A summary for a pull-request comment: the verdict, the events, then the most changed layers."""
    lines = [f"### ckptkit timeline: {len(report.snapshots)} snapshots, ordered by {report.order}", ""]
    if report.fail_on.text:
        verdict = "within limits" if report.passed else f"{len(report.violations)} violation(s)"
        lines += [f"**{verdict}** (`--fail-on {','.join(report.fail_on.text)}`)", ""]
    steps = ", ".join(step_label(report, i) for i in range(len(report.snapshots)))
    lines += [f"Steps: {steps}", ""]
    lines += [f"> Note: {note}" for note in report.notes] + ([""] if report.notes else [])
    if report.events:
        lines += [f"**Events ({len(report.events)})**", ""]
        lines += [f"- {code(event_line(report, e))}" for e in report.events[:top]]
        if len(report.events) > top:
            lines.append(f"- ... and {len(report.events) - top} more")
        lines.append("")
    layers = ranked_layers(report, top)
    if layers:
        lines += [
            "| layer | norm | update ratio | last norm | max update ratio | drift from first | NaN/Inf |",
            "|---|---|---|--:|--:|--:|--:|",
        ]
        for x in layers:
            s = x.series
            lines.append(
                f"| {code(x.name)} | `{sparkline(s.norm)}` | `{sparkline(s.update_ratio)}` | "
                f"{fmt.num(last_defined(s.norm))} | {fmt.num(max_defined(s.update_ratio))} | "
                f"{fmt.num(last_defined(s.drift))} | {nonfinite_total(x) or '0'} |"
            )
        lines.append("")
    if report.matrix is not None:
        lines += _matrix_markdown(report)
    return "\n".join(lines)


def _matrix_markdown(report: TimelineReport) -> list[str]:
    assert report.matrix is not None
    n = len(report.snapshots)
    head = "| relative L2 (row to column) | " + " | ".join(step_label(report, j) for j in range(n)) + " |"
    lines = [head, "|---|" + "--:|" * n]
    for i, row in enumerate(report.matrix["rel_l2"]):
        lines.append(f"| {step_label(report, i)} | " + " | ".join(fmt.num(v) for v in row) + " |")
    return [*lines, ""]


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:14px}.card{border:1px solid #ddd;border-radius:6px;padding:6px 8px}
.card h3{font-size:12px;margin:0 0 4px;font-weight:600;word-break:break-all;max-width:300px}
.ev{color:#b00}.note{color:#666}.verdict{padding:2px 8px;border-radius:4px;color:#fff}
.pass{background:#2a7}.fail{background:#c33}svg text{font:10px system-ui,sans-serif;fill:#555}
"""


def render_html(report: TimelineReport) -> str:
    """The whole page: verdict, events, a line chart per layer, a layers x steps heatmap, the matrix."""
    n = len(report.snapshots)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>ckptkit timeline: {n} snapshots</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>ckptkit timeline: {n} snapshots</h1>",
        f'<p class="note">ordered by {escape(report.order)}</p>',
        *(f'<p class="note">Note: {escape(note)}</p>' for note in report.notes),
    ]
    if report.fail_on.text:
        if report.passed:
            badge = '<span class="verdict pass">within limits</span>'
        else:
            badge = f'<span class="verdict fail">{len(report.violations)} violation(s)</span>'
        parts.append(f'<p>{badge} <span class="note">--fail-on {escape(",".join(report.fail_on.text))}</span></p>')
    parts += ["<h2>Snapshots</h2>", _snapshot_table(report)]
    parts += ["<h2>Events</h2>", _events(report)]
    layers = ranked_layers(report, None)
    marks: dict[str, set[int]] = {}
    for e in report.events:
        if e.layer is not None and e.snapshot is not None:
            marks.setdefault(e.layer, set()).add(e.snapshot)
    parts += ["<h2>Update ratio per layer (layers x steps)</h2>", _heatmap(report, layers, marks)]
    parts += ['<h2>Norm per layer over steps (red: an event)</h2><div class="grid">']
    parts += [_line_chart(report, x, marks.get(x.name, set())) for x in layers]
    parts.append("</div>")
    if report.matrix is not None:
        parts += ["<h2>Distance between snapshots (relative L2, row to column)</h2>", _matrix_table(report)]
    parts += ["</body></html>", ""]
    return "\n".join(parts)


def _snapshot_table(report: TimelineReport) -> str:
    rows = "".join(
        f"<tr><td class='n'>{i}</td><td class='n'>{escape(str(s.step))}</td><td><code>{escape(str(s.path))}</code></td>"
        f"<td>{escape(f)}</td></tr>"
        for i, (s, f) in enumerate(zip(report.snapshots, report.formats, strict=True))
    )
    head = "<tr><th>#</th><th>step</th><th>path</th><th>format</th></tr>"
    return f"<table><thead>{head}</thead><tbody>{rows}</tbody></table>"


def _events(report: TimelineReport) -> str:
    if not report.events:
        return "<p>none: no NaN or Inf, no frozen, exploding or jumping layer.</p>"
    items = "".join(f'<li class="ev">{escape(event_line(report, e))}</li>' for e in report.events)
    return f"<ul>{items}</ul>"


def _heatmap(report: TimelineReport, layers: Sequence[Layer], marks: dict[str, set[int]]) -> str:
    n = len(report.snapshots)
    cell, label_w = 14, 220
    values = [v for x in layers for v in x.series.update_ratio if v is not None and v > 0 and math.isfinite(v)]
    lo, hi = (math.log10(min(values)), math.log10(max(values))) if values else (0.0, 0.0)
    rects = []
    for row, layer in enumerate(layers):
        y = row * cell
        rects.append(f'<text x="{label_w - 4}" y="{y + 11}" text-anchor="end">{escape(_short(layer.name))}</text>')
        for i in range(n):
            v = layer.series.update_ratio[i]
            nan = (layer.series.nan[i] or 0) + (layer.series.inf[i] or 0)
            if nan:
                color = "#c00"
            elif v is None:
                color = "#f4f4f4"
            elif v == 0:
                color = "#dde"
            elif not math.isfinite(v):
                color = "#800"
            else:
                t = 0.5 if hi == lo else (math.log10(v) - lo) / (hi - lo)
                color = f"hsl({int(220 - 200 * t)},70%,{int(85 - 40 * t)}%)"
            title = f"{layer.name} @ {step_label(report, i)}: update ratio {fmt.num(v)}" + (
                f", {nan} NaN/Inf" if nan else ""
            )
            stroke = ' stroke="#c00" stroke-width="2"' if i in marks.get(layer.name, set()) else ""
            rects.append(
                f'<rect x="{label_w + i * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{color}"{stroke}>'
                f"<title>{escape(title)}</title></rect>"
            )
    width, height = label_w + n * cell + 10, max(1, len(layers)) * cell + 4
    return f'<svg width="{width}" height="{height}" role="img" aria-label="heatmap">{"".join(rects)}</svg>'


def _line_chart(report: TimelineReport, layer: Layer, marked: set[int]) -> str:
    w, h, pad = 300, 90, 6
    values = layer.series.norm
    finite = [v for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = hi - lo or 1.0

    def xy(i: int, v: float) -> tuple[float, float]:
        x = pad + (w - 2 * pad) * (i / (n - 1) if n > 1 else 0.5)
        return x, h - pad - (h - 2 * pad) * (v - lo) / span

    points = [xy(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{4 if i in marked else 2}" fill="{"#c00" if i in marked else "#36c"}">'
        f"<title>{escape(step_label(report, i))}: norm {escape(fmt.num(values[i]))}</title></circle>"
        for i, (x, y) in zip(
            [i for i, v in enumerate(values) if v is not None and math.isfinite(v)], points, strict=True
        )
    )
    bad = nonfinite_total(layer)
    caption = f"{escape(layer.name)}" + (f' <span class="ev">{escape(bad)}</span>' if bad else "")
    return (
        f'<div class="card"><h3>{caption}</h3><svg width="{w}" height="{h}" role="img" aria-label="norm">'
        f'<polyline fill="none" stroke="#36c" stroke-width="1.5" points="{path}"/>{dots}'
        f'<text x="{pad}" y="10">{escape(fmt.num(hi))}</text><text x="{pad}" y="{h - 1}">{escape(fmt.num(lo))}</text>'
        "</svg></div>"
    )


def _matrix_table(report: TimelineReport) -> str:
    assert report.matrix is not None
    n = len(report.snapshots)
    head = "".join(f"<th>{escape(step_label(report, j))}</th>" for j in range(n))
    rows = "".join(
        f"<tr><th>{escape(step_label(report, i))}</th>"
        + "".join(f'<td class="n">{escape(fmt.num(v))}</td>' for v in row)
        + "</tr>"
        for i, row in enumerate(report.matrix["rel_l2"])
    )
    return f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _short(name: str, limit: int = 36) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]
