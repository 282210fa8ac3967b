"""Mapping exceptions to one-line messages and exit codes (0 ok, 1 findings, 2 errors)."""

from __future__ import annotations

import sys

import click

from ckptkit.cli._output import printable
from ckptkit.core.errors import CkptkitError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2


def one_line(text: str) -> str:
    """``text`` on one line, with control characters a hostile file put in a name escaped."""
    return printable(" ".join(str(text).split()))


def report_error(err: BaseException) -> int:
    """Print ``err`` as one line on stderr and return the exit code for it."""
    if isinstance(err, CkptkitError):
        click.echo(f"ckptkit: error: {one_line(str(err))}", err=True)
        return err.exit_code
    if isinstance(err, KeyboardInterrupt):
        click.echo("ckptkit: interrupted", err=True)
        return 130
    if isinstance(err, OSError) and err.filename:
        click.echo(f"ckptkit: error: {err.filename}: {one_line(err.strerror or str(err))}", err=True)
        return EXIT_ERROR
    detail = one_line(str(err))
    click.echo(
        f"ckptkit: error: internal error{': ' + detail if detail else ''} (a bug in ckptkit: please report it with "
        "the traceback that CKPTKIT_DEBUG=1 shows)",
        err=True,
    )
    sys.stderr.flush()
    return EXIT_ERROR
