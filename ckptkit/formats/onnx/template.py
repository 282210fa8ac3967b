"""Writing a checkpoint into an existing ONNX model: its initializers and Constant values replaced.

Tensors are matched by name (after ``--rename``) and must agree in shape and dtype. Everything
else in the model, its IR version and opsets included, is copied byte for byte, so the result
loads wherever the model did. An update that leaves a model initializer without a new value, or a
checkpoint tensor without a place, is refused unless partial updates are allowed; Constant nodes
the checkpoint does not name keep their values (they are mostly shapes and axes), and are listed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ckptkit.core.errors import CkptkitError, UnsupportedError, UsageError
from ckptkit.core.format import WriteContext
from ckptkit.core.model import Checkpoint, ProgressFn, RawExtent, TensorInfo
from ckptkit.io.streaming import TensorCopier

from .elements import stored_nbytes
from .emit import EXTERNAL_THRESHOLD, PROTOBUF_LIMIT, ExternalData, inline_data_size, write_inline_data
from .graph import A_F, A_FLOATS, A_I, A_INTS, Slot
from .reader import OnnxCheckpoint
from .splice import Replacement, Splice
from .wire import I32, Buffer, fields, key, len_prefix, varint, varint_field

_SHOWN = 8  # names listed in a message before "and N more"


def write_into_template(ckpt: Checkpoint, ctx: WriteContext) -> None:
    """Write a copy of ``ctx.options["template"]`` holding ``ckpt``'s tensors."""
    template = Path(ctx.options["template"])
    tpl = _open_template(template)
    plan = match_tensors(
        ckpt, tpl, parse_rename(ctx.options.get("rename") or ()), bool(ctx.options.get("allow_partial")), ctx
    )
    patched = PatchedCheckpoint(tpl, ckpt, plan)
    ctx.expected = patched
    external: ExternalData | None = None
    if ctx.options.get("external_data") or tpl.uses_external_data():
        external = ExternalData.beside(ctx)
    splice = _splice(tpl, patched, external, ctx.progress)
    if external is None and splice.size > PROTOBUF_LIMIT:
        external = ExternalData.beside(ctx)
        splice = _splice(tpl, patched, external, ctx.progress)
        ctx.notes.append(f"the model would pass protobuf's 2 GiB limit: tensors written to {external.location}")
    with TensorCopier(kernel_copy_unaligned=True) as copier:
        if external is not None:
            external.write(ctx, copier, patched)
        with open(ctx.output.temp_for(), "wb") as out:
            splice.write(out, copier)


def _open_template(path: Path) -> OnnxCheckpoint:
    from ckptkit import registry

    if not path.is_file():
        raise UsageError("the --template model does not exist", path)
    kind = registry.detect(path).name
    if kind != "onnx":
        raise UsageError(f"the --template is a {kind} file, not an ONNX model", path)
    try:
        return OnnxCheckpoint(path)
    except CkptkitError as err:
        err.path = err.path or str(path)
        raise


def parse_rename(values: Iterable[str | Path] | Mapping[str, str]) -> dict[str, str]:
    """``CKPT=MODEL`` pairs, or files of such lines or a JSON object, as one mapping."""
    if isinstance(values, Mapping):
        return dict(values)
    if isinstance(values, str | Path):
        values = [values]
    mapping: dict[str, str] = {}
    for value in values:
        path = Path(value)
        if path.is_file():
            pairs = _rename_file(path)
        elif "=" in str(value):
            pairs = [str(value).split("=", 1)]
        else:
            raise UsageError(f"--rename {value}: expected CKPT_NAME=MODEL_NAME, or a file of such lines")
        for src, dst in pairs:
            mapping[src.strip()] = dst.strip()
    return mapping


def _rename_file(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"--rename file is not valid JSON: {err}", path) from None
        if not all(isinstance(v, str) for v in data.values()):
            raise UsageError("--rename file must map names to names", path)
        return [[k, v] for k, v in data.items()]
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise UsageError(f"--rename file line {n} is not CKPT_NAME=MODEL_NAME: {line!r}", path)
        pairs.append(line.split("=", 1))
    return pairs


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def match_tensors(
    ckpt: Checkpoint, tpl: OnnxCheckpoint, rename: Mapping[str, str], allow_partial: bool, ctx: WriteContext
) -> dict[str, str]:
    """Which checkpoint tensor replaces each model tensor: model name -> checkpoint name."""
    template = tpl.path
    names = list(ckpt.names()) + list(ckpt.aliases)
    unknown = sorted(set(rename) - set(names))
    if unknown:
        raise UsageError(f"--rename names tensors the checkpoint does not have: {_some(unknown)}")
    plan: dict[str, str] = {}
    for name in names:
        target = rename.get(name, name)
        if target not in tpl.slots:
            continue
        if target in plan:
            raise UsageError(f"checkpoint tensors {plan[target]!r} and {name!r} would both replace {target!r}")
        plan[target] = name
    if not plan:
        raise UsageError(
            "no tensor of the checkpoint has the name of a tensor in the --template model; "
            "map names with --rename CKPT_NAME=MODEL_NAME",
            template,
        )
    mismatched = []
    for target, name in plan.items():
        want, have = tpl.info(target), ckpt.info(ckpt.aliases.get(name, name))
        if (want.dtype, want.shape) != (have.dtype, have.shape):
            source = "" if name == target else f" (from {name!r})"
            mismatched.append(
                f"{target!r}{source}: the model has {want.dtype.name} {list(want.shape)}, "
                f"the checkpoint {have.dtype.name} {list(have.shape)}"
            )
    if mismatched:
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise UsageError(f"tensor {mismatched[0]}{more}; use --dtype to cast, or --rename", template)
    used = {ckpt.aliases.get(n, n) for n in plan.values()}
    unused = [n for n in ckpt.names() if n not in used]
    missing = [n for n, s in tpl.slots.items() if s.kind == "initializer" and n not in plan]
    constants = [n for n, s in tpl.slots.items() if s.kind == "constant" and n not in plan]
    if (unused or missing) and not allow_partial:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model initializer(s) have no tensor in the checkpoint ({_some(missing)})")
        if unused:
            parts.append(f"{len(unused)} checkpoint tensor(s) have no place in the model ({_some(unused)})")
        raise UsageError(
            "partial update: " + "; ".join(parts) + ". Pass --allow-partial to keep the model's values for the "
            "rest, or map names with --rename CKPT_NAME=MODEL_NAME",
            template,
        )
    ctx.notes.append(f"replaced {len(plan)} of {len(tpl.slots)} tensors of {template}")
    if missing:
        ctx.notes.append(f"initializers kept from the model ({len(missing)}): {_some(missing)}")
    if constants:
        ctx.notes.append(f"Constant values kept from the model ({len(constants)}): {_some(constants)}")
    if unused:
        ctx.notes.append(f"checkpoint tensors left out ({len(unused)}): {_some(unused)}")
    return plan


class PatchedCheckpoint(Checkpoint):
    """The template's tensors, with the planned ones read from the checkpoint instead."""

    format_name = "onnx"

    def __init__(self, template: OnnxCheckpoint, ckpt: Checkpoint, plan: Mapping[str, str]) -> None:
        super().__init__(template.path)
        self.template = template
        self.ckpt = ckpt
        self.plan = dict(plan)
        self.metadata = dict(template.metadata)

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self.template.tensor_infos()

    def _source(self, name: str) -> tuple[Checkpoint, str]:
        if name in self.plan:
            src = self.plan[name]
            return self.ckpt, self.ckpt.aliases.get(src, src)
        return self.template, name

    def read_tensor(self, name: str) -> np.ndarray:
        ckpt, src = self._source(name)
        return ckpt.read_tensor(src)

    def raw_extent(self, name: str) -> RawExtent | None:
        ckpt, src = self._source(name)
        return ckpt.raw_extent(src)


def _splice(
    tpl: OnnxCheckpoint, patched: PatchedCheckpoint, external: ExternalData | None, progress: ProgressFn | None
) -> Splice:
    """The template with replaced tensors, and tensors bound for ``external`` moved there."""
    if external is not None:
        external.offsets.clear()
        external.order.clear()
        external.end = 0
    buf = tpl.buffer
    reps: list[Replacement] = []
    for name, slot in tpl.slots.items():
        ti = tpl.info(name)
        replaced = name in patched.plan
        if slot.tensor is None:
            if replaced:
                reps.append(_scalar_replacement(buf, slot, patched.read_tensor(name)))
            continue
        big = stored_nbytes(ti.dtype, ti.numel) >= EXTERNAL_THRESHOLD
        to_external = external is not None and (big or slot.tensor.is_external)
        if not (replaced or to_external):
            continue  # copied as it is
        keep = b"".join(bytes(buf[f.tag_start : f.end]) for f in slot.tensor.keep)
        if to_external:
            assert external is not None
            external.place(ti)
            body = keep + external.fields_for(ti)
            reps.append(Replacement(slot.path, len(body), _writer(body)))
        else:
            size = len(keep) + inline_data_size(stored_nbytes(ti.dtype, ti.numel))
            reps.append(Replacement(slot.path, size, _inline_writer(keep, patched, ti, progress)))
    if tpl.unread_external:
        raise UnsupportedError(
            f"the --template model stores tensors ckptkit cannot read in external data ({_some(tpl.unread_external)})",
            tpl.path,
        )
    return Splice(Path(str(tpl.path)), len(buf), reps)


def _writer(body: bytes) -> Any:
    return lambda out, copier: out.write(body)


def _inline_writer(keep: bytes, patched: PatchedCheckpoint, ti: TensorInfo, progress: ProgressFn | None) -> Any:
    def write(out: BinaryIO, copier: TensorCopier) -> None:
        out.write(keep)
        write_inline_data(copier, patched, ti, out, progress)

    return write


def _scalar_replacement(buf: Buffer, slot: Slot, values: np.ndarray) -> Replacement:
    """A Constant's value_float(s)/value_int(s) attribute with new numbers, its other fields kept."""
    attr = slot.path[-1]
    keep = b"".join(
        bytes(buf[f.tag_start : f.end])
        for f in fields(buf, attr.start, attr.end)
        if f.number not in (A_F, A_I, A_FLOATS, A_INTS)
    )
    flat = values.reshape(-1)
    if slot.attr == "value_float":
        data = key(A_F, I32) + flat.astype("<f4").tobytes()
    elif slot.attr == "value_floats":
        payload = flat.astype("<f4").tobytes()
        data = len_prefix(A_FLOATS, len(payload)) + payload
    elif slot.attr == "value_int":
        data = varint_field(A_I, int(flat[0]))
    else:
        payload = b"".join(varint(int(v)) for v in flat)
        data = len_prefix(A_INTS, len(payload)) + payload
    body = keep + data
    return Replacement(slot.path, len(body), _writer(body))
