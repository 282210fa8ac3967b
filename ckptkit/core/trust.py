"""Globals a user trusts: names a pickle may use without a finding (``--allow-global MODULE.NAME``).

The set travels in a context variable, so a command sets it once around its work and every
reader it opens sees it, whatever the format; :class:`ckptkit.io.workers.ThreadExecutor` copies
the context into its threads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ckptkit.core.errors import UsageError

_TRUSTED: ContextVar[frozenset[str]] = ContextVar("ckptkit_trusted_globals", default=frozenset())
_NAME = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+")


def trusted_globals() -> frozenset[str]:
    """The ``module.name`` globals trusted in the current context."""
    return _TRUSTED.get()


def parse_global(text: str) -> str:
    """``text`` as a ``module.name`` global; anything else is a usage error."""
    name = text.strip()
    if not _NAME.fullmatch(name):
        raise UsageError(f"--allow-global takes MODULE.NAME (like mypackage.config.TrainConfig), not {text!r}")
    return name


@contextmanager
def trusting(names: Iterable[str]) -> Iterator[frozenset[str]]:
    """Trust these globals (added to those already trusted) until the block ends."""
    added = frozenset(parse_global(n) for n in names)
    token = _TRUSTED.set(_TRUSTED.get() | added)
    try:
        yield _TRUSTED.get()
    finally:
        _TRUSTED.reset(token)
