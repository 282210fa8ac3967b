"""ckptkit: convert, inspect, diff and verify machine-learning checkpoints.

``import ckptkit`` loads no framework; formats load their libraries when used. The public names
below are imported on first use, so that the command line starts without loading what a
subcommand does not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ckptkit.api import convert, diff, inspect, load, save
    from ckptkit.core.errors import CkptkitError
    from ckptkit.core.model import Checkpoint, Receipt, TensorInfo
    from ckptkit.diffing import DiffReport
    from ckptkit.timelines import TimelineReport, timeline

_PUBLIC = {
    "convert": "ckptkit.api", "inspect": "ckptkit.api", "load": "ckptkit.api", "save": "ckptkit.api",
    "DiffReport": "ckptkit.diffing", "diff": "ckptkit.api",
    "CkptkitError": "ckptkit.core.errors",
    "Checkpoint": "ckptkit.core.model", "Receipt": "ckptkit.core.model", "TensorInfo": "ckptkit.core.model",
    "TimelineReport": "ckptkit.timelines", "timeline": "ckptkit.timelines",
}  # fmt: skip

__all__ = [
    "Checkpoint", "CkptkitError", "DiffReport", "Receipt", "TensorInfo", "TimelineReport", "__version__",
    "convert", "diff", "inspect", "load", "save", "timeline",
]  # fmt: skip


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ckptkit")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    else:
        raise AttributeError(f"module 'ckptkit' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
