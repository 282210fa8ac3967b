"""What the ONNX tests share: running a model in onnxruntime and getting raw tensor bytes back."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ckptkit.core.dtypes import from_numpy
from ckptkit.formats.onnx.elements import is_packed, pack


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # unused-initializer warnings are expected for complex tensors
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_outputs(path: Path) -> dict[str, tuple[list[int], bytes]]:
    """Run a model with no inputs; each output's shape and bytes as onnxruntime holds them.

    Bytes, not arrays, because onnxruntime's numpy conversion stops at bfloat16, float8 and int4.
    """
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    out = {}
    for name, value in zip(names, sess.run_with_ort_values(names, {}), strict=True):
        size = value.tensor_size_in_bytes()
        out[name] = (list(value.shape()), ctypes.string_at(value.data_ptr(), size) if size else b"")
    return out


def onnx_bytes(array: np.ndarray) -> bytes:
    """The bytes ONNX stores for an array: packed for sub-byte types."""
    dtype = from_numpy(array.dtype)
    return pack(array, dtype).tobytes() if is_packed(dtype) else np.ascontiguousarray(array).tobytes()


def check_and_run(path: Path, expected: dict[str, np.ndarray]) -> None:
    """onnx.checker accepts the file and onnxruntime returns each expected tensor bit for bit."""
    onnx.checker.check_model(str(path), full_check=True)
    got = ort_outputs(path)
    for name, want in expected.items():
        if want.dtype.kind == "c":
            assert name not in got  # onnxruntime cannot return complex tensors
            continue
        shape, data = got[name]
        assert shape == list(want.shape), name
        assert data == onnx_bytes(want), name


def save_model(
    path: Path, nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray], opset: int = 17
) -> None:
    graph = helper.make_graph(
        nodes, "test", inputs, outputs, initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
