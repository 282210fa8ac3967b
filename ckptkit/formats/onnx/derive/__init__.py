"""Exporter-aware patching: how each tensor of an exported ONNX model derives from the checkpoint it came from.

``ckptkit convert NEW --template MODEL.onnx --base BASE`` proves, for every initializer and
Constant of MODEL.onnx, how the exporter made it from BASE (the checkpoint MODEL.onnx was exported
from), then makes the same from NEW. :mod:`.kinds` holds the derivations, :mod:`.planner` the
search and the checks, :mod:`.graphview` what the graph says about each tensor.
"""

from __future__ import annotations

from ckptkit.core.model import Checkpoint

from ..reader import OnnxCheckpoint
from .graphview import GraphView
from .kinds import KINDS, Derivation, Target
from .planner import Plan, Planner

__all__ = ["KINDS", "Derivation", "GraphView", "Plan", "Target", "derive_plan"]


def derive_plan(template: OnnxCheckpoint, base: Checkpoint, new: Checkpoint, allow_partial: bool = False) -> Plan:
    """Prove from ``base`` how each tensor of ``template`` derives, and plan the same from ``new``.

    Raises :class:`~ckptkit.core.errors.UnsupportedError` naming the tensors when a derivation
    cannot be proven, is ambiguous on NEW, or a tensor of NEW has no place in the model.
    """
    return Planner(template, base, GraphView(template.buffer)).plan(new, allow_partial)
