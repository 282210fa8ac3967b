"""Writing GGUF (version 3) tensor by tensor: plain tensors as they are, Q8_0/Q4_0 quantized on request.

The header is computed first from the tensor infos (every size is known before any data is read),
then each tensor is appended at the next 32-byte boundary: plain ones copied (in the kernel when
they lie in a file), quantized ones converted a band of rows at a time by gguf-py's own
``gguf.quants.quantize``, so the blocks are those llama.cpp's Python tooling writes. Tensors a GGUF
source holds quantized are copied block for block, whatever ``--dtype`` asks.

Metadata: a GGUF source's fields are written back with their own value types (``general.alignment``
aside: the writer states its own); other sources' string metadata is written as strings, except
``gguf:*`` entries a non-GGUF file carried over, whose value types were lost on the way (only
``gguf:general.*`` strings come back).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, BinaryIO

from ckptkit.core import dtypes
from ckptkit.core.errors import UnsupportedError, UsageError
from ckptkit.core.format import OptionSpec, WriteContext
from ckptkit.core.metadata import checkpoint_metadata
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.core.names import utf8_text
from ckptkit.formats.gguf.header import (
    ALIGNMENT_KEY,
    ARRAY,
    BOOL,
    DEFAULT_ALIGNMENT,
    GGML_BY_NAME,
    MAGIC,
    MAX_DIMS,
    STRING,
    VALUE_TYPES,
    Field,
    GGMLType,
    TensorEntry,
)
from ckptkit.formats.gguf.read import PREFIX, TYPES_KEY, VERSION_KEY, GGUFCheckpoint, dequantize, gguf_module

if TYPE_CHECKING:
    import numpy as np

VERSION = 3
QUANTIZE_OPTION = OptionSpec(
    "quantize",
    "GGUF only: quantize matrices (floating tensors of 2+ dimensions whose rows are whole blocks of 32) "
    "to q8_0 or q4_0 with gguf-py, as llama.cpp does; 1-D tensors (norms, biases) stay as they are. "
    "--dtype q8_0 / q4_0 means the same.",
)
QUANTIZATIONS = {"q8_0": "Q8_0", "q4_0": "Q4_0"}
_PLAIN = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
}
DTYPES_HELD = frozenset(_PLAIN)  # the format's dtype column: what is stored as it is  # fmt: skip
_BAND_ELEMENTS = 1 << 22  # quantize this many elements at a time
MAX_NAME_BYTES = 63  # llama.cpp's GGML_MAX_NAME is 64 with the terminating NUL


@dataclass
class _Planned:
    info: TensorInfo
    ggml: GGMLType
    nbytes: int
    offset: int = 0
    blocks: RawExtent | None = None  # quantized blocks copied from a GGUF source
    quantize: bool = False


def write_gguf(ckpt: Checkpoint, ctx: WriteContext) -> None:
    """Write ``ckpt`` as one GGUF file, tensor by tensor."""
    quant = _quantization(ctx.options.get("quantize"))
    plan = [_plan(ckpt, ti, quant) for ti in ckpt.tensor_infos()]
    fields = _fields(ckpt, ctx.notes)
    head = _header(fields, plan)
    quantized = [p for p in plan if p.quantize]
    if quant is not None:
        kept = len(plan) - len(quantized) - sum(1 for p in plan if p.blocks is not None)
        ctx.notes.append(
            f"{len(quantized)} tensor(s) quantized to {quant.name} with gguf-py; {kept} kept as they are "
            f"(1-D, integer, or rows not whole blocks of {quant.block})"
        )
    copied = sum(1 for p in plan if p.blocks is not None)
    if copied:
        ctx.notes.append(f"{copied} quantized tensor(s) copied block for block from the source")
    long_names = [p.info.name for p in plan if len(p.info.name.encode()) > MAX_NAME_BYTES]
    if long_names:
        ctx.notes.append(f"{len(long_names)} tensor name(s) longer than llama.cpp's {MAX_NAME_BYTES} bytes, e.g. "
                         f"{long_names[0]!r}: llama.cpp will not load the file")  # fmt: skip
    if quantized or copied:
        ctx.expected = _AsWritten(ckpt, plan)
    from ckptkit.io.streaming import TensorCopier

    with open(ctx.output.temp_for(), "wb") as out, TensorCopier() as copier:
        out.write(head)
        data_start = len(head)
        for p in plan:
            out.write(b"\0" * (data_start + p.offset - out.tell()))
            if p.blocks is not None:
                copier.copy_extent(p.blocks, out, ctx.progress)
            elif p.quantize:
                _write_quantized(ckpt.read_tensor(p.info.name), p, out, ctx)
            else:
                copier.copy(ckpt, p.info.name, out, progress=ctx.progress)


def _quantization(value: Any) -> GGMLType | None:
    if not value:
        return None
    key = str(value).strip().lower()
    if key not in QUANTIZATIONS:
        raise UsageError(f"--quantize {value!r} is not one ckptkit writes; choose {' or '.join(QUANTIZATIONS)}")
    return GGML_BY_NAME[QUANTIZATIONS[key]]


def _plan(ckpt: Checkpoint, ti: TensorInfo, quant: GGMLType | None) -> _Planned:
    if len(ti.shape) > MAX_DIMS:
        raise UnsupportedError(
            f"tensor {ti.name!r} has {len(ti.shape)} dimensions, and GGUF holds at most {MAX_DIMS}; leave it out "
            f"with --exclude '{ti.name}', or choose another format"
        )
    source = _gguf_source(ckpt, ti.name)
    if source is not None:
        gguf_ckpt, name = source
        entry = gguf_ckpt.entry(name)
        if entry.ggml.dtype is None:
            return _Planned(ti, entry.ggml, entry.nbytes, blocks=gguf_ckpt.stored_extent(name))
    if (
        quant is not None
        and ti.dtype.is_floating
        and len(ti.shape) >= 2
        and ti.numel
        and ti.shape[-1] % quant.block == 0
    ):
        return _Planned(ti, quant, quant.nbytes(ti.numel), quantize=True)
    ggml_name = _PLAIN.get(ti.dtype.name)
    if ggml_name is None:
        cast = "--dtype float16 (or bfloat16, float32)" if ti.dtype.is_floating else "--dtype int32 (or int64)"
        raise UnsupportedError(
            f"tensor {ti.name!r} is {ti.dtype.name}, which GGUF cannot hold; convert with {cast} to cast such "
            f"tensors, leave it out with --exclude '{ti.name}', or choose another format"
        )
    ggml = GGML_BY_NAME[ggml_name]
    return _Planned(ti, ggml, ti.nbytes)


def _gguf_source(ckpt: Checkpoint, name: str) -> tuple[GGUFCheckpoint, str] | None:
    """The GGUF file and name a tensor is read from unchanged, looking through renaming views."""
    while not isinstance(ckpt, GGUFCheckpoint):
        source_of = getattr(ckpt, "source_of", None)
        found = source_of(name) if source_of is not None else None
        if found is None:
            return None
        ckpt, name = found
    return ckpt, name


def _gguf_fields(ckpt: Checkpoint) -> list[Field] | None:
    """Typed metadata the checkpoint, or one it is a view of, holds for GGUF (``gguf_fields``)."""
    current: object = ckpt
    while isinstance(current, Checkpoint):
        fields = getattr(current, "gguf_fields", None)
        if fields is not None:
            return list(fields)
        current = getattr(current, "base", None)
    return None


def _fields(ckpt: Checkpoint, notes: list[str]) -> list[Field]:
    fields = [f for f in (_gguf_fields(ckpt) or []) if f.key != ALIGNMENT_KEY]
    have = {f.key for f in fields}
    dropped = 0
    for key, value in checkpoint_metadata(ckpt).items():
        if key in (TYPES_KEY, VERSION_KEY):
            continue
        if key.startswith(PREFIX):
            if key[len(PREFIX) :] in have:
                continue
            if not key.startswith(PREFIX + "general.") or key == PREFIX + ALIGNMENT_KEY:
                dropped += 1
                continue
            key = key[len(PREFIX) :]
        if key not in have:
            fields.append(Field(key, STRING, value))
            have.add(key)
    if dropped:
        notes.append(
            f"{dropped} gguf:* metadata entries not written: the source kept them as text, their GGUF types lost"
        )
    return fields


def _header(fields: Sequence[Field], plan: list[_Planned]) -> bytes:
    parts = [MAGIC, struct.pack("<IQQ", VERSION, len(plan), len(fields))]
    for f in fields:
        parts.append(_string(utf8_text(f.key, "GGUF", "metadata key")))
        parts.append(struct.pack("<I", f.type))
        parts.append(_value(f.type, f.value, f.item_type))
    offset = 0
    for p in plan:
        offset += -offset % DEFAULT_ALIGNMENT
        p.offset = offset
        dims = tuple(reversed(p.info.shape))
        parts.append(_string(utf8_text(p.info.name, "GGUF")))
        parts.append(struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, p.ggml.id, offset))
        offset += p.nbytes
    head = b"".join(parts)
    return head + b"\0" * (-len(head) % DEFAULT_ALIGNMENT)


def _string(text: str | bytes) -> bytes:
    raw = text if isinstance(text, bytes) else utf8_text(text, "GGUF", "metadata text")
    return struct.pack("<Q", len(raw)) + raw


def _value(vtype: int, value: Any, item_type: int | None = None) -> bytes:
    import numpy as np

    if vtype == STRING:
        return _string(value)
    if vtype == ARRAY:
        assert item_type is not None
        head = struct.pack("<IQ", item_type, len(value))
        code = VALUE_TYPES[item_type][1]
        if code:
            return head + np.asarray(value, dtype=np.dtype("<" + code)).tobytes()
        if item_type == ARRAY:
            return head + b"".join(_value(ARRAY, v, t) for t, v in value)
        return head + b"".join(_string(v) for v in value)
    code = VALUE_TYPES[vtype][1]
    return struct.pack("<" + code, bool(value) if vtype == BOOL else value)


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    row = shape[-1] if shape else 1
    return (math.prod(shape) // row if row else 0), row


def _write_quantized(data: np.ndarray, p: _Planned, out: BinaryIO, ctx: WriteContext) -> None:
    import numpy as np

    gguf = gguf_module(f"writing tensor {p.info.name!r} as {p.ggml.name}")
    qtype = gguf.GGMLQuantizationType(p.ggml.id)
    rows, row = _rows(p.info.shape)
    flat = data.reshape(rows, row)
    band = max(1, _BAND_ELEMENTS // max(row, 1))
    for lo in range(0, rows, band):
        chunk = np.ascontiguousarray(flat[lo : lo + band], dtype=np.float32)
        blocks = gguf.quants.quantize(chunk, qtype)
        out.write(np.ascontiguousarray(blocks).tobytes())
        if ctx.progress:
            ctx.progress(chunk.nbytes)


class _AsWritten(Checkpoint):
    """``base`` as the written file holds it (quantized tensors through their blocks), to check the file against."""

    concurrent_reads = False

    def __init__(self, base: Checkpoint, plan: list[_Planned]) -> None:
        super().__init__(base.path)
        self.base = base
        self.format_name = base.format_name
        self.aliases = dict(base.aliases)
        self.metadata = dict(base.metadata)
        self._plan = {p.info.name: p for p in plan}
        float32 = dtypes.by_name("float32")
        self._infos = [replace(p.info, dtype=float32) if p.quantize else p.info for p in plan]

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        import numpy as np

        p = self._plan[name]
        if not p.quantize:
            return self.base.read_tensor(name)
        gguf = gguf_module(f"checking tensor {name!r}")
        rows, row = _rows(p.info.shape)
        blocks = gguf.quants.quantize(np.ascontiguousarray(self.base.read_tensor(name), np.float32).reshape(rows, row),
                                      gguf.GGMLQuantizationType(p.ggml.id))  # fmt: skip
        entry = TensorEntry(p.info, p.ggml, tuple(reversed(p.info.shape)), 0, p.nbytes)
        return dequantize(np.ascontiguousarray(blocks).reshape(-1).view(np.uint8), entry)
