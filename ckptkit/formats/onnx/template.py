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
from typing import TYPE_CHECKING, Any, BinaryIO

from ckptkit.core.compare import arrays_identical
from ckptkit.core.errors import CkptkitError, UnsupportedError, UsageError
from ckptkit.core.format import WriteContext
from ckptkit.core.model import Checkpoint, ProgressFn, RawExtent, TensorInfo
from ckptkit.io.protowire import I32, Buffer, fields, key, len_prefix, string_field, varint, varint_field
from ckptkit.io.streaming import TensorCopier

from .derive import derive_plan
from .derive.graphview import RNN_OPS, GraphView, Node
from .derive.kinds import Copy, Derivation, Target
from .derive.planner import UNUSED_SUFFIX, Plan, batchnorm_prefixes, checkpoint_reader, template_targets
from .elements import stored_nbytes
from .emit import EXTERNAL_THRESHOLD, PROTOBUF_LIMIT, ExternalData, inline_data_size, tensor_header, write_inline_data
from .graph import A_F, A_FLOATS, A_I, A_INTS, A_NAME, A_T, N_ATTRIBUTE, N_NAME, N_OP_TYPE, N_OUTPUT, Slot
from .reader import OnnxCheckpoint
from .splice import Replacement, Splice

if TYPE_CHECKING:
    import numpy as np

_SHOWN = 8  # names listed in a message before "and N more"


def write_into_template(ckpt: Checkpoint, ctx: WriteContext) -> None:
    """Write a copy of ``ctx.options["template"]`` holding ``ckpt``'s tensors.

    With ``base`` (the checkpoint the template was exported from), each template tensor's
    derivation is proven from it and applied to ``ckpt`` (:mod:`.derive`); without, tensors are
    matched by name (after ``rename``) and the graph is checked for what a name cannot carry.
    """
    template = Path(ctx.options["template"])
    tpl = _open_template(template)
    rename = parse_rename(ctx.options.get("rename") or ())
    allow_partial = bool(ctx.options.get("allow_partial"))
    if ctx.options.get("base"):
        if rename:
            raise UsageError(
                "--rename and --base do not go together: with --base, ckptkit proves where each tensor goes"
            )
        plan = plan_from_base(ckpt, tpl, Path(ctx.options["base"]), allow_partial)
    else:
        plan = match_tensors(ckpt, tpl, rename, allow_partial, dropped=getattr(ckpt, "dropped", ()))
    ctx.notes.extend(plan.notes)
    ctx.transformed.update(plan.transformed)
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


def plan_from_base(ckpt: Checkpoint, tpl: OnnxCheckpoint, base_path: Path, allow_partial: bool) -> Plan:
    """Prove from BASE how each template tensor derives, and plan the same from ``ckpt``."""
    from ckptkit import registry

    if not base_path.exists():
        raise UsageError("the --base checkpoint does not exist", base_path)
    with registry.open_checkpoint(base_path) as base:
        return derive_plan(tpl, base, ckpt, allow_partial)


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
    ckpt: Checkpoint,
    tpl: OnnxCheckpoint,
    rename: Mapping[str, str],
    allow_partial: bool,
    dropped: Sequence[str] = (),
) -> Plan:
    """Which checkpoint tensor replaces each model tensor, by name, refused where the graph shows a name is not enough.

    ``dropped`` names the checkpoint tensors left out by ``--exclude``/``--select``: a BatchNorm
    among them still says that the model's convolutions hold folded values.
    """
    template = tpl.path
    view = GraphView(tpl.buffer)
    targets = template_targets(tpl, view)
    names = list(ckpt.names()) + list(ckpt.aliases)
    unknown = sorted(set(rename) - set(names))
    if unknown:
        raise UsageError(f"--rename names tensors the checkpoint does not have: {_some(unknown)}")
    matched: dict[str, str] = {}
    for name in names:
        target = rename.get(name, name)
        if target not in targets:
            continue
        if target in matched:
            raise UsageError(f"checkpoint tensors {matched[target]!r} and {name!r} would both replace {target!r}")
        matched[target] = name
    if not matched:
        raise UsageError(
            "no tensor of the checkpoint has the name of a tensor in the --template model; if the exporter "
            "renamed them, give --base BASE (the checkpoint the model was exported from), or map names with "
            "--rename CKPT_NAME=MODEL_NAME",
            template,
        )
    _refuse_folded_batchnorm([*names, *dropped], rename, targets, template)
    infos = {t: ckpt.info(ckpt.aliases.get(n, n)) for t, n in matched.items()}
    _refuse_mismatches(matched, infos, targets, template)
    _refuse_transposed_matmul(matched, infos, targets, template)

    used = {ckpt.aliases.get(n, n) for n in matched.values()}
    unused = [n for n in ckpt.names() if n not in used and not _never_read(n, ckpt.info(n))]
    not_read = [n for n in ckpt.names() if n not in used and _never_read(n, ckpt.info(n))]
    missing = [n for n, s in tpl.slots.items() if s.kind == "initializer" and n not in matched]
    constants = [n for n, s in tpl.slots.items() if s.kind == "constant" and n not in matched]
    if unused:
        also = f"; {len(missing)} model initializer(s) have no tensor in the checkpoint ({_some(missing)})"
        raise UsageError(
            f"{len(unused)} checkpoint tensor(s) have no place in the model ({_some(unused)})"
            + (also if missing else "")
            + ". If the exporter renamed, transposed, packed or folded them, give --base BASE (the checkpoint "
            "the model was exported from) to derive them; if the model does not use them, leave them out with "
            "--exclude",
            template,
        )
    if missing and not allow_partial:
        raise UsageError(
            f"partial update: {len(missing)} model initializer(s) have no tensor in the checkpoint "
            f"({_some(missing)}). Pass --allow-partial to keep the model's values for them, or give --base "
            "BASE (the checkpoint the model was exported from) if the exporter renamed them",
            template,
        )
    plan = Plan()
    read_new = checkpoint_reader(ckpt)
    slots_replaced = 0
    for target_name, name in matched.items():
        tgt = targets[target_name]
        d = Copy(tgt, name, infos[target_name])
        if tgt.identity is None:
            plan.derivations[target_name] = d
            slots_replaced += 1
            continue
        source = plan.derivations.get(tgt.reads)
        theirs = source.apply(read_new) if source else np.asarray(tpl.read_tensor(tgt.reads))
        if not arrays_identical(d.apply(read_new), theirs):
            plan.constants[target_name] = (tgt.identity, d)
            plan.transformed[target_name] = (
                f"{d.explain()}; was shared with {tgt.reads} through Identity, now a Constant of its own"
            )
    plan.notes.append(f"replaced {slots_replaced} of {len(tpl.slots)} tensors of {template}")
    if missing:
        plan.notes.append(f"initializers kept from the model ({len(missing)}): {_some(missing)}")
    if constants:
        plan.notes.append(f"Constant values kept from the model ({len(constants)}): {_some(constants)}")
    if not_read:
        plan.notes.append(f"not used by inference ({len(not_read)}): {_some(not_read)}")
    return plan


def _never_read(name: str, info: TensorInfo) -> bool:
    """A BatchNorm's count of training steps: inference never reads it, and exporters leave it out."""
    return name.endswith(UNUSED_SUFFIX) and info.dtype.kind in "iu"


def _refuse_folded_batchnorm(
    names: Sequence[str], rename: Mapping[str, str], targets: Mapping[str, Target], template: Path | None
) -> None:
    folded = [p for p in batchnorm_prefixes(names) if rename.get(p + "running_var", p + "running_var") not in targets]
    if folded:
        labels = ", ".join(p.rstrip(".") for p in folded[:_SHOWN]) + (" and more" if len(folded) > _SHOWN else "")
        which = f"BatchNorms {labels} have" if len(folded) > 1 else f"BatchNorm {labels} has"
        raise UsageError(
            f"the checkpoint's {which} no BatchNormalization node in the model: the exporter folded them "
            "into the Conv/Gemm before them, whose weights and biases now hold folded values (under the old "
            "names or new ones); give --base BASE (the checkpoint the model was exported from) to derive them",
            template,
        )


def _refuse_mismatches(
    matched: Mapping[str, str], infos: Mapping[str, TensorInfo], targets: Mapping[str, Target], template: Path | None
) -> None:
    for target_name, name in matched.items():
        want, have = targets[target_name].info, infos[target_name]
        if (want.dtype, want.shape) == (have.dtype, have.shape):
            continue
        source = "" if name == target_name else f" (from {name!r})"
        what = (
            f"tensor {target_name!r}{source}: the model has {want.dtype.name} {list(want.shape)}, "
            f"the checkpoint {have.dtype.name} {list(have.shape)}"
        )
        uses = targets[target_name].uses
        if want.shape == have.shape:
            remedy = f"cast with --dtype {want.dtype.name}"
        elif any(u.node.op in RNN_OPS for u in uses):
            remedy = (
                "the model holds recurrent weights with their gates reordered and packed per direction; give "
                "--base BASE (the checkpoint the model was exported from) to derive them"
            )
        elif len(want.shape) == 2 and want.shape == have.shape[::-1]:
            remedy = (
                "the model holds it transposed (the exporter folded a Transpose into it); give --base BASE (the "
                "checkpoint the model was exported from) to derive it"
            )
        else:
            remedy = (
                "the shapes differ: check --rename, or give --base BASE (the checkpoint the model was exported "
                "from) if the exporter sliced or reshaped it"
            )
        raise UsageError(f"{what}; {remedy}", template)


def _refuse_transposed_matmul(
    matched: Mapping[str, str], infos: Mapping[str, TensorInfo], targets: Mapping[str, Target], template: Path | None
) -> None:
    """A Linear weight matched to MatMul's ``B`` (or Gemm's without transB): the shapes agree only when square."""
    for target_name, name in matched.items():
        if len(infos[target_name].shape) != 2 or not name.endswith("weight"):
            continue
        for use in targets[target_name].uses:
            node = use.node
            as_b = (node.op == "MatMul" and use.index == 1) or (
                node.op == "Gemm" and use.index == 1 and not node.ints.get("transB", 0)
            )
            if as_b and node.standard:
                source = "" if name == target_name else f" (from {name!r})"
                raise UsageError(
                    f"tensor {target_name!r}{source} feeds {node.op} as B, which multiplies by it as it is, while "
                    f"a Linear weight [out, in] multiplies transposed: the model holds {name!r} transposed, "
                    "which a name cannot say; give --base BASE (the checkpoint the model was exported from) to "
                    "derive it",
                    template,
                )


class PatchedCheckpoint(Checkpoint):
    """The template's tensors, with the planned ones computed from the checkpoint instead."""

    format_name = "onnx"

    def __init__(self, template: OnnxCheckpoint, ckpt: Checkpoint, plan: Plan) -> None:
        super().__init__(template.path)
        self.template = template
        self.ckpt = ckpt
        self.derivations = dict(plan.derivations)
        self.constants = dict(plan.constants)
        self.metadata = dict(template.metadata)
        self._read_new = checkpoint_reader(ckpt)
        self._infos = list(template.tensor_infos()) + [
            TensorInfo(name, d.target.info.dtype, d.target.shape, "Constant node")
            for name, (_, d) in self.constants.items()
        ]

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def _derivation(self, name: str) -> Derivation | None:
        if name in self.derivations:
            return self.derivations[name]
        if name in self.constants:
            return self.constants[name][1]
        return None

    def read_tensor(self, name: str) -> np.ndarray:
        d = self._derivation(name)
        if d is None:
            return self.template.read_tensor(name)
        return d.apply(self._read_new)

    def raw_extent(self, name: str) -> RawExtent | None:
        d = self._derivation(name)
        if d is None:
            return self.template.raw_extent(name)
        if isinstance(d, Copy) and type(d) is Copy and d.as_is:
            src = d.sources[0]
            return self.ckpt.raw_extent(self.ckpt.aliases.get(src, src))
        return None


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
        replaced = name in patched.derivations
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
    for name, (node, d) in patched.constants.items():
        reps.append(_constant_node(node, TensorInfo(name, d.target.info.dtype, d.target.shape), patched, progress))
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


# AttributeProto.type of a tensor attribute (onnx.proto AttributeType.TENSOR).
A_TYPE, TENSOR = 20, 4


def _constant_node(node: Node, ti: TensorInfo, patched: PatchedCheckpoint, progress: ProgressFn | None) -> Replacement:
    """A Constant node in place of an Identity, giving its output a value of its own (a shared tensor untied)."""
    header = tensor_header(ti.name, ti.dtype, ti.shape)
    tensor_size = len(header) + inline_data_size(stored_nbytes(ti.dtype, ti.numel))
    attr_head = string_field(A_NAME, "value") + len_prefix(A_T, tensor_size)
    attr_tail = varint_field(A_TYPE, TENSOR)
    attr_size = len(attr_head) + tensor_size + len(attr_tail)
    head = string_field(N_OUTPUT, node.outputs[0])
    if node.name:
        head += string_field(N_NAME, node.name)
    head += string_field(N_OP_TYPE, "Constant") + len_prefix(N_ATTRIBUTE, attr_size) + attr_head + header

    def write(out: BinaryIO, copier: TensorCopier) -> None:
        out.write(head)
        write_inline_data(copier, patched, ti, out, progress)
        out.write(attr_tail)

    return Replacement(node.path, len(head) - len(header) + tensor_size + len(attr_tail), write)


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
