"""TensorFlow's DataType numbers (``tensorflow/core/framework/types.proto``) and ckptkit's dtypes.

Sub-byte types (int4, int2, float4_e2m1fn, ...) are stored one element per byte in checkpoints,
as ckptkit holds them, so every type here reads as-is.
"""

from __future__ import annotations

from ckptkit.core.dtypes import DType, by_name

_NAMES = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 8: "complex64", 9: "int64",
    10: "bool", 14: "bfloat16", 17: "uint16", 18: "complex128", 19: "float16", 22: "uint32", 23: "uint64",
    24: "float8_e5m2", 25: "float8_e4m3fn", 26: "float8_e4m3fnuz", 28: "float8_e5m2fnuz", 29: "int4",
    30: "uint4", 31: "int2", 32: "uint2", 33: "float4_e2m1fn",
}  # fmt: skip
DT_STRING = 7
# Types a checkpoint may hold that ckptkit does not read, and what they are.
UNREAD = {
    DT_STRING: "a TensorFlow string tensor (DT_STRING)",
    11: "a TensorFlow quantized tensor (DT_QINT8)",
    12: "a TensorFlow quantized tensor (DT_QUINT8)",
    13: "a TensorFlow quantized tensor (DT_QINT32)",
    15: "a TensorFlow quantized tensor (DT_QINT16)",
    16: "a TensorFlow quantized tensor (DT_QUINT16)",
    20: "a TensorFlow resource handle (DT_RESOURCE)",
    21: "a TensorFlow variant tensor (DT_VARIANT)",
    27: "a TensorFlow float8_e4m3b11fnuz tensor",
}
_CODES = {name: code for code, name in _NAMES.items()}
DTYPES_HELD = frozenset(_NAMES.values())  # the format's dtype column


def to_ckptkit(code: int) -> DType | None:
    """The dtype of TensorFlow's DataType ``code``; ``None`` for types ckptkit does not read."""
    name = _NAMES.get(code)
    return by_name(name) if name else None


def to_tensorflow(dtype: DType) -> int | None:
    """TensorFlow's DataType number for ``dtype``; ``None`` if TensorFlow has no such type."""
    return _CODES.get(dtype.name)
