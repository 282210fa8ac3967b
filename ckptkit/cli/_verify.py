"""ckptkit verify PATH...: integrity, safety and consistency checks with CI exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ckptkit.cli._output import (
    allow_global_option,
    executor_option,
    human_bytes,
    input_path,
    print_json,
    printable,
    progress_bar,
    stdout_console,
    storage_option,
)

if TYPE_CHECKING:
    from ckptkit.verify import Report

_NONFINITE_SHOWN = 10


@click.command("verify")
@executor_option
@storage_option
@click.argument("paths", nargs=-1, required=True, type=input_path)
@click.option(
    "--manifest", type=click.Path(path_type=Path), help="Check every tensor hash against this ckptkit hash manifest."
)
@click.option(
    "--schema",
    type=click.Path(path_type=Path),
    help="Check names, dtypes and shapes against ckptkit inspect --json output.",
)
@click.option("--no-nan", is_flag=True, help="Report tensors holding NaN or Inf as findings.")
@click.option("--strict", is_flag=True, help="Fail on warnings too (all-zero tensors, no total_size, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema ckptkit.verify/1).")
@click.option("--junit", type=click.Path(path_type=Path), help="Also write the report as JUnit XML to this file.")
@click.pass_context
@allow_global_option
def command(
    ctx: click.Context,
    paths: tuple[str | Path, ...],
    manifest: Path | None,
    schema: Path | None,
    no_nan: bool,
    strict: bool,
    as_json: bool,
    junit: Path | None,
) -> None:
    """Check checkpoints for corruption, unsafe content and inconsistency; read every tensor.

    Each PATH is a checkpoint file, a shard index (*.index.json) or a folder holding one.
    Nothing in a checkpoint is executed. Exit codes: 0 clean; 1 findings (errors, and warnings
    with --strict); 2 verify could not run (no such file, unknown format, bad manifest).
    """
    from ckptkit.verify import Verification, VerifyOptions  # loaded only for this command
    from ckptkit.verify.junit import junit_xml

    job = Verification(paths, VerifyOptions(manifest=manifest, schema=schema, no_nan=no_nan, strict=strict))
    with progress_bar(job.nbytes, "verify") as progress:
        report = job.run(progress)
    if junit is not None:
        junit.write_bytes(junit_xml(report))
    if as_json:
        print_json(report.to_dict())
    else:
        _print_report(report)
    ctx.exit(report.exit_code)


def _print_report(report: Report) -> None:
    out = stdout_console()
    for t in report.targets:
        failing = [f for f in t.findings if report.failing(f)]
        errors = sum(f.severity == "error" for f in t.findings)
        warnings = len(t.findings) - errors
        status = "FAIL" if failing else "ok  "
        what = f"{t.format or '?'}, {t.tensors} tensors, {human_bytes(t.bytes)}"
        counts = f": {errors} error(s), {warnings} warning(s)" if t.findings else ""
        out.print(f"{status} {printable(t.path)} ({what}){counts}", markup=False)
        for f in t.findings:
            where = f"[{printable(Path(f.file).name)}] " if f.file and f.file != t.path else ""
            out.print(f"  {f.severity:<8}{f.check:<28}{where}{printable(f.message)}", markup=False)
        if t.nonfinite and not any(f.check == "tensor.nonfinite" for f in t.findings):
            shown = ", ".join(
                f"{printable(n.tensor)} ({n.nan} NaN, {n.inf} Inf)" for n in t.nonfinite[:_NONFINITE_SHOWN]
            )
            more = f" and {len(t.nonfinite) - _NONFINITE_SHOWN} more" if len(t.nonfinite) > _NONFINITE_SHOWN else ""
            out.print(f"  note: NaN/Inf in {len(t.nonfinite)} tensor(s): {shown}{more}; --no-nan makes them findings",
                      markup=False)  # fmt: skip
