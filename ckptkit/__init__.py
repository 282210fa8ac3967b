"""ckptkit: convert, inspect, diff and verify machine-learning checkpoints.

``import ckptkit`` loads no framework; formats load their libraries when used.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ckptkit.api import convert, inspect, load, save
from ckptkit.drift import DiffReport, diff
from ckptkit.errors import CkptkitError
from ckptkit.model import Checkpoint, Receipt, TensorInfo

try:
    __version__ = version("ckptkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Checkpoint", "CkptkitError", "DiffReport", "Receipt", "TensorInfo", "__version__",
    "convert", "diff", "inspect", "load", "save",
]  # fmt: skip
