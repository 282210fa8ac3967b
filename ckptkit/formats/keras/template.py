"""``--template``: fill a Keras model's variables from a checkpoint, checking every shape.

The template (a ``.keras`` archive or a Keras ``.h5``/``.weights.h5``) gives the structure, names
and shapes; the checkpoint gives the values, matched by name when every template variable has a
tensor of its name, else by order. The writer then lays the file out as the template is laid out,
so the output loads wherever the template loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ckptkit.core.errors import UsageError
from ckptkit.core.model import Checkpoint, TensorInfo
from ckptkit.core.views import TransformedCheckpoint
from ckptkit.formats.keras import structure

MATCH_MODES = ("name", "order")


def template_infos(path: Path) -> tuple[list[TensorInfo], dict[str, str]]:
    """The template's model variables (optimizer variables left out) and its metadata."""
    from ckptkit import registry

    if not path.is_file():
        raise UsageError("the --template model does not exist", path)
    with registry.open_checkpoint(path) as tpl:
        if structure.FILE_KIND not in tpl.metadata:
            raise UsageError(f"the --template is a {tpl.format_name} file, not a Keras model or weights file", path)
        infos = [ti for ti in tpl.tensor_infos() if not structure.is_optimizer(ti.name)]
        return infos, dict(tpl.metadata)


def fill(ckpt: Checkpoint, template: Path, match: str | None, notes: list[str]) -> Checkpoint:
    """A view of ``ckpt`` named, ordered and structured like the template's model variables."""
    if match not in (None, *MATCH_MODES):
        raise UsageError(f"--template-match takes {' or '.join(MATCH_MODES)}, not {match!r}")
    infos, meta = template_infos(template)
    source = [ti for ti in ckpt.tensor_infos() if not structure.is_optimizer(ti.name)]
    skipped = len(ckpt.tensor_infos()) - len(source)
    by_name = {ti.name: ti for ti in source}
    # A tied name fills a template variable of its own too (Keras keeps a copy per layer).
    by_name.update(
        {a: replace(ckpt.info(t), name=a) for a, t in ckpt.aliases.items() if a not in by_name and t in by_name}
    )
    missing = [ti.name for ti in infos if ti.name not in by_name]
    if match == "name" or (match is None and not missing):
        if missing:
            raise UsageError(
                f"the template's variables {_few(missing)} have no tensor of that name in the checkpoint; "
                "use --template-match order to match by position"
            )
        pairs = [(ti, by_name[ti.name]) for ti in infos]
        extra = [ti.name for ti in source if ti.name not in {t.name for t in infos}]
    else:
        if len(source) != len(infos):
            raise UsageError(
                f"the template has {len(infos)} model variables, the checkpoint {len(source)} tensors "
                f"({_few(missing)} not found by name either); they cannot be matched by order"
            )
        pairs = list(zip(infos, source, strict=True))
        extra = []
        notes.append("template variables matched to tensors by order")
    if extra:
        raise UsageError(
            f"the checkpoint has tensors the template has no variable for: {_few(extra)}; leave them out with --exclude"
        )
    for want, got in pairs:
        if want.shape != got.shape:
            layer = structure.top_layer(want.name)
            raise UsageError(
                f"template layer {layer!r} variable {want.name!r} has shape {list(want.shape)}, but tensor "
                f"{got.name!r} has shape {list(got.shape)}"
            )
        if want.dtype != got.dtype:
            notes.append(f"{want.name}: kept {got.dtype.name} (the template has {want.dtype.name})")
    if skipped:
        notes.append(f"{skipped} optimizer variables left out: the template's model starts with a fresh optimizer")
    view = TransformedCheckpoint(ckpt, {want.name: got.name for want, got in pairs}, None, {}, [])
    view.metadata = _merged_metadata(meta, ckpt.metadata)
    return view


def _merged_metadata(template: Mapping[str, str], source: Mapping[str, str]) -> dict[str, Any]:
    kept = {k: v for k, v in source.items() if not k.startswith("keras:")}
    return {**kept, **{k: v for k, v in template.items() if k.startswith("keras:")}}


def _few(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")
