"""Comparing two checkpoints: matching names, streaming drift metrics, per-layer reports.

:func:`diff` is the engine behind ``ckptkit.diff`` (which adds the PyTorch <-> Keras layout
normalizers); :class:`DiffReport` its result, whose ``to_dict`` is the ``ckptkit diff --json``
output described by the JSON schema :func:`schema` returns.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

from ckptkit.diffing.api import diff
from ckptkit.diffing.normalize import Normalizer, register_normalizer
from ckptkit.diffing.report import SCHEMA_ID, DiffReport, LayerDiff, TensorDiff, Violation


@cache
def schema() -> dict[str, Any]:
    """The JSON schema of :meth:`DiffReport.to_dict` (shipped as ``ckptkit/diffing/schema.json``)."""
    return json.loads(files("ckptkit.diffing").joinpath("schema.json").read_text(encoding="utf-8"))


__all__ = [
    "SCHEMA_ID", "DiffReport", "LayerDiff", "Normalizer", "TensorDiff", "Violation",
    "diff", "register_normalizer", "schema",
]  # fmt: skip
