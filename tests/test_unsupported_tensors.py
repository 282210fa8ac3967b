"""Checkpoints holding tensors ckptkit recognises but cannot hold (quantized, sparse, complex32):
the rest stays readable, and every command says what it did with them."""

from __future__ import annotations

import json

import jsonschema
import pytest

import ckptkit
from ckptkit.core.errors import UnsafeCheckpointError, UnsupportedError
from ckptkit.diffing import schema
from tests.conftest import assert_one_line_error
from tests.pickle_payloads import PAYLOADS, torch_zip_with

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torch warns on quantized and complex32 tensors

UNREADABLE = ["layer.q", "layer.qc", "sp", "z"]
EXCLUDE_ALL = ["--exclude", "layer", "--exclude", "sp", "--exclude", "z"]


def _readable() -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 4, generator=g),
        "b": torch.arange(5, dtype=torch.int64),
        "h": torch.randn(6, generator=g).to(torch.bfloat16),
    }


@pytest.fixture
def mixed(tmp_path):
    """A state dict with three plain tensors among quantized, sparse and complex32 ones."""
    g = torch.Generator().manual_seed(1)
    state = {
        "w": None,
        "layer.q": torch.quantize_per_tensor(torch.randn(4, generator=g), 0.1, 3, torch.qint8),
        "layer.qc": torch.quantize_per_channel(
            torch.randn(2, 3, generator=g), torch.tensor([0.1, 0.2]), torch.tensor([0, 1]), 0, torch.quint8
        ),
        "b": None,
        "sp": torch.eye(3).to_sparse(),
        "h": None,
        "z": torch.zeros(2, dtype=torch.complex32),
    }
    state.update(_readable())
    path = tmp_path / "mixed.pt"
    torch.save(state, path)
    return path


def test_the_rest_is_listed_and_read_while_the_others_say_why(mixed, tmp_path):
    with ckptkit.load(mixed) as ckpt:
        assert ckpt.names() == ["w", "b", "h"]
        assert list(ckpt.unsupported) == UNREADABLE
        for name, want in _readable().items():
            assert torch.equal(ckpt.read_torch(name), want), name
        why = ckpt.unsupported
    assert why["layer.q"].startswith("a quantized tensor (qint8, per_tensor_affine) of shape [4]")
    assert why["layer.qc"].startswith("a quantized tensor (quint8, per_channel_affine) of shape [2, 3]")
    assert "dequantize()" in why["layer.q"] and "dequantize()" in why["layer.qc"]
    assert why["sp"].startswith("a sparse tensor (sparse_coo) of shape [3, 3]") and "to_dense()" in why["sp"]
    assert why["z"].startswith("a complex32 tensor of shape [2]") and ".to(torch.complex64)" in why["z"]
    report = ckptkit.inspect(mixed)
    assert [t["name"] for t in report["tensors"]] == ["w", "b", "h"] and report["tensor_count"] == 3
    assert report["unsupported"] == why

    legacy, bare = tmp_path / "legacy.pt", tmp_path / "bare.pt"
    torch.save({"w": torch.ones(2), "sp": torch.eye(2).to_sparse()}, legacy, _use_new_zipfile_serialization=False)
    torch.save(torch.eye(2).to_sparse_csr(), bare)
    with ckptkit.load(legacy) as ckpt:
        assert ckpt.names() == ["w"] and list(ckpt.unsupported) == ["sp"]
    with ckptkit.load(bare) as ckpt:
        assert ckpt.names() == [] and ckpt.unsupported["tensor"].startswith("a sparse tensor (sparse_csr)")


def test_inspect_marks_them_in_every_view(mixed, cli):
    text = cli("inspect", mixed)
    assert text.code == 0, text.stderr
    assert "tensors: 3 (and 4 ckptkit cannot read)" in text.stdout
    assert "UNSUPPORTED: 4 tensor(s) ckptkit cannot read" in text.stdout
    assert "  layer.qc: a quantized tensor (quint8, per_channel_affine)" in text.stdout
    tree = cli("inspect", "--tree", mixed)
    assert tree.code == 0, tree.stderr
    assert "qc  UNSUPPORTED: a quantized tensor (quint8" in tree.stdout
    assert "sp  UNSUPPORTED: a sparse tensor" in tree.stdout
    data = json.loads(cli("inspect", "--json", mixed).stdout)
    assert list(data["unsupported"]) == UNREADABLE
    assert "z" not in {t["name"] for t in data["tensors"]}


def test_convert_refuses_until_they_are_left_out_then_copies_the_rest_bit_exactly(mixed, tmp_path, cli):
    dst = tmp_path / "out.pt"
    refused = cli("convert", mixed, dst)
    assert_one_line_error(
        refused, "tensor 'layer.q' is a quantized tensor", "dequantize()", "--exclude 'layer.q'", "1 of 4 such tensors"
    )
    assert not dst.exists()
    partly = cli("convert", mixed, dst, "--exclude", "layer")
    assert_one_line_error(partly, "tensor 'sp' is a sparse tensor", "to_dense()", "--exclude 'sp'", "1 of 2")
    assert not dst.exists()
    with pytest.raises(UnsupportedError, match=r"tensor 'z' is a complex32 tensor"):
        ckptkit.convert(mixed, dst, select=["w", "z"])

    done = cli("convert", mixed, dst, *EXCLUDE_ALL, "--json")
    assert done.code == 0, done.stderr
    receipt = json.loads(done.stdout)
    assert receipt["verified"] and sorted(receipt["dropped"]) == sorted(UNREADABLE)
    back = torch.load(dst, weights_only=True)
    want = _readable()
    assert list(back) == list(want)
    for name, t in want.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name

    selected = tmp_path / "selected.safetensors"
    assert cli("convert", mixed, selected, "--select", "w", "--select", "h").code == 0
    with ckptkit.load(selected) as ckpt:
        assert ckpt.names() == ["w", "h"] and not ckpt.unsupported


def test_diff_reports_them_as_not_comparable_and_thresholds_fail_on_them(mixed, tmp_path, cli):
    dense = tmp_path / "dense.pt"
    torch.save({**_readable(), "layer.q": torch.zeros(4)}, dense)
    result = cli("diff", mixed, dense)
    assert result.code == 0, result.stderr
    assert "matched 4 (4 exact)" in result.stdout and "not comparable (ckptkit cannot read): 4" in result.stdout
    assert "  layer.q  A: a quantized tensor (qint8" in result.stdout
    data = json.loads(cli("diff", mixed, dense, "--json").stdout)
    jsonschema.validate(data, schema(), cls=jsonschema.Draft202012Validator)
    by_name = {t["name"]: t for t in data["tensors"]}
    assert data["summary"]["unsupported"] == 4 and data["summary"]["compared"] == 3
    q = by_name["layer.q"]
    assert q["status"] == "unsupported" and q["unsupported_a"].startswith("a quantized tensor")
    assert (q["dtype_b"], q["shape_b"], q["unsupported_b"], q["metrics"]) == ("float32", [4], None, None)
    assert by_name["sp"]["b_name"] is None and by_name["w"]["status"] == "compared"
    gated = cli("diff", mixed, dense, "--fail-on", "max_abs>0", "--json")
    assert gated.code == 1
    violations = json.loads(gated.stdout)["thresholds"]["violations"]
    assert {(v["tensor"], v["condition"]) for v in violations} == {(n, "unsupported") for n in UNREADABLE}
    scoped = ckptkit.diff(mixed, dense, tolerance=["layer.q:rel_l2<1e-3"])
    assert [(v.tensor, v.condition) for v in scoped.violations] == [("layer.q", "layer.q:unsupported")]


def test_verify_fails_on_each_and_hash_needs_them_excluded(mixed, tmp_path, cli):
    report = cli("verify", mixed, "--json")
    assert report.code == 1
    data = json.loads(report.stdout)
    found = [(f["check"], f["severity"], f["tensor"]) for f in data["findings"]]
    assert found == [("tensor.unsupported", "error", n) for n in UNREADABLE]
    assert "tensor 'sp' is a sparse tensor" in cli("verify", mixed).stdout

    assert_one_line_error(cli("hash", mixed), "tensor 'layer.q' is a quantized tensor", "--exclude 'layer.q'")
    manifest = tmp_path / "m.json"
    hashed = cli("hash", mixed, *EXCLUDE_ALL, "-o", manifest)
    assert hashed.code == 0, hashed.stderr
    saved = json.loads(manifest.read_text())
    assert list(saved["tensors"]) == ["w", "b", "h"] and saved["excluded"] == ["layer", "sp", "z"]
    converted = tmp_path / "rest.safetensors"
    ckptkit.convert(mixed, converted, exclude=["layer", "sp", "z"])
    assert cli("verify", converted, "--manifest", manifest).code == 0
    assert json.loads(cli("hash", converted).stdout)["root"] == saved["root"]


def test_shards_holding_them_are_read_and_verified(tmp_path, cli):
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save({"a": torch.ones(2)}, folder / "pytorch_model-00001-of-00002.bin")
    q = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
    torch.save({"b": torch.full((3,), 2.0), "q": q}, folder / "pytorch_model-00002-of-00002.bin")
    weight_map = {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}
    weight_map["q"] = "pytorch_model-00002-of-00002.bin"
    index = {"metadata": {"total_size": 24}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with ckptkit.load(folder) as ckpt:
        assert ckpt.names() == ["a", "b"] and list(ckpt.unsupported) == ["q"]
    data = json.loads(cli("verify", folder, "--json").stdout)
    assert [(f["check"], f["tensor"]) for f in data["findings"]] == [("tensor.unsupported", "q")]
    assert json.loads(cli("hash", folder, "--exclude", "q").stdout)["tensor_count"] == 2


def test_a_dangerous_global_beside_them_is_still_refused(mixed, tmp_path, cli):
    marker = tmp_path / "ran"
    hostile = torch_zip_with(mixed, tmp_path / "hostile.pt", PAYLOADS["os.system"].ops(marker))
    with pytest.raises(UnsafeCheckpointError, match=r"os\.system"):
        ckptkit.load(hostile)
    assert_one_line_error(cli("inspect", hostile), "os.system")
    checks = {f["check"] for f in json.loads(cli("verify", hostile, "--json").stdout)["findings"]}
    assert "pickle.call" in checks
    assert not marker.exists()
