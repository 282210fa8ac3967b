"""One table of the element types ckptkit knows, with the name each format gives them.

numpy lacks bfloat16, the float8 types and the sub-byte types; ``ml_dtypes`` provides them, so
every tensor can be held as a numpy array without a framework. The table itself is plain data:
naming a dtype or reading a header imports neither numpy nor ml_dtypes (importing ml_dtypes 0.7
alone took 0.65 s on a small machine); :attr:`DType.numpy` loads them on first use. Sub-byte types (int4, float4_e2m1fn,
...) are held one element per byte, as ml_dtypes does; a format that packs them (ONNX) packs and
unpacks them itself, so ``itemsize`` is always the in-memory size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from ckptkit.core.errors import UnsupportedError

if TYPE_CHECKING:
    import numpy as np

# The types numpy has itself; every other name in the table is an ml_dtypes type.
_NUMPY_NATIVE = frozenset(
    ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8",
     "bool", "complex128", "complex64")
)  # fmt: skip


@dataclass(frozen=True)
class DType:
    """An element type and its names in each format (``None``: the format cannot hold it)."""

    name: str
    itemsize: int
    kind: str  # "f" float, "i" signed int, "u" unsigned int, "b" bool, "c" complex
    numpy_name: str
    safetensors: str | None
    torch_storage: str | None  # legacy typed-storage class name in torch.save pickles
    onnx: int | None  # onnx.TensorProto.DataType value

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype (an ml_dtypes type where numpy has none); loads numpy, and ml_dtypes if needed."""
        return _numpy_dtype(self.numpy_name)

    @property
    def needs_ml_dtypes(self) -> bool:
        """Whether numpy holds this type only through ``ml_dtypes`` (bfloat16, the float8 types, int4...)."""
        return self.numpy_name not in _NUMPY_NATIVE

    @property
    def is_floating(self) -> bool:
        return self.kind == "f"

    def __str__(self) -> str:
        return self.name


@cache
def _numpy_dtype(numpy_name: str) -> np.dtype:
    import numpy as np

    if numpy_name in _NUMPY_NATIVE:
        return np.dtype(numpy_name)
    import ml_dtypes

    return np.dtype(getattr(ml_dtypes, numpy_name))


# fmt: off
DTYPES: tuple[DType, ...] = (
    #     name              size kind numpy            safetensors torch storage           onnx
    DType("float64",          8, "f", "float64",        "F64",     "DoubleStorage",        11),
    DType("float32",          4, "f", "float32",        "F32",     "FloatStorage",          1),
    DType("float16",          2, "f", "float16",        "F16",     "HalfStorage",          10),
    DType("bfloat16",         2, "f", "bfloat16",       "BF16",    "BFloat16Storage",      16),
    DType("float8_e4m3fn",    1, "f", "float8_e4m3fn",  "F8_E4M3", None,                   17),
    DType("float8_e4m3fnuz",  1, "f", "float8_e4m3fnuz", None,     None,                   18),
    DType("float8_e5m2",      1, "f", "float8_e5m2",    "F8_E5M2", None,                   19),
    DType("float8_e5m2fnuz",  1, "f", "float8_e5m2fnuz", None,     None,                   20),
    DType("float8_e8m0fnu",   1, "f", "float8_e8m0fnu", "F8_E8M0", None,                   24),
    DType("float6_e2m3fn",    1, "f", "float6_e2m3fn",  None,      None,                   27),
    DType("float6_e3m2fn",    1, "f", "float6_e3m2fn",  None,      None,                   28),
    DType("float4_e2m1fn",    1, "f", "float4_e2m1fn",  None,      None,                   23),
    DType("int64",            8, "i", "int64",          "I64",     "LongStorage",           7),
    DType("int32",            4, "i", "int32",          "I32",     "IntStorage",            6),
    DType("int16",            2, "i", "int16",          "I16",     "ShortStorage",          5),
    DType("int8",             1, "i", "int8",           "I8",      "CharStorage",           3),
    DType("uint64",           8, "u", "uint64",         "U64",     None,                   13),
    DType("uint32",           4, "u", "uint32",         "U32",     None,                   12),
    DType("uint16",           2, "u", "uint16",         "U16",     None,                    4),
    DType("uint8",            1, "u", "uint8",          "U8",      "ByteStorage",           2),
    DType("int4",             1, "i", "int4",           None,      None,                   22),
    DType("uint4",            1, "u", "uint4",          None,      None,                   21),
    DType("int2",             1, "i", "int2",           None,      None,                   26),
    DType("uint2",            1, "u", "uint2",          None,      None,                   25),
    DType("bool",             1, "b", "bool",           "BOOL",    "BoolStorage",           9),
    DType("complex128",      16, "c", "complex128",     None,      "ComplexDoubleStorage", 15),
    DType("complex64",        8, "c", "complex64",      "C64",     "ComplexFloatStorage",  14),
)
# fmt: on

# Block quantizations, not element types: ``--dtype q8_0`` asks a writer that quantizes (GGUF, through
# its ``quantize`` option) to store matrices so; the tensors still read back as float32.
BLOCK_QUANTIZATIONS = ("q8_0", "q4_0")

_BY_NAME = {d.name: d for d in DTYPES}
_ALIASES = {
    "fp64": "float64", "double": "float64", "f64": "float64",
    "fp32": "float32", "float": "float32", "f32": "float32",
    "fp16": "float16", "half": "float16", "f16": "float16",
    "bf16": "bfloat16",
    "fp8_e4m3": "float8_e4m3fn", "float8_e4m3": "float8_e4m3fn", "e4m3": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2", "e5m2": "float8_e5m2",
    "long": "int64", "int": "int32", "short": "int16",
}  # fmt: skip
_BY_SAFETENSORS = {d.safetensors: d for d in DTYPES if d.safetensors}
_BY_TORCH_STORAGE = {d.torch_storage: d for d in DTYPES if d.torch_storage}
_BY_ONNX = {d.onnx: d for d in DTYPES if d.onnx is not None}
_BY_NUMPY_NAME = {d.numpy_name: d for d in DTYPES}


def dtype_names() -> list[str]:
    """Canonical names of every known dtype, in table order."""
    return [d.name for d in DTYPES]


def by_name(name: str) -> DType:
    """Look a dtype up by its canonical name or a common alias (``bf16``, ``fp16``, ``half``)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key.startswith("torch."):
        key = key[len("torch.") :]
    try:
        return _BY_NAME[key]
    except KeyError:
        raise UnsupportedError(f"unknown dtype {name!r}; known: {', '.join(dtype_names())}") from None


def by_safetensors(code: str) -> DType | None:
    """The dtype for a safetensors dtype code such as ``BF16``, or ``None`` if unknown."""
    return _BY_SAFETENSORS.get(code)


def by_torch_storage(storage_class: str) -> DType | None:
    """The dtype of a legacy torch typed-storage class name such as ``HalfStorage``."""
    return _BY_TORCH_STORAGE.get(storage_class)


def by_onnx(code: int) -> DType | None:
    """The dtype for an ``onnx.TensorProto`` data type value."""
    return _BY_ONNX.get(code)


def from_numpy(dtype: np.dtype) -> DType:
    """The table entry for a numpy (or ml_dtypes) dtype; byte order is ignored."""
    import numpy as np

    dt = np.dtype(dtype)
    native = dt.newbyteorder("=") if dt.byteorder not in ("=", "|") else dt
    # Looked up by name, so that a plain numpy array never makes ml_dtypes load; the equality
    # check then refuses another library's type that happens to share the name.
    d = _BY_NUMPY_NAME.get(native.name)
    if d is not None and d.numpy == native:
        return d
    raise UnsupportedError(f"numpy dtype {dt} has no ckptkit equivalent")
