import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ckptkit
from ckptkit.core.errors import UnsafeCheckpointError
from ckptkit.verify import verify
from tests.conftest import FIXTURES


def _model(tmp_path, location=None, offset=0, length=None, bad_graph=False):
    """A one-node model whose weight lies in an external file at ``location``."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    init = numpy_helper.from_array(w, "w")
    if location is not None:
        init.ClearField("raw_data")
        init.data_location = TensorProto.EXTERNAL
        entries = {"location": location, "offset": str(offset)}
        if length is not None:
            entries["length"] = str(length)
        for k, v in entries.items():
            init.external_data.add(key=k, value=v)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    node = helper.make_node("MatMul", ["x", "nowhere" if bad_graph else "w"], ["y"])
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y], [init]), opset_imports=[helper.make_opsetid("", 17)]
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, w


def _found(report):
    return sorted((f.check, f.tensor) for f in report.findings if f.severity == "error")


def test_external_data_that_is_fine(tmp_path):
    path, w = _model(tmp_path, "weights.bin", offset=16, length=48)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16 + w.tobytes())
    report = verify([path])
    assert report.findings == [] and report.targets[0].tensors == 1


@pytest.mark.parametrize(
    ("offset", "length", "data_bytes", "check"),
    [
        (0, None, 44, "onnx.external-truncated"),  # no length given, file 4 bytes short
        (8, 48, 52, "onnx.external-truncated"),
        (0, 40, 48, "onnx.external"),  # length too small for float32 [3, 4]
        (-4, None, 48, "onnx.external"),
    ],
)
def test_verify_and_reading_judge_external_spans_alike(tmp_path, offset, length, data_bytes, check):
    path, w = _model(tmp_path, "weights.bin", offset=offset, length=length)
    padding = b"\0" * max(offset, 0)
    (tmp_path / "weights.bin").write_bytes((padding + w.tobytes())[:data_bytes])
    findings = [f for f in verify([path]).findings if f.check.startswith("onnx.external")]
    with pytest.raises(ckptkit.CkptkitError) as refused:
        ckptkit.load(path).close()
    assert [(f.check, f.message) for f in findings] == [(check, refused.value.message)]


def test_external_location_leaving_the_folder_is_not_opened(tmp_path):
    inner = tmp_path / "m"
    inner.mkdir()
    path, w = _model(inner, "../secret.bin")
    (tmp_path / "secret.bin").write_bytes(w.tobytes())
    assert ("onnx.external-escape", "w") in _found(verify([path]))


def test_missing_and_truncated_external_data(tmp_path):
    path, w = _model(tmp_path, "weights.bin")
    assert ("onnx.external", "w") in _found(verify([path]))
    (tmp_path / "weights.bin").write_bytes(w.tobytes()[:-4])
    assert ("onnx.external-truncated", "w") in _found(verify([path]))


def test_onnx_checker_rejection_is_a_finding(tmp_path):
    path, _ = _model(tmp_path, bad_graph=True)
    report = verify([path])
    assert [(f.check, f.severity) for f in report.findings] == [("onnx.checker", "error")]
    assert "nowhere" in report.findings[0].message
    onnx.checker.check_model(str(_model(tmp_path)[0]))  # the same model with its input defined is valid


@pytest.mark.parametrize("path", sorted((FIXTURES / "onnx").glob("*.onnx")), ids=lambda p: p.name)
def test_onnx_fixtures_pass(path):
    report = verify([path])
    assert _found(report) == [] and "onnx" in report.targets[0].groups


@pytest.mark.parametrize(
    ("location", "escapes"),
    [("/etc/hostname", True), ("../secret.bin", True), ("out.bin", True), ("sub/../in.bin", False)],
)
def test_verify_and_reading_judge_an_external_location_alike(tmp_path, location, escapes):
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    path, w = _model(folder, location)
    (tmp_path / "secret.bin").write_bytes(w.tobytes())
    (folder / "in.bin").write_bytes(w.tobytes())
    (folder / "out.bin").symlink_to(tmp_path / "secret.bin")
    findings = [(f.check, f.message) for f in verify([path]).findings if f.check.startswith("onnx.external")]
    if not escapes:
        assert findings == []
        with ckptkit.load(path) as ckpt:
            assert np.array_equal(ckpt.read_tensor("w"), w)
        return
    with pytest.raises(UnsafeCheckpointError) as refused:
        ckptkit.load(path)
    assert findings == [("onnx.external-escape", f"{refused.value.message}; not opened")]
    assert "tensor 'w': external data location" in refused.value.message
    assert ("is an absolute path" if location.startswith("/") else "leads outside the model's folder") in (
        refused.value.message
    )
