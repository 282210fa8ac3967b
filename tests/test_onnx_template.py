import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

import ckptkit
from ckptkit.formats.onnx import template as template_module
from tests.conftest import FIXTURES, assert_one_line_error, run_cli
from tests.helpers import assert_same_tensors, sample_array
from tests.onnx_util import save_model, session

rng = np.random.default_rng(7)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def t(a):
    return torch.from_numpy(np.asarray(a))


def _gemm():
    nodes = [helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1, alpha=0.5)]
    x = f32(2, 6)

    def ref(w):
        return (F.linear(t(x), t(w["fc.weight"])) * 0.5 + t(w["fc.bias"])).numpy()

    return nodes, x, [2, 3], {"fc.weight": f32(3, 6), "fc.bias": f32(3)}, ref


def _conv():
    nodes = [helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])]
    x = f32(1, 3, 8, 8)

    def ref(w):
        return F.conv2d(t(x), t(w["conv.weight"]), t(w["conv.bias"]), stride=2, padding=1).numpy()

    return nodes, x, [1, 5, 4, 4], {"conv.weight": f32(5, 3, 3, 3), "conv.bias": f32(5)}, ref


def _batchnorm():
    names = ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
    nodes = [helper.make_node("BatchNormalization", ["x", *names], ["y"], epsilon=1e-5)]
    x = f32(2, 4, 3, 3)

    def ref(w):
        return F.batch_norm(
            t(x), t(w["bn.running_mean"]), t(w["bn.running_var"]), t(w["bn.weight"]), t(w["bn.bias"]), eps=1e-5
        ).numpy()

    weights = {
        "bn.weight": f32(4),
        "bn.bias": f32(4),
        "bn.running_mean": f32(4),
        "bn.running_var": np.abs(f32(4)) + 0.1,
    }
    return nodes, x, [2, 4, 3, 3], weights, ref


def _layernorm():
    nodes = [helper.make_node("LayerNormalization", ["x", "ln.weight", "ln.bias"], ["y"], axis=-1, epsilon=1e-5)]
    x = f32(2, 5, 8)

    def ref(w):
        return F.layer_norm(t(x), (8,), t(w["ln.weight"]), t(w["ln.bias"]), eps=1e-5).numpy()

    return nodes, x, [2, 5, 8], {"ln.weight": f32(8), "ln.bias": f32(8)}, ref


@pytest.mark.parametrize("build", [_gemm, _conv, _batchnorm, _layernorm], ids=lambda b: b.__name__[1:])
@pytest.mark.parametrize("external", [False, True], ids=["inline", "external"])
def test_patched_model_computes_with_the_new_weights(tmp_path, build, external):
    nodes, x, out_shape, old, ref = build()
    model = tmp_path / "model.onnx"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))]
    save_model(model, nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], old)
    new = {k: (np.abs(v) + 0.2 if "var" in k else f32(*v.shape)) for k, v in old.items()}
    ckptkit.save(new, tmp_path / "new.safetensors")
    out = tmp_path / "patched.onnx"
    if external:
        receipt = ckptkit.convert(tmp_path / "new.safetensors", out, options={"template": model, "external_data": True})
        assert receipt.verified and receipt.notes[0] == f"replaced {len(old)} of {len(old)} tensors of {model}"
    else:  # as a user types it
        result = run_cli("convert", tmp_path / "new.safetensors", out, "--template", model)
        assert result.code == 0, result.stderr
        assert f"replaced {len(old)} of {len(old)} tensors" in result.stdout
    onnx.checker.check_model(str(out), full_check=True)
    y_old = session(model).run(None, {"x": x})[0]
    y_new = session(out).run(None, {"x": x})[0]
    np.testing.assert_allclose(y_old, ref(old), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_new, ref(new), rtol=1e-5, atol=1e-5)
    with ckptkit.load(out) as back:
        assert_same_tensors(new, back)
    written = onnx.load(str(out), load_external_data=False)
    assert (written.ir_version, written.opset_import[0].version) == (8, 17)  # the template's own


def test_subgraph_initializers_and_constants_are_patched(tmp_path):
    src = FIXTURES / "onnx" / "if_loop_subgraphs_and_constants.onnx"
    with ckptkit.load(src) as ckpt:
        new = {n: np.array(ckpt.read_tensor(n)) for n in ckpt.names()}
    new["choose/then_branch/w_shared"] = np.array([10.0, 20.0, 30.0], np.float32)
    new["w_shared"] = np.array([-5.0, -6.0, -7.0], np.float32)
    new["then_c"] = np.full(3, 0.5, np.float32)
    new["step"] = np.array(0.25, np.float32)
    new["trip"] = np.array(2, np.int64)
    new["axes"] = np.array([-3], np.int64)
    new["weights_f"] = np.array([9.0, -9.0], np.float32)
    out = tmp_path / "patched.onnx"
    receipt = ckptkit.save(new, out, template=src)
    assert "replaced 9 of 9 tensors" in receipt.notes[0]
    sess = session(out)
    np.testing.assert_allclose(sess.run(None, {"flag": np.array(True)})[0], [10.5 + 0.5, 20.5 + 0.5, 30.5 + 0.5])
    np.testing.assert_allclose(sess.run(None, {"flag": np.array(False)})[0], [-6.0, -7.0, -8.0])
    with ckptkit.load(out) as back:
        assert_same_tensors(new, back)
        assert back.info("step").location.endswith("(value_float)")
        assert back.metadata["onnx:not_read"] == "words (Constant strings)"


def _gemm_model(tmp_path, w=None, b=None):
    w = f32(3, 4) if w is None else w
    b = f32(3) if b is None else b
    path = tmp_path / "gemm.onnx"
    io = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[0]]),
    ]
    save_model(path, [helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)], io[:1], io[1:], {"W": w, "B": b})
    return path


def test_rename_pairs_files_and_json(tmp_path):
    model = _gemm_model(tmp_path)
    new = {"layer.weight": f32(3, 4), "layer.bias": f32(3)}
    src = tmp_path / "new.safetensors"
    ckptkit.save(new, src)
    lines = tmp_path / "names.txt"
    lines.write_text("# checkpoint = model\nlayer.weight = W\n\nlayer.bias=B\n")
    as_json = tmp_path / "names.json"
    as_json.write_text(json.dumps({"layer.weight": "W", "layer.bias": "B"}))
    out = tmp_path / "out.onnx"
    for rename in (
        ["layer.weight=W", "layer.bias=B"],
        [lines],
        [str(as_json)],
        {"layer.weight": "W", "layer.bias": "B"},
    ):
        ckptkit.convert(src, out, force=True, options={"template": model, "rename": rename})
        with ckptkit.load(out) as back:
            assert_same_tensors({"W": new["layer.weight"], "B": new["layer.bias"]}, back)
    result = run_cli(
        "convert", src, out, "--template", model, "--force", "--rename", "layer.weight=W", "--rename", lines
    )
    assert result.code == 0, result.stderr


def test_partial_update_refused_naming_both_sides_then_allowed(tmp_path):
    model = _gemm_model(tmp_path)
    old_b = onnx.numpy_helper.to_array(onnx.load(str(model)).graph.initializer[1])
    src = tmp_path / "new.safetensors"
    new_w = f32(3, 4)
    ckptkit.save({"W": new_w, "extra.weight": f32(2)}, src)
    out = tmp_path / "out.onnx"
    result = run_cli("convert", src, out, "--template", model)
    assert_one_line_error(result, "gemm.onnx", "no place in the model (extra.weight)", "(B)", "--base", "--exclude")
    # --allow-partial keeps model initializers; it never drops a checkpoint tensor silently.
    result = run_cli("convert", src, out, "--template", model, "--allow-partial")
    assert_one_line_error(result, "gemm.onnx", "no place in the model (extra.weight)", "--exclude")
    assert not out.exists() and not list(tmp_path.glob(".ckptkit-tmp-*"))
    with pytest.raises(ckptkit.CkptkitError, match=r"partial update: .*\(B\)\. Pass --allow-partial"):
        ckptkit.convert(src, out, exclude=["extra.weight"], options={"template": model})
    result = run_cli("convert", src, out, "--template", model, "--allow-partial", "--exclude", "extra.weight")
    assert result.code == 0, result.stderr
    assert "initializers kept from the model (1): B" in result.stdout
    assert "dropped (1): extra.weight" in result.stdout
    with ckptkit.load(out) as back:
        assert_same_tensors({"W": new_w, "B": old_b}, back)


@pytest.mark.parametrize(
    ("new", "fragments"),
    [
        (
            {"W": np.zeros((4, 3), np.float32), "B": np.zeros(3, np.float32)},
            ["'W'", "float32 [3, 4]", "float32 [4, 3]"],
        ),
        ({"W": np.zeros((3, 4), np.float16), "B": np.zeros(3, np.float32)}, ["'W'", "float16 [3, 4]", "--dtype"]),
    ],
    ids=["shape", "dtype"],
)
def test_shape_or_dtype_mismatch_is_a_one_line_error_and_nothing_is_written(tmp_path, new, fragments):
    model = _gemm_model(tmp_path)
    src = tmp_path / "new.safetensors"
    ckptkit.save(new, src)
    out = tmp_path / "out.onnx"
    assert_one_line_error(run_cli("convert", src, out, "--template", model, "--external-data"), "gemm.onnx", *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gemm.onnx", "new.safetensors"]


def test_bad_templates_and_options(tmp_path):
    src = tmp_path / "new.safetensors"
    ckptkit.save({"W": f32(3, 4)}, src)
    out = tmp_path / "out.onnx"
    model = _gemm_model(tmp_path)
    cases = [
        ({"template": tmp_path / "nope.onnx"}, "does not exist"),
        ({"template": src}, "not an ONNX model"),
        ({"rename": ["W=X"]}, "--rename needs --template"),
        ({"allow_partial": True}, "--allow-partial needs --template"),
        ({"template": model, "rename": ["Q=W"]}, "does not have: Q"),
        ({"template": model, "rename": ["justaname"]}, "CKPT_NAME=MODEL_NAME"),
        ({"template": model, "rename": ["W=B"]}, r"tensor .B. \(from .W.\): the model has float32 \[3\]"),
    ]
    for options, message in cases:
        with pytest.raises(ckptkit.CkptkitError, match=message):
            ckptkit.convert(src, out, options=options)
    assert_one_line_error(
        run_cli("convert", src, out, "--template", tmp_path / "nope.onnx"), "nope.onnx", "does not exist"
    )
    ckptkit.save({"other": f32(2)}, src, force=True)
    with pytest.raises(ckptkit.CkptkitError, match="no tensor of the checkpoint"):
        ckptkit.convert(src, out, options={"template": model})
    assert not out.exists() and not list(tmp_path.glob(".ckptkit-tmp-*"))


def test_template_with_external_data_gives_a_self_contained_model(tmp_path):
    import shutil

    for name in ("external_data.onnx", "external_data.onnx.data"):
        shutil.copy(FIXTURES / "onnx" / name, tmp_path / name)
    template = tmp_path / "external_data.onnx"
    with ckptkit.load(template) as ckpt:
        new = {
            n: sample_array(ti.dtype.name, ti.shape, seed=i)
            for i, (n, ti) in enumerate(zip(ckpt.names(), ckpt.tensor_infos(), strict=True))
        }
    new["bn.var"] = np.abs(new["bn.var"]) + 0.5
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.onnx"
    ckptkit.save(new, out, template=template)
    (tmp_path / "external_data.onnx.data").unlink()
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.onnx", "m.onnx.data"]
    onnx.checker.check_model(str(out), full_check=True)
    x = f32(2, 2, 4, 4)
    assert session(out).run(None, {"x": x})[0].shape == (2, 3)
    with ckptkit.load(out) as back:
        assert_same_tensors(new, back)
        where = back.info("fc.weight").location
        assert where.startswith("initializer, in m.onnx.data at offset ") and int(where.split()[-1]) % 4096 == 0


def test_template_past_the_protobuf_limit_moves_tensors_out(tmp_path, monkeypatch):
    monkeypatch.setattr(template_module, "PROTOBUF_LIMIT", 200)
    model = _gemm_model(tmp_path, w=f32(300, 4), b=f32(300))
    new = {"W": f32(300, 4), "B": f32(300)}
    receipt = ckptkit.save(new, tmp_path / "out.onnx", template=model)
    assert any("2 GiB" in n for n in receipt.notes)
    assert (tmp_path / "out.onnx.data").stat().st_size == 8192 + 1200  # W at 0, B at the next page
    x = f32(1, 4)
    np.testing.assert_allclose(
        session(tmp_path / "out.onnx").run(None, {"x": x})[0], x @ new["W"].T + new["B"], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "name", ["conv_bn_ln_gemm.onnx", "if_loop_subgraphs_and_constants.onnx", "every_dtype_raw_and_typed.onnx"]
)
def test_onnx_to_safetensors_and_back_into_the_model_is_bit_exact(tmp_path, name):
    src = FIXTURES / "onnx" / name
    with ckptkit.load(src) as ckpt:
        storable = [ti.name for ti in ckpt.tensor_infos() if ti.dtype.safetensors]
        originals = {n: np.array(ckpt.read_tensor(n)) for n in ckpt.names()}
    mid = tmp_path / "weights.safetensors"
    ckptkit.convert(src, mid, select=storable)
    out = tmp_path / "back.onnx"
    partial = len(storable) < len(originals)
    receipt = ckptkit.convert(mid, out, options={"template": src, "allow_partial": partial})
    assert receipt.verified
    with ckptkit.load(out) as back:
        assert_same_tensors(originals, back)
    if name == "conv_bn_ln_gemm.onnx":  # raw_data everywhere: the same values give the same bytes
        assert out.read_bytes() == src.read_bytes()
    onnx.checker.check_model(str(out), full_check=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the newer exporter needs onnxscript
def test_pytorch_checkpoint_into_the_model_torch_exported(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)
    ).eval()

    def randomize():
        with torch.no_grad():
            for tensor in net.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(torch.rand_like(tensor) + 0.1)

    randomize()
    x = torch.randn(2, 3, 8, 8)
    exported = tmp_path / "exported.onnx"
    torch.onnx.export(net, (x,), exported, dynamo=False, do_constant_folding=False, input_names=["x"])
    randomize()  # "fine-tuning"
    torch.save(net.state_dict(), tmp_path / "finetuned.pt")
    out = tmp_path / "deployed.onnx"
    result = run_cli(
        "convert", tmp_path / "finetuned.pt", out, "--template", exported, "--exclude", "*.num_batches_tracked"
    )
    assert result.code == 0, result.stderr
    with torch.no_grad():
        want = net(x).numpy()
    got = session(out).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(session(exported).run(None, {"x": x.numpy()})[0], want)


def test_update_a_model_with_external_data_in_place(tmp_path):
    import shutil

    for name in ("external_data.onnx", "external_data.onnx.data"):
        shutil.copy(FIXTURES / "onnx" / name, tmp_path / name)
    model = tmp_path / "external_data.onnx"
    with ckptkit.load(model) as ckpt:
        new = {n: np.array(ckpt.read_tensor(n)) * 2 for n in ckpt.names()}
    ckptkit.save(new, tmp_path / "new.safetensors")
    receipt = ckptkit.convert(tmp_path / "new.safetensors", model, force=True, options={"template": model})
    assert receipt.verified
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "external_data.onnx",
        "external_data.onnx.data",
        "new.safetensors",
    ]
    onnx.checker.check_model(str(model), full_check=True)
    with ckptkit.load(model) as back:
        assert_same_tensors(new, back)
