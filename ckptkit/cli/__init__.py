"""The ``ckptkit`` command: one small module per subcommand, errors mapped in one place."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

import click

from ckptkit import __version__
from ckptkit.cli._errors import report_error


class _Group(click.Group):
    """Turns every error into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as err:
            if os.environ.get("CKPTKIT_DEBUG"):
                raise
            ctx.exit(report_error(err))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ckptkit")
def cli() -> None:
    """Convert, inspect, diff and verify machine-learning checkpoints.

    \b
    Exit codes: 0 success; 1 findings (diff over threshold, verify problems);
    2 bad input, usage error or unreadable file. CKPTKIT_DEBUG=1 shows tracebacks.
    """


def _register_commands() -> None:
    from ckptkit.cli import _convert, _diff, _formats, _hash, _inspect, _verify

    for module in (_convert, _inspect, _diff, _hash, _verify, _formats):
        cli.add_command(module.command)


_register_commands()


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Unwind like an error, so staged output is removed before the process ends.
    click.echo("ckptkit: terminated", err=True)
    raise SystemExit(128 + signum)


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(prog_name="ckptkit")
    except BrokenPipeError:
        # The reader of our output went away (ckptkit inspect big.pt | head); not an error.
        sys.stderr.close()
        os._exit(0)
