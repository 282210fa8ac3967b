"""GGUF files written by gguf-py (the real client), and hostile headers built by hand, for the tests."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

PLAIN_TYPES = {Q.F32: np.float32, Q.F16: np.float16, Q.F64: np.float64, Q.I8: np.int8, Q.I16: np.int16,
               Q.I32: np.int32, Q.I64: np.int64}  # fmt: skip


def quantizable_types() -> list[Any]:
    """Every quantized type gguf-py can quantize (asked of gguf-py, so a new release adds its types)."""
    found = []
    row = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)
    for qtype in Q:
        if qtype in PLAIN_TYPES or qtype == Q.BF16:
            continue
        try:
            gguf.quants.quantize(row, qtype)
        except (NotImplementedError, gguf.quants.QuantError):
            continue
        found.append(qtype)
    return found


def dequantizable_types() -> list[Any]:
    """Every quantized type gguf-py can dequantize."""
    found = []
    for qtype in Q:
        if qtype in PLAIN_TYPES or qtype == Q.BF16:
            continue
        _block, size = gguf.GGML_QUANT_SIZES[qtype]
        try:
            gguf.quants.dequantize(np.zeros((1, size), np.uint8), qtype)
        except NotImplementedError:
            continue
        found.append(qtype)
    return found


def write_gguf(path: Path, tensors: Iterable[tuple[str, np.ndarray, Any]], arch: str = "llama",
               fields: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """A GGUF file written by gguf-py's GGUFWriter: ``(name, array, raw ggml type or None)`` per tensor."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (fields or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    for name, array, raw in tensors:
        w.add_tensor(name, array, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_string(text: str | bytes, length: int | None = None) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def raw_header(n_tensors: int, n_kv: int, body: bytes = b"", version: int = 3) -> bytes:
    """The bytes of a hand-built GGUF header, for claims no writer would make."""
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + body


def tensor_info(name: str, dims: tuple[int, ...], type_id: int, offset: int) -> bytes:
    return gguf_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, type_id, offset)
