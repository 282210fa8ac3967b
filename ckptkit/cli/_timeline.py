"""ckptkit timeline PATH...: norms, updates, drift and NaN onset across a run's checkpoints."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from ckptkit.cli._errors import EXIT_FINDINGS
from ckptkit.cli._output import (
    allow_global_option,
    format_option,
    print_json,
    printable,
    progress_bar,
    stdout_console,
    storage_option,
)
from ckptkit.core.errors import UsageError
from ckptkit.core.model import ProgressFn
from ckptkit.diffing import formatting as fmt
from ckptkit.io.atomic import AtomicOutput
from ckptkit.timelines import TimelineReport, timeline
from ckptkit.timelines.render import event_line, last_defined, max_defined, nonfinite_total, ranked_layers, sparkline
from ckptkit.timelines.report import DEFAULT_EXPLODE_FACTOR, DEFAULT_JUMP_FACTOR, EVENT_KINDS, METRICS


@click.command("timeline")
@storage_option
@click.argument("paths", nargs=-1, required=True)
@format_option("format_name", "--from", help="Read every snapshot as this format (default: detect each).")
@click.option(
    "--order", type=click.Choice(["step", "given"]), default="step", show_default=True,
    help="step: by the step the checkpoints record, else the numbers in their names; given: as listed.",
)  # fmt: skip
@click.option(
    "--depth", type=click.IntRange(min=1), help="Group tensors into layers by the first N parts of their path."
)
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True, help="Show N layers (0: all).")
@click.option(
    "--matrix", is_flag=True, help="Also compute distances (relative L2, cosine) between every two snapshots."
)
@click.option(
    "--fail-on", multiple=True, metavar="EXPR",
    help=f"Exit 1 on an event ({', '.join(EVENT_KINDS)}) or a layer condition METRIC OP NUMBER "
    f"({', '.join(METRICS)}), e.g. nonfinite,update_ratio>0.1.",
)  # fmt: skip
@click.option(
    "--explode-factor", type=float, default=DEFAULT_EXPLODE_FACTOR, show_default=True,
    help="A layer explodes when its norm passes this many times its first snapshot's.",
)  # fmt: skip
@click.option(
    "--jump-factor", type=float, default=DEFAULT_JUMP_FACTOR, show_default=True,
    help="A jump is an update ratio this many times the layer's median update ratio.",
)  # fmt: skip
@allow_global_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema ckptkit.timeline/1).")
@click.option("--markdown", "as_markdown", is_flag=True, help="Print the report as Markdown.")
@click.option(
    "--html", "html_file", type=click.Path(path_type=Path), metavar="FILE",
    help="Also write a self-contained HTML page: a chart per layer, a layers x steps heatmap, the events.",
)  # fmt: skip
def command(
    paths: tuple[str, ...],
    format_name: str | None,
    order: str,
    depth: int | None,
    top: int,
    matrix: bool,
    fail_on: tuple[str, ...],
    explode_factor: float,
    jump_factor: float,
    as_json: bool,
    as_markdown: bool,
    html_file: Path | None,
) -> None:  # fmt: skip
    """Follow a training run through its checkpoints: files, folders or globs, in any formats.

    A folder stands for every checkpoint in it (a TensorFlow training folder: every checkpoint its
    'checkpoint' file keeps). Snapshots are ordered by the step they record (global_step, step, a
    trainer_state.json), else the step their names give (step_100, checkpoint-500, ckpt-7,
    epoch=3-step=1200), else save_counter or epoch; else they keep the order given. Per layer and snapshot: weight norm,
    update ratio |W_t - W_t-1| / |W_t-1|, relative L2 drift from the first snapshot, NaN and Inf
    counts; events: the first NaN/Inf, frozen layers, exploding norms, sudden jumps, Adam second
    moments of zero or Inf.

    \b
    Exit codes: 0 done (no --fail-on condition met), 1 a --fail-on condition was met, 2 bad input.
    """
    if as_json and as_markdown:
        raise UsageError("--json and --markdown both print the report; choose one")
    html_out = AtomicOutput(html_file, force=True) if html_file is not None else None
    with ExitStack() as bars:

        def start(total: int) -> ProgressFn | None:
            return bars.enter_context(progress_bar(total, "timeline"))

        report = timeline(
            paths, order=order, format=format_name, depth=depth, matrix=matrix,  # type: ignore[arg-type]
            fail_on=fail_on, explode_factor=explode_factor, jump_factor=jump_factor, on_open=start,
        )  # fmt: skip
    if html_out is not None:
        with html_out:
            html_out.temp_for().write_text(report.to_html(), encoding="utf-8")
    if as_json:
        print_json(report.to_dict())
    elif as_markdown:
        click.echo(report.to_markdown(top=top or 10**9))
    else:
        _print_report(report, top or None)
    if not report.passed:
        raise click.exceptions.Exit(EXIT_FINDINGS)


def _print_report(report: TimelineReport, top: int | None) -> None:
    out = stdout_console()
    steps = ", ".join(str(s.step) if s.step is not None else "?" for s in report.snapshots)
    out.print(f"{len(report.snapshots)} snapshots, ordered by {report.order}: steps {steps}", markup=False)
    for i, snap in enumerate(report.snapshots):
        step = "?" if snap.step is None else snap.step
        out.print(f"  #{i} step {step}: {printable(str(snap.path))} ({report.formats[i]})", markup=False)
    for note in report.notes:
        out.print(Text("note: " + printable(note), style="yellow"))
    layers = ranked_layers(report, top)
    total = len([x for x in report.layers if not x.optimizer])
    table = Table(
        title=f"layers ({len(layers)} of {total}; NaN/Inf first, then by largest update ratio)",
        title_justify="left", box=None, pad_edge=False, show_edge=False,
    )  # fmt: skip
    for col, justify in (("layer", "left"), ("norm", "left"), ("update ratio", "left"), ("last norm", "right"),
                         ("max update", "right"), ("drift", "right"), ("NaN/Inf", "right")):  # fmt: skip
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for x in layers:
        s = x.series
        bad = nonfinite_total(x)
        table.add_row(
            Text(printable(x.name)), sparkline(s.norm), sparkline(s.update_ratio), fmt.num(last_defined(s.norm)),
            fmt.num(max_defined(s.update_ratio)), fmt.num(last_defined(s.drift)),
            Text(bad or "0", style="red" if bad else ""),
        )  # fmt: skip
    out.print(table)
    if report.events:
        out.print(f"events ({len(report.events)}):", markup=False)
        for e in report.events[: top or None]:
            out.print(Text("  " + printable(event_line(report, e)), style="red" if e.kind == "nonfinite" else ""))
        if top and len(report.events) > top:
            out.print(f"  ... and {len(report.events) - top} more", markup=False)
    else:
        out.print("events: none", markup=False)
    if report.matrix is not None:
        m = Table(title="relative L2, row to column", title_justify="left", box=None)
        m.add_column("")
        for i in range(len(report.snapshots)):
            m.add_column(
                str(report.snapshots[i].step if report.snapshots[i].step is not None else f"#{i}"), justify="right"
            )
        for i, row in enumerate(report.matrix["rel_l2"]):
            m.add_row(
                str(report.snapshots[i].step if report.snapshots[i].step is not None else f"#{i}"),
                *(fmt.num(v) for v in row),
            )
        out.print(m)
    if report.fail_on.text:
        if report.passed:
            out.print(Text("within limits", style="bold green"))
        else:
            out.print(Text(f"{len(report.violations)} violation(s) of --fail-on:", style="bold red"))
            for v in report.violations[: top or None]:
                where = f" at #{v.snapshot}" if v.snapshot is not None else ""
                value = "" if v.value is None else f" ({fmt.num(v.value)})"
                out.print(f"  {printable(v.layer or v.tensor or '')}: {v.condition}{where}{value}", markup=False)
