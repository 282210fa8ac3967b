"""Shared pieces of the subcommands: consoles, progress bars, safe printing, option groups."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console

from ckptkit.model import ProgressFn
from ckptkit.names import printable as printable  # re-exported for the subcommands

F = TypeVar("F", bound=Callable[..., Any])


def stdout_console() -> Console:
    # Piped output is for scripts and files: never wrap or cut a tensor name there.
    width = None if sys.stdout.isatty() else 100_000
    return Console(highlight=False, soft_wrap=True, width=width)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[ProgressFn | None]:
    """A byte progress bar on stderr when it is a terminal; ``None`` (no bar) otherwise."""
    if not sys.stderr.isatty() or total < 64 * 1024 * 1024:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def format_option(dest: str, *names: str, help: str) -> Callable[[F], F]:
    """``--from``/``--to``: a format name, checked against the registry."""
    from ckptkit import registry

    choices = click.Choice([f.name for f in registry.formats()], case_sensitive=False)
    return click.option(*names, dest, type=choices, default=None, help=help)
