"""ckptkit diff A B: layer-by-layer drift and size between two checkpoints, with CI thresholds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from ckptkit import registry
from ckptkit.api import diff, diff_normalizers
from ckptkit.cli._errors import EXIT_FINDINGS
from ckptkit.cli._output import (
    allow_global_option,
    display_name,
    executor_option,
    format_option,
    input_path,
    print_json,
    printable,
    progress_bar,
    stdout_console,
    storage_option,
)
from ckptkit.core.errors import UsageError
from ckptkit.diffing import DiffReport
from ckptkit.diffing import formatting as fmt
from ckptkit.diffing.candidates import SUMMARY_COLUMNS, CandidatesReport
from ckptkit.diffing.report import ONLY_A, ONLY_B, SHAPE_CHANGED, UNSUPPORTED, TensorDiff
from ckptkit.io.atomic import AtomicOutput


@click.command("diff")
@executor_option
@storage_option
@click.argument("a", type=input_path)
@click.argument("b", nargs=-1, required=True, type=input_path)
@format_option("a_format", "--from-a", help="Read A as this format (default: detect from content).")
@format_option("b_format", "--from-b", help="Read B (every candidate) as this format (default: detect from content).")
@click.option(
    "--depth",
    type=click.IntRange(min=1),
    help="Group tensors into layers by the first N parts of their module path "
    "(default: one layer per repeated block, such as layers.3).",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Show the N most drifted layers and tensors (0: all).",
)
@click.option(
    "--rename",
    multiple=True,
    metavar="PATTERN=REPL",
    help="Regular-expression rename applied to names on both sides before matching.",
)
@click.option(
    "--map",
    "map_file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help='Pair names explicitly: JSON {"name in A": "name in B"} or lines "NAME_A NAME_B".',
)
@click.option(
    "--fail-on",
    multiple=True,
    metavar="EXPR",
    help="Exit 1 if any tensor meets EXPR: rel_l2>1e-3, max_abs>0, cosine<0.999, missing, shape, dtype "
    "(comma-separated or repeated).",
)
@click.option(
    "--tolerance",
    multiple=True,
    metavar="PATTERN:EXPR",
    help="What must hold for tensors matching PATTERN, replacing --fail-on on the same metric: "
    "'encoder.*:rel_l2<1e-4'.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema ckptkit.diff/1).")
@click.option("--markdown", "as_markdown", is_flag=True, help="Print the report as Markdown for a PR comment.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Also write a self-contained HTML report with a per-layer drift chart.",
)
@click.option(
    "--layout-hint", "layout_hints", multiple=True, metavar="NAME=KIND",
    help="When a Keras checkpoint is compared with a PyTorch one: what a layer is where names and shapes "
    "cannot tell, as for convert --layout (fc=flatten:16x5x5, conv1=depthwise).",
)  # fmt: skip
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Threads to compare on (default: CKPTKIT_WORKERS, else one per CPU; at most the CPUs and 8).",
)
@allow_global_option
def command(
    a: str | Path,
    b: tuple[str | Path, ...],
    a_format: str | None,
    b_format: str | None,
    depth: int | None,
    top: int,
    rename: tuple[str, ...],
    map_file: Path | None,
    fail_on: tuple[str, ...],
    tolerance: tuple[str, ...],
    as_json: bool,
    as_markdown: bool,
    html_file: Path | None,
    layout_hints: tuple[str, ...],
    threads: int | None,
) -> None:  # fmt: skip
    """Compare checkpoint A with B, in the same or different formats; or A with several candidates.

    Tensors are matched by name (also across wrapper prefixes such as module. and _orig_mod.),
    then compared element by element: max |Δ|, mean |Δ|, L2 and relative L2 of the difference,
    cosine similarity, share of bit-identical elements, NaN and Inf counts. Results are grouped
    into layers by module path, with sizes per dtype and the size change.

    With several candidates (diff BASE Q1 Q2 ...: quantizations of one model, say), each is
    compared with A as above and the report puts them side by side: per candidate the overall
    drift, size and worst layers, then per layer one column per candidate. --fail-on and
    --tolerance apply to every candidate.

    \b
    Exit codes: 0 within tolerance (or no --fail-on/--tolerance given), 1 a threshold was
    crossed (by any candidate), 2 bad input.
    """
    if as_json and as_markdown:
        raise UsageError("--json and --markdown both print the report; choose one")
    if len(b) > 1:
        if html_file is not None:
            raise UsageError("--html draws one comparison; with several candidates use --markdown or --json")
        _several(a, b, a_format, b_format, top=top, as_json=as_json, as_markdown=as_markdown,
                 depth=depth, rename=rename, map=map_file, fail_on=fail_on, tolerance=tolerance,
                 normalizers=diff_normalizers(layout_hints), threads=threads)  # fmt: skip
        return
    (b_path,) = b
    # Made first so that a bad --html path fails before the comparison; a report is rewritten each run.
    html_out = AtomicOutput(html_file, force=True) if html_file is not None else None
    normalizers = diff_normalizers(layout_hints)
    with (
        registry.open_checkpoint(a, a_format) as ckpt_a,
        registry.open_checkpoint(b_path, b_format) as ckpt_b,
        progress_bar(ckpt_a.total_bytes + ckpt_b.total_bytes, f"diff {display_name(a)}") as progress,
    ):
        report = diff(
            ckpt_a, ckpt_b,
            depth=depth, rename=rename, map=map_file, fail_on=fail_on, tolerance=tolerance,
            normalizers=normalizers, threads=threads, progress=progress,
        )  # fmt: skip
    if html_out is not None:
        with html_out:
            html_out.temp_for().write_text(report.to_html(), encoding="utf-8")
    if as_json:
        print_json(report.to_dict())
    elif as_markdown:
        click.echo(report.to_markdown(top=top))
    else:
        _print_report(report, top)
    if not report.passed:
        raise click.exceptions.Exit(EXIT_FINDINGS)


def _several(
    a: str | Path, candidates: tuple[str | Path, ...], a_format: str | None, b_format: str | None, top: int,
    as_json: bool, as_markdown: bool, **options: Any,
) -> None:  # fmt: skip
    """The base opened once and diffed with each candidate in turn, then the side-by-side report."""
    for path in candidates:
        if isinstance(path, Path):  # a URL is checked when it is opened
            registry.check_input(path)
    reports = []
    with registry.open_checkpoint(a, a_format) as ckpt_a:
        for path in candidates:
            with (
                registry.open_checkpoint(path, b_format) as ckpt_b,
                progress_bar(ckpt_a.total_bytes + ckpt_b.total_bytes, f"diff {display_name(path)}") as progress,
            ):
                reports.append(diff(ckpt_a, ckpt_b, progress=progress, **options))
    report = CandidatesReport(reports)
    if as_json:
        print_json(report.to_dict())
    elif as_markdown:
        click.echo(report.to_markdown(top=top))
    else:
        _print_candidates(report, top)
    if not report.passed:
        raise click.exceptions.Exit(EXIT_FINDINGS)


def _print_candidates(report: CandidatesReport, top: int) -> None:
    out = stdout_console()
    base = report.base
    out.print(
        f"base: {printable(base.path)} ({base.format}): {base.tensors} tensors, {base.parameters:,} parameters, "
        f"{fmt.size(base.bytes)}",
        markup=False,
    )
    table = Table(title="candidates", title_justify="left", box=None, pad_edge=False, show_edge=False)
    for col in ("candidate", "format", "size", "size change", *(h for _, h in SUMMARY_COLUMNS), "worst layers", ""):
        table.add_column(col, justify="left" if col in ("candidate", "format", "worst layers", "") else "right")
    for row in report.summary_rows():
        style = "red" if row[-1] and row[-1] != "pass" else ("green" if row[-1] else "")
        table.add_row(*(Text(printable(c)) for c in row[:-1]), Text(row[-1], style=style))
    out.print(table)
    for label, r in zip(report.labels(), report.reports, strict=True):
        summary = r.summary()
        if summary["only_a"] or summary["only_b"] or summary["shape_changed"] or summary["unsupported"]:
            out.print(
                f"{printable(label)}: only in base {summary['only_a']}, only in candidate {summary['only_b']}, "
                f"shape changed {summary['shape_changed']}, not comparable {summary['unsupported']}",
                markup=False,
            )
    layers = report.layers(top or None)
    if layers:
        title = f"rel L2 per layer, most drifted first ({len(layers)} of {len(report.layers())})"
        table = Table(title=title, title_justify="left", box=None, pad_edge=False, show_edge=False)
        table.add_column("layer")
        for label in report.labels():
            table.add_column(printable(label), justify="right")
        for x in layers:
            table.add_row(Text(printable(x.name)), *(fmt.metric("rel_l2", m) for m in x.metrics))
        out.print(table)
    limit = top or None
    for label, r in zip(report.labels(), report.reports, strict=True):
        if r.violations:
            out.print(Text(f"{printable(label)}: {len(r.violations)} threshold violation(s):", style="bold red"))
            shown = r.violations if limit is None else r.violations[:limit]
            for v in shown:
                value = "" if v.value is None else f" ({fmt.num(v.value)})"
                out.print(f"  {printable(v.tensor)}: {printable(v.condition)}{value}", markup=False)
            if len(r.violations) > len(shown):
                out.print(f"  ... and {len(r.violations) - len(shown)} more", markup=False)


def _print_report(report: DiffReport, top: int) -> None:
    out = stdout_console()
    summary = report.summary()
    change = report.size_change()
    for label, side in (("A", report.a), ("B", report.b)):
        normalized = f", seen through {side.normalized_by}" if side.normalized_by else ""
        out.print(
            f"{label}: {printable(side.path)} ({side.format}{normalized}): {side.tensors} tensors, "
            f"{side.parameters:,} parameters, {fmt.size(side.bytes)}",
            markup=False,
        )
    by_dtype = ", ".join(f"{d} {fmt.size(v, signed=True)}" for d, v in change["bytes_by_dtype"].items() if v)
    out.print(
        f"size change: {fmt.size(change['bytes'], signed=True)}, {fmt.count(change['parameters'], signed=True)} "
        f"parameters" + (f" ({by_dtype})" if by_dtype else ""),
        markup=False,
    )
    matched = ", ".join(f"{n} {how}" for how, n in summary["matched_by"].items())
    out.print(
        f"matched {sum(summary['matched_by'].values())} ({matched}); only in A: {summary['only_a']}, "
        f"only in B: {summary['only_b']}, shape changed: {summary['shape_changed']}, "
        f"dtype changed: {summary['dtype_changed']}"
        + (f", not comparable (ckptkit cannot read): {summary['unsupported']}" if summary["unsupported"] else ""),
        markup=False,
    )
    total = report.total.metrics()
    drift = ", ".join(f"{title} {fmt.metric(key, total)}" for key, title in fmt.DRIFT_COLUMNS)
    out.print(f"drift: {drift}; {summary['identical']} of {summary['compared']} tensors identical", markup=False)

    limit = top or None
    layers = report.most_drifted_layers(limit)
    if layers:
        title = f"layers, most drifted first ({len(layers)} of {len(report.most_drifted_layers())})"
        table = _drift_table(title, "layer", "tensors")
        for x in layers:
            table.add_row(Text(printable(x.name)), str(x.tensors), *_drift_cells(x.metrics))
        out.print(table)
    tensors = report.most_drifted(limit)
    if tensors:
        title = f"tensors, most drifted first ({len(tensors)} of {len(report.compared)})"
        table = _drift_table(title, "tensor", "dtype", "shape")
        for t in tensors:
            table.add_row(Text(printable(t.name)), fmt.tensor_dtype(t), fmt.tensor_shape(t), *_drift_cells(t.metrics))
        out.print(table)
    _print_list("only in A", report.by_status(ONLY_A), limit, lambda t: f"{t.dtype_a} {fmt.tensor_shape(t)}")
    _print_list("only in B", report.by_status(ONLY_B), limit, lambda t: f"{t.dtype_b} {fmt.tensor_shape(t)}")
    _print_list("shape changed", report.by_status(SHAPE_CHANGED), limit, fmt.tensor_shape)
    _print_list("dtype changed", [t for t in report.tensors if t.dtype_changed], limit, fmt.tensor_dtype)
    _print_list("not comparable (ckptkit cannot read)", report.by_status(UNSUPPORTED), limit, fmt.unsupported_reason)
    if report.fail_on or report.tolerances:
        if report.passed:
            out.print(Text("within tolerance", style="bold green"))
        else:
            out.print(Text(f"{len(report.violations)} threshold violation(s):", style="bold red"))
            shown = report.violations if limit is None else report.violations[:limit]
            for v in shown:
                value = "" if v.value is None else f" ({fmt.num(v.value)})"
                out.print(f"  {printable(v.tensor)}: {printable(v.condition)}{value}", markup=False)
            if len(report.violations) > len(shown):
                out.print(f"  ... and {len(report.violations) - len(shown)} more", markup=False)


def _drift_table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", box=None, pad_edge=False, show_edge=False)
    for col in columns:
        table.add_column(col, justify="left" if col in ("layer", "tensor", "dtype", "shape") else "right")
    for _, heading in fmt.DRIFT_COLUMNS:
        table.add_column(heading, justify="right")
    return table


def _drift_cells(metrics: dict[str, object] | None) -> list[Text]:
    cells = []
    for key, _ in fmt.DRIFT_COLUMNS:
        text = fmt.metric(key, metrics)
        style = ""
        if metrics is not None and key == "identical":
            style = "green" if metrics["identical"] == 1.0 else "yellow"
        cells.append(Text(text, style=style))
    return cells


def _print_list(title: str, items: list[TensorDiff], limit: int | None, detail: Callable[[TensorDiff], str]) -> None:
    if not items:
        return
    out = stdout_console()
    out.print(f"{title} ({len(items)}):", markup=False)
    shown = items if limit is None else items[:limit]
    for t in shown:
        out.print(f"  {printable(t.name)}  {detail(t)}", markup=False)
    if len(items) > len(shown):
        out.print(f"  ... and {len(items) - len(shown)} more", markup=False)
