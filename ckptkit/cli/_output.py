"""Shared pieces of the subcommands: consoles, progress bars, safe printing, option groups."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ckptkit.core.model import ProgressFn
from ckptkit.core.names import printable as printable  # re-exported for the subcommands
from ckptkit.io.jsonfile import dumps_text
from ckptkit.io.source import is_url, parse_storage_options, use_storage_options
from ckptkit.io.workers import EXECUTOR_ENV, use_executor

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])


def stdout_console() -> Console:
    from rich.console import Console  # rich is loaded only by commands that print with it

    # Piped output is for scripts and files: never wrap or cut a tensor name there.
    width = None if sys.stdout.isatty() else 100_000
    return Console(highlight=False, soft_wrap=True, width=width)


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    click.echo(dumps_text(data, indent=2, default=str))


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


class _FormatChoice(click.Choice):
    """The registered format names, looked up when an option is used or help is shown.

    Loading the registry imports every format module and scans plug-in entry points; building
    the command line should not pay for that.
    """

    def __init__(self) -> None:
        super().__init__((), case_sensitive=False)

    @property  # type: ignore[override]
    def choices(self) -> list[str]:
        from ckptkit import registry

        return [f.name for f in registry.formats()]

    @choices.setter
    def choices(self, _value: object) -> None:
        pass  # click.Choice.__init__ assigns it; the registry is the source of truth


def allow_global_option(func: F) -> F:
    """``--allow-global MODULE.NAME`` (repeatable): globals trusted in pickles while the command runs."""

    @functools.wraps(func)
    def run(*args: Any, allow_globals: tuple[str, ...] = (), **kwargs: Any) -> Any:
        from ckptkit.core.trust import trusting

        with trusting(allow_globals):
            return func(*args, **kwargs)

    option = click.option(
        "--allow-global", "allow_globals", multiple=True, metavar="MODULE.NAME",
        help="Trust this class or function in pickles (repeatable): no finding when a pickle builds or calls it. "
        "Names that run code (os.system, builtins.eval, ...) stay errors.",
    )  # fmt: skip
    return option(run)  # type: ignore[return-value]


def format_option(dest: str, *names: str, help: str) -> Callable[[F], F]:
    """``--from``/``--to``: a format name, checked against the registry."""
    return click.option(*names, dest, type=_FormatChoice(), default=None, help=help)


def executor_option(func: F) -> F:
    """``--executor local|dask://HOST:PORT``: where the per-shard work of the command runs."""

    @functools.wraps(func)
    def run(*args: Any, executor: str | None = None, **kwargs: Any) -> Any:
        with use_executor(executor):
            return func(*args, **kwargs)

    option = click.option(
        "--executor",
        metavar="local|dask://HOST:PORT",
        default=None,
        help=f"Run the per-shard work here: local threads (default) or a Dask scheduler's workers "
        f"(default: ${EXECUTOR_ENV}, else local).",
    )
    return option(run)  # type: ignore[return-value]


def input_path(text: str) -> str | Path:
    """A command's input as given: a URL stays text, anything else is a local path."""
    return text if is_url(text) else Path(text)


def display_name(text: str | Path) -> str:
    """The last part of an input's name, for progress bars."""
    return str(text).rstrip("/").rsplit("/", 1)[-1]


def storage_option(func: F) -> F:
    """``--storage-option KEY=VALUE`` (repeatable): fsspec options for inputs given as URLs."""

    @functools.wraps(func)
    def run(*args: Any, storage_options: tuple[str, ...] = (), **kwargs: Any) -> Any:
        with use_storage_options(parse_storage_options(storage_options)):
            return func(*args, **kwargs)

    option = click.option(
        "--storage-option",
        "storage_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="An fsspec option for URLs (s3://, gs://, hf://, https://): endpoint_url=..., anon=true, ... "
        "Credentials come from the usual environment and configuration.",
    )
    return option(run)  # type: ignore[return-value]
