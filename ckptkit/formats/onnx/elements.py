"""ONNX element types: how their values are stored (raw bytes, packed sub-byte, typed fields).

Spec: the TensorProto comments in onnx.proto. raw_data holds little-endian values; the 4-, 2- and
6-bit types are packed into a little-end-first bit stream. Without raw_data, values sit in a
typed repeated field chosen by the element type, many of them widened to int32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ckptkit.core.dtypes import DType, by_onnx
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.io.protowire import Buffer, Field, repeated

if TYPE_CHECKING:
    import numpy as np

# TensorProto field numbers of the typed value fields.
FLOAT_DATA, INT32_DATA, STRING_DATA, INT64_DATA, DOUBLE_DATA, UINT64_DATA = 4, 5, 6, 7, 10, 11
TYPED_FIELDS = (FLOAT_DATA, INT32_DATA, STRING_DATA, INT64_DATA, DOUBLE_DATA, UINT64_DATA)
TYPED_FIELD_NAMES = {
    FLOAT_DATA: "float_data", INT32_DATA: "int32_data", STRING_DATA: "string_data",
    INT64_DATA: "int64_data", DOUBLE_DATA: "double_data", UINT64_DATA: "uint64_data",
}  # fmt: skip

STRING = 8
COMPLEX64, COMPLEX128 = 14, 15

# Bits per element of the types stored several to a byte (UINT4, INT4, FLOAT4E2M1, UINT2, INT2,
# FLOAT6E2M3, FLOAT6E3M2).
PACKED_BITS = {21: 4, 22: 4, 23: 4, 25: 2, 26: 2, 27: 6, 28: 6}

# The first IR version that knows each element type (onnx.proto's IR_VERSION history).
IR_FOR_TYPE = {17: 9, 18: 9, 19: 9, 20: 9, 21: 10, 22: 10, 23: 11, 24: 12, 25: 13, 26: 13, 27: 14, 28: 14}

# Names ONNX gives the types that have no ckptkit equivalent, for messages.
OTHER_TYPE_NAMES = {0: "undefined", STRING: "string"}


def element_name(onnx_type: int) -> str:
    """The ckptkit name of an ONNX element type, or ONNX's own name when ckptkit has none."""
    dtype = by_onnx(onnx_type)
    if dtype is not None:
        return dtype.name
    return OTHER_TYPE_NAMES.get(onnx_type, f"ONNX type {onnx_type}")


def stored_nbytes(dtype: DType, numel: int) -> int:
    """Bytes the values take in raw_data or an external data file (packed for sub-byte types)."""
    bits = PACKED_BITS.get(dtype.onnx or 0)
    return (numel * bits + 7) // 8 if bits else numel * dtype.itemsize


def is_packed(dtype: DType) -> bool:
    return (dtype.onnx or 0) in PACKED_BITS


def unpack(data: np.ndarray, dtype: DType, numel: int) -> np.ndarray:
    """Sub-byte values packed in ``data`` (uint8), one per byte, as a flat array of ``dtype``."""
    import numpy as np

    bits = PACKED_BITS[dtype.onnx or 0]
    if data.size < stored_nbytes(dtype, numel):
        raise CorruptCheckpointError(f"{data.size} bytes cannot hold {numel} packed {dtype.name} values")
    if bits == 6:
        groups = -(-numel // 4)
        padded = np.zeros(groups * 3, np.uint8)
        padded[: min(data.size, padded.size)] = data[: padded.size]
        b0, b1, b2 = padded[0::3], padded[1::3], padded[2::3]
        out = np.empty((groups, 4), np.uint8)
        out[:, 0] = b0 & 0x3F
        out[:, 1] = (b0 >> 6) | ((b1 & 0x0F) << 2)
        out[:, 2] = (b1 >> 4) | ((b2 & 0x03) << 4)
        out[:, 3] = b2 >> 2
        flat = out.reshape(-1)
    else:
        per_byte = 8 // bits
        used = data[: -(-numel // per_byte)]
        flat = np.empty(used.size * per_byte, np.uint8)
        mask = (1 << bits) - 1
        for k in range(per_byte):
            flat[k::per_byte] = (used >> (k * bits)) & mask
    return flat[:numel].view(dtype.numpy)


def pack(values: np.ndarray, dtype: DType) -> np.ndarray:
    """The packed bytes of sub-byte ``values`` (the inverse of :func:`unpack`)."""
    import numpy as np

    bits = PACKED_BITS[dtype.onnx or 0]
    per_group = 4 if bits == 6 else 8 // bits
    codes = np.ascontiguousarray(values).reshape(-1).view(np.uint8) & ((1 << bits) - 1)
    numel = codes.size
    if numel % per_group:
        codes = np.concatenate([codes, np.zeros(per_group - numel % per_group, np.uint8)])
    if bits == 6:
        c = codes.reshape(-1, 4)
        out = np.empty((c.shape[0], 3), np.uint8)
        out[:, 0] = c[:, 0] | (c[:, 1] << 6)
        out[:, 1] = (c[:, 1] >> 2) | (c[:, 2] << 4)
        out[:, 2] = (c[:, 2] >> 4) | (c[:, 3] << 2)
        packed = out.reshape(-1)
    else:
        packed = np.zeros(codes.size // per_group, np.uint8)
        for k in range(per_group):
            packed |= codes[k::per_group] << (k * bits)
    return packed[: stored_nbytes(dtype, numel)]


def typed_field(onnx_type: int) -> tuple[int, str]:
    """The typed field that holds values of ``onnx_type`` without raw_data, and its element encoding."""
    if onnx_type in (1, COMPLEX64):
        return FLOAT_DATA, "<f4"
    if onnx_type in (11, COMPLEX128):
        return DOUBLE_DATA, "<f8"
    if onnx_type == 7:
        return INT64_DATA, "varint"
    if onnx_type in (12, 13):
        return UINT64_DATA, "varint"
    return INT32_DATA, "varint"


def decode_typed(buf: Buffer, pieces: Mapping[int, Sequence[Field]], dtype: DType, numel: int) -> np.ndarray:
    """A flat array of ``numel`` values of ``dtype`` read from the tensor's typed field."""
    import numpy as np

    code = dtype.onnx or 0
    field, element = typed_field(code)
    values = repeated(buf, pieces.get(field, ()), element)
    if code in PACKED_BITS and PACKED_BITS[code] != 6:
        # Each int32_data entry holds one byte of the packed stream.
        return unpack(values.astype(np.uint8), dtype, numel)
    want = numel * 2 if code in (COMPLEX64, COMPLEX128) else numel
    if values.size != want:
        raise CorruptCheckpointError(f"{TYPED_FIELD_NAMES[field]} holds {values.size} values, the shape needs {want}")
    if element != "varint":
        return values.view(dtype.numpy) if code in (COMPLEX64, COMPLEX128) else values.astype(dtype.numpy)
    if dtype.kind == "b":
        return values != 0
    if code in PACKED_BITS:  # 6-bit types: one value per entry, in the low bits
        return (values & 0x3F).astype(np.uint8).view(dtype.numpy)
    # Keep the low bytes of each entry, as the onnx package does: int32_data holds float16 and
    # bfloat16 as their bit patterns, and negative narrow integers sign-extended.
    width = dtype.itemsize
    carrier = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[width]
    low = values & np.uint64((1 << (8 * width)) - 1) if width < 8 else values
    return low.astype(carrier).view(dtype.numpy)
