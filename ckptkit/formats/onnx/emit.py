"""Writing ONNX tensors: their TensorProto fields, graph outputs, and payloads streamed to a file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ckptkit.core.dtypes import DType
from ckptkit.core.errors import UnsupportedError
from ckptkit.core.format import WriteContext
from ckptkit.core.model import Checkpoint, ProgressFn, TensorInfo
from ckptkit.io.protowire import bytes_field, len_field_size, len_prefix, string_field, varint_field
from ckptkit.io.streaming import TensorCopier

from .elements import is_packed, pack, stored_nbytes
from .graph import EXTERNAL, T_DATA_LOCATION, T_DATA_TYPE, T_DIMS, T_EXTERNAL_DATA, T_NAME, T_RAW_DATA

PAGE = 4096
# Tensors smaller than this stay inline when writing external data, as onnx's own save does.
EXTERNAL_THRESHOLD = 1024
# A protobuf message, so an ONNX file without external data, cannot reach 2 GiB.
PROTOBUF_LIMIT = 2**31 - 1


def onnx_type(ti: TensorInfo) -> int:
    """The ONNX element type of a tensor, or a refusal naming it."""
    if ti.dtype.onnx is None:
        raise UnsupportedError(f"tensor {ti.name!r} is {ti.dtype.name}, which ONNX cannot hold; cast it with --dtype")
    return ti.dtype.onnx


def tensor_header(name: str, dtype: DType, shape: Sequence[int]) -> bytes:
    """A TensorProto's fields up to (not including) its data: dims, data_type, name."""
    dims = b"".join(varint_field(T_DIMS, d) for d in shape)
    return dims + varint_field(T_DATA_TYPE, dtype.onnx or 0) + string_field(T_NAME, name)


def external_fields(location: str, offset: int, nbytes: int) -> bytes:
    """The external_data entries and data_location of a tensor stored in a data file."""
    entries = (("location", location), ("offset", str(offset)), ("length", str(nbytes)))
    out = b"".join(bytes_field(T_EXTERNAL_DATA, string_field(1, k) + string_field(2, v)) for k, v in entries)
    return out + varint_field(T_DATA_LOCATION, EXTERNAL)


def value_info(name: str, dtype: DType, shape: Sequence[int]) -> bytes:
    """A ValueInfoProto declaring a tensor of that type and fixed shape."""
    dims = b"".join(bytes_field(1, varint_field(1, d)) for d in shape)
    tensor_type = varint_field(1, dtype.onnx or 0) + bytes_field(2, dims)
    return string_field(1, name) + bytes_field(2, bytes_field(1, tensor_type))


def inline_data_size(nbytes: int) -> int:
    return len_field_size(T_RAW_DATA, nbytes)


def write_inline_data(
    copier: TensorCopier, ckpt: Checkpoint, ti: TensorInfo, out: BinaryIO, progress: ProgressFn | None
) -> None:
    """The raw_data field of tensor ``ti``, its payload streamed from ``ckpt``."""
    out.write(len_prefix(T_RAW_DATA, stored_nbytes(ti.dtype, ti.numel)))
    write_payload(copier, ckpt, ti, out, progress)


def write_payload(
    copier: TensorCopier, ckpt: Checkpoint, ti: TensorInfo, out: BinaryIO, progress: ProgressFn | None
) -> None:
    """The tensor's values as ONNX stores them: little-endian, sub-byte types packed."""
    if is_packed(ti.dtype):
        packed = pack(ckpt.read_tensor(ti.name), ti.dtype)
        out.write(packed.data)
        if progress:
            progress(ti.nbytes)
    else:
        copier.copy(ckpt, ti.name, out, progress=progress)


@dataclass
class ExternalData:
    """One data file beside the model: each tensor at a page-aligned offset."""

    location: str
    offsets: dict[str, int] = field(default_factory=dict)
    order: list[TensorInfo] = field(default_factory=list)
    end: int = 0

    @classmethod
    def beside(cls, ctx: WriteContext) -> ExternalData:
        """The data file of the model ``ctx`` writes: its name plus ``.data``."""
        return cls(f"{Path(ctx.output.path).name}.data")

    def place(self, ti: TensorInfo) -> int:
        """Reserve room for ``ti`` and return its offset."""
        offset = -(-self.end // PAGE) * PAGE
        self.offsets[ti.name] = offset
        self.order.append(ti)
        self.end = offset + stored_nbytes(ti.dtype, ti.numel)
        return offset

    def fields_for(self, ti: TensorInfo) -> bytes:
        return external_fields(self.location, self.offsets[ti.name], stored_nbytes(ti.dtype, ti.numel))

    def write(self, ctx: WriteContext, copier: TensorCopier, ckpt: Checkpoint) -> None:
        """Write the data file beside ``ctx``'s model, reading one tensor at a time from ``ckpt``."""
        if not self.order:
            return
        with open(ctx.output.temp_for(Path(ctx.output.path).parent / self.location), "wb") as out:
            for ti in self.order:
                out.seek(self.offsets[ti.name])  # the gaps before page boundaries stay holes
                write_payload(copier, ckpt, ti, out, ctx.progress)
            out.truncate(self.end)
