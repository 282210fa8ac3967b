"""Translating tensor layouts between PyTorch and Keras (``convert --layout keras|torch``).

:func:`plan_layout` decides, from names, ranks, Keras layer classes and ``--layout-hint``s, how
every tensor is renamed, transposed, reshaped or combined; :func:`apply_layout` returns a view of
the checkpoint that does it while tensors are read, and records the plan in the metadata
(``ckptkit:layout``) so that translating back restores the original bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ckptkit.core.errors import UsageError
from ckptkit.core.model import Checkpoint, TensorInfo
from ckptkit.formats.keras import structure
from ckptkit.layout.hints import Hint, parse_hints
from ckptkit.layout.plan import TARGETS, LayoutAmbiguityError, LayoutPlan
from ckptkit.layout.record import CLASSES_KEY, RECORD_KEY, load_record, make_record, undo
from ckptkit.layout.to_keras import plan_to_keras
from ckptkit.layout.to_torch import plan_to_torch
from ckptkit.layout.view import LayoutCheckpoint

__all__ = ["TARGETS", "LayoutAmbiguityError", "LayoutPlan", "apply_layout", "plan_layout"]


def plan_layout(
    ckpt: Checkpoint, target: str, hints: Sequence[str] = (), extra_hints: Sequence[Hint] = ()
) -> LayoutPlan:
    """How to translate ``ckpt`` to ``target`` ("keras" or "torch"); raises with the hints it needs.

    ``extra_hints`` come before the user's (which win): for example derived from a Keras template.
    """
    if target not in TARGETS:
        raise UsageError(f"--layout takes {' or '.join(TARGETS)}, not {target!r}")
    parsed = [*extra_hints, *parse_hints(list(hints))]
    record = load_record(ckpt)
    if record is not None:
        if record["to"] == target:
            raise UsageError(f"the checkpoint is already in {target} layout (it says so in its {RECORD_KEY} metadata)")
        if record["from"] == target:
            plan = undo(record, ckpt)
            if plan is not None:
                return plan
    infos = _infos_with_aliases(ckpt)
    names = [ti.name for ti in infos]
    if target == "keras" and names and all("/" in n for n in names):
        raise UsageError(
            "every tensor name already has Keras form (layer/variable); --layout keras expects PyTorch names"
        )
    if target == "torch" and names and not any("/" in n for n in names):
        raise UsageError("no tensor name has Keras form (layer/variable); --layout torch expects a Keras checkpoint")
    if target == "keras":
        plan = plan_to_keras(infos, parsed, dict(ckpt.aliases))
    else:
        plan = plan_to_torch(infos, parsed, _classes(ckpt), _equations(ckpt))
    if record is not None:
        plan.notes.append(f"the {RECORD_KEY} metadata does not match these tensors any more; translated by the rules")
    return plan


def apply_layout(ckpt: Checkpoint, plan: LayoutPlan) -> LayoutCheckpoint:
    """A view of ``ckpt`` translated by ``plan``, with the record (or its removal) in the metadata."""
    metadata = dict(ckpt.metadata)
    view = LayoutCheckpoint(ckpt, plan, metadata)
    if plan.restored:
        for key in plan.remove_metadata:
            metadata.pop(key, None)
    else:
        added: list[str] = []
        if plan.classes:
            if CLASSES_KEY not in metadata:
                added.append(CLASSES_KEY)
            metadata[CLASSES_KEY] = json.dumps({**_classes(ckpt), **plan.classes}, sort_keys=True)
        if plan.target == "keras" and view.aliases and structure.LAYERS not in metadata:
            # Keras writers list a tied name's layer after the stored tensors' unless told the model's order.
            layers = dict.fromkeys(s.out.split("/", 1)[0] for s in plan.steps)
            metadata[structure.LAYERS] = json.dumps([[name, plan.classes.get(name), None] for name in layers])
            added.append(structure.LAYERS)
        metadata.pop(RECORD_KEY, None)
        metadata[RECORD_KEY] = make_record(plan, ckpt, added)
    return view


def _classes(ckpt: Checkpoint) -> dict[str, str]:
    try:
        classes = json.loads(ckpt.metadata.get(CLASSES_KEY, "{}"))
    except json.JSONDecodeError:
        return {}
    return {k: v for k, v in classes.items() if isinstance(v, str)} if isinstance(classes, dict) else {}


def _equations(ckpt: Checkpoint) -> dict[str, str]:
    """Each EinsumDense layer's equation (and bias axes after a space), from the Keras model config."""
    configs = structure.layer_configs(structure.model_config(ckpt.metadata))
    found = {}
    for path, (cls, cfg) in configs.items():
        if cls == "EinsumDense" and isinstance(cfg.get("equation"), str):
            bias_axes = cfg.get("bias_axes")
            found[path] = f"{cfg['equation']} {bias_axes}" if isinstance(bias_axes, str) else cfg["equation"]
    return found


def _infos_with_aliases(ckpt: Checkpoint) -> list[TensorInfo]:
    """Every tensor, tied names too: each is translated by its own rule (tied names translated alike stay tied)."""
    from dataclasses import replace

    infos = list(ckpt.tensor_infos())
    infos.extend(replace(ckpt.info(target), name=alias) for alias, target in ckpt.aliases.items())
    return infos
