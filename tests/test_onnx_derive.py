"""Each kind of derivation ``--template --base`` proves, and each case it must refuse.

The zoo (tests/test_onnx_fidelity.py) covers the exporters' defaults on whole models; these pin
one kind or one refusal each, on models small enough to export in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import ckptkit
from ckptkit.formats.onnx.derive.values import degenerate, ulp_distance, ulps_of
from tests.conftest import assert_one_line_error, run_cli
from tests.onnx_util import save_model, session
from tests.onnx_zoo import randomized, run_onnx, tuned

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


def export(net: nn.Module, args: tuple, path, **options) -> None:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, str(path), **{"dynamo": False, **options})


def exported(tmp_path, net: nn.Module, args: tuple, base: dict, new: dict, **options):
    """BASE.pt, NEW.pt and the model exported from BASE; ``net`` is left holding NEW."""
    net.eval().load_state_dict(base)
    export(net, args, tmp_path / "model.onnx", **options)
    torch.save(base, tmp_path / "base.pt")
    torch.save(new, tmp_path / "new.pt")
    net.load_state_dict(new)
    return tmp_path / "model.onnx", tmp_path / "base.pt", tmp_path / "new.pt"


def convert(tmp_path, template, base, new, **options):
    out = tmp_path / "out.onnx"
    receipt = ckptkit.convert(new, out, force=True, options={"template": template, "base": base, **options})
    return out, receipt


class CrossAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.attn(x, memory, memory, need_weights=False)[0]


def test_sliced_packed_attention_projection(tmp_path):
    # Query and memory differ, so torch splits in_proj_weight: q rows 0:16, k and v rows 16:48,
    # each transposed for MatMul; constant folding stores the pieces.
    torch.manual_seed(0)
    net = CrossAttention()
    base = randomized(net, 1)
    new = tuned(base, 2)
    args = (torch.randn(2, 5, 16), torch.randn(2, 7, 16))
    model, base_pt, new_pt = exported(tmp_path, net, args, base, new, input_names=["x", "memory"])
    out, receipt = convert(tmp_path, model, base_pt, new_pt)
    how = set(receipt.transformed.values())
    assert "attn.in_proj_weight[0:16, :] transposed" in how
    assert "attn.in_proj_weight[16:48, :] transposed" in how
    assert "attn.in_proj_bias[0:16]" in how and "attn.in_proj_bias[16:48]" in how
    with torch.no_grad():
        want = net(*args).numpy()
    got = session(out).run(None, {"x": args[0].numpy(), "memory": args[1].numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_float16_export_of_a_float32_checkpoint_is_cast_and_transposed(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    base = randomized(net, 1)
    new = tuned(base, 2)
    torch.save(base, tmp_path / "base.pt")
    torch.save(new, tmp_path / "new.pt")
    net.load_state_dict(base)
    x = torch.randn(2, 3, 8)
    export(net.half().eval(), (x.half(),), tmp_path / "model.onnx")
    out, receipt = convert(tmp_path, tmp_path / "model.onnx", tmp_path / "base.pt", tmp_path / "new.pt")
    assert "0.weight transposed, cast float32 -> float16" in receipt.transformed.values()
    assert receipt.transformed["0.bias"] == "same name, cast float32 -> float16"
    with ckptkit.load(out) as back:
        np.testing.assert_array_equal(back.read_tensor("0.bias"), new["0.bias"].half().numpy())
    net.load_state_dict({k: v.half() for k, v in new.items()})
    with torch.no_grad():
        want = net(x.half()).float().numpy()
    got = run_onnx(out, x.half().numpy()).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-2)  # float16 arithmetic on both sides


def _scaled_attention_graph(tmp_path, w_in: np.ndarray, name: str, factor: float):
    """q = x @ (W_q^T * factor), k = x @ W_k^T, as an optimizer that folds attention's scale leaves them.

    The product is taken in float64 and rounded once, as a folding that keeps the factor in double does.
    """
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])
    nodes = [
        helper.make_node("MatMul", ["x", "q_scaled"], ["q"]),
        helper.make_node("MatMul", ["x", "k_t"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"]),
        helper.make_node("MatMul", ["q", "kt"], ["y"]),
    ]
    inits = {
        "q_scaled": (w_in[:8].T.astype(np.float64) * factor).astype(np.float32),
        "k_t": np.ascontiguousarray(w_in[8:16].T),
    }
    save_model(tmp_path / name, nodes, [x], [y], inits)
    return tmp_path / name


@pytest.mark.parametrize("factor", [0.25, 8**-0.5], ids=["exact", "rounded"])
def test_scale_folded_into_a_chunk_of_a_packed_projection(tmp_path, factor):
    rng = np.random.default_rng(0)
    base = {"attn.in_proj_weight": rng.standard_normal((16, 8)).astype(np.float32)}
    new = {"attn.in_proj_weight": rng.standard_normal((16, 8)).astype(np.float32)}
    model = _scaled_attention_graph(tmp_path, base["attn.in_proj_weight"], "model.onnx", factor)
    ckptkit.save(base, tmp_path / "base.safetensors")
    ckptkit.save(new, tmp_path / "new.safetensors")
    out, receipt = convert(tmp_path, model, tmp_path / "base.safetensors", tmp_path / "new.safetensors")
    assert receipt.transformed["q_scaled"].startswith(f"attn.in_proj_weight[0:8, :] transposed, times {factor:.6}")
    assert receipt.transformed["k_t"] == "attn.in_proj_weight[8:16, :] transposed"
    w = new["attn.in_proj_weight"]
    x = rng.standard_normal((3, 8)).astype(np.float32)
    want = (x @ (w[:8].T * np.float32(factor))) @ (x @ w[8:16].T).T
    np.testing.assert_allclose(session(out).run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


class TwoNorms(nn.Module):
    """Two LayerNorms and two Linears equal at export: the legacy exporter shares them through Identity."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.LayerNorm(8), nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)
        with torch.no_grad():
            self.fc2.load_state_dict(self.fc1.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.b(self.fc1(self.a(x))))


@pytest.mark.parametrize("with_base", [True, False], ids=["base", "names"])
def test_identity_shared_initializers_are_untied_when_new_differs(tmp_path, with_base):
    torch.manual_seed(0)
    net = TwoNorms().eval()
    base = {k: v.clone() for k, v in net.state_dict().items()}  # as initialised: a == b, fc1 == fc2
    new = tuned(base, 2)
    x = torch.randn(2, 8)
    model, base_pt, new_pt = exported(tmp_path, net, (x,), base, new, input_names=["x"])
    assert {n.op_type for n in onnx.load(str(model)).graph.node} >= {"Identity"}
    out = tmp_path / "out.onnx"
    options = {"template": model, **({"base": base_pt} if with_base else {})}
    receipt = ckptkit.convert(new_pt, out, options=options)
    untied = {k: v for k, v in receipt.transformed.items() if "now a Constant of its own" in v}
    assert set(untied) == {"b.weight", "b.bias", "fc2.weight", "fc2.bias"}
    written = onnx.load(str(out))
    assert "Identity" not in {n.op_type for n in written.graph.node}
    onnx.checker.check_model(written, full_check=True)
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(session(out).run(None, {"x": x.numpy()})[0], want, rtol=0, atol=1e-5)
    with ckptkit.load(out) as back:
        np.testing.assert_array_equal(back.read_tensor("fc2.weight"), new["fc2.weight"].numpy())


def test_identity_shared_initializers_stay_shared_when_new_agrees(tmp_path):
    torch.manual_seed(0)
    net = TwoNorms().eval()
    base = {k: v.clone() for k, v in net.state_dict().items()}
    new = {k: v + 0.5 for k, v in base.items()}  # a == b and fc1 == fc2 still
    model, base_pt, new_pt = exported(tmp_path, net, (torch.randn(2, 8),), base, new)
    out, receipt = convert(tmp_path, model, base_pt, new_pt)
    assert receipt.transformed["fc2.weight"] == "same name; still shared with fc1.weight through Identity"
    assert "Identity" in {n.op_type for n in onnx.load(str(out)).graph.node}


def _dynamo(net: nn.Module, args: tuple, path) -> None:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, str(path), dynamo=True)


def test_tensors_the_optimizer_merged_must_stay_equal_in_new(tmp_path):
    # onnxscript's optimizer keeps one initializer for equal tensors, with no Identity to tell
    # which node read which: a NEW that makes them differ cannot be written into this graph.
    torch.manual_seed(0)
    net = TwoNorms().eval()
    base = {k: v.clone() for k, v in net.state_dict().items()}
    _dynamo(net, (torch.randn(2, 8),), tmp_path / "model.onnx")
    torch.save(base, tmp_path / "base.pt")
    torch.save({k: v + 0.5 for k, v in base.items()}, tmp_path / "same.pt")
    torch.save(tuned(base, 2), tmp_path / "new.pt")
    _, receipt = convert(tmp_path, tmp_path / "model.onnx", tmp_path / "base.pt", tmp_path / "same.pt")
    assert any(n.startswith("merged by the exporter, equal in NEW too (4): b.weight = a.weight") for n in receipt.notes)
    with pytest.raises(ckptkit.CkptkitError, match=r"equals 'a\.weight' in BASE .*\(the exporter merged them\)"):
        convert(tmp_path, tmp_path / "model.onnx", tmp_path / "base.pt", tmp_path / "new.pt")


class ConvPair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))


def test_batchnorms_alike_in_base_make_the_fold_unprovable(tmp_path):
    # Exported as initialised, both BatchNorms are the identity: BASE cannot tell which one a
    # weight holds, and NEW (after training) gives them different statistics.
    torch.manual_seed(0)
    net = ConvPair().eval()
    base = {k: v.clone() for k, v in net.state_dict().items()}
    new = tuned(base, 2)
    model, base_pt, new_pt = exported(tmp_path, net, (torch.randn(1, 3, 8, 8),), base, new)
    result = run_cli("convert", new_pt, tmp_path / "out.onnx", "--template", model, "--base", base_pt)
    assert_one_line_error(
        result, "BASE cannot tell how", "BatchNorm b1", "BatchNorm b2", "where the tensors involved differ"
    )
    assert not (tmp_path / "out.onnx").exists()


def _linear_pair(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    base = randomized(net, 1)
    new = tuned(base, 2)
    x = torch.randn(2, 3, 8)  # 3-D, so the exporter uses MatMul with the weight transposed
    model, base_pt, new_pt = exported(tmp_path, net, (x,), base, new)
    square = next(
        n.input[1]
        for n in onnx.load(str(model)).graph.node
        if n.op_type == "MatMul" and n.input[1].startswith("onnx::")
    )
    return net, x, model, base_pt, new_pt, square


def test_a_rename_onto_matmul_b_is_refused_even_when_square(tmp_path):
    net, x, model, base_pt, new_pt, square = _linear_pair(tmp_path)
    out = tmp_path / "out.onnx"
    renames = ["--rename", f"0.weight={square}"]
    result = run_cli("convert", new_pt, out, "--template", model, *renames, "--allow-partial")
    assert_one_line_error(result, f"{square!r} (from '0.weight') feeds MatMul as B", "transposed", "--base")
    assert "--dtype" not in result.stderr and not out.exists()
    result = run_cli("convert", new_pt, out, "--template", model, "--base", base_pt)
    assert result.code == 0, result.stderr
    assert f"{square}: 0.weight transposed" in result.stdout
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(run_onnx(out, x.numpy()), want, rtol=0, atol=1e-5)


def test_base_and_new_must_be_the_same_tensors(tmp_path):
    _, _, model, base_pt, new_pt, _ = _linear_pair(tmp_path)
    new = torch.load(new_pt)
    cases = {
        "extra": ({**new, "head.weight": torch.zeros(2)}, "NEW has tensors BASE lacks (head.weight)"),
        "half": (
            {**new, "0.weight": new["0.weight"].half()},
            "0.weight (float32 [8, 8] in BASE, float16 [8, 8] in NEW)",
        ),
        "missing": ({k: v for k, v in new.items() if k != "2.bias"}, "derives from 2.bias, which NEW lacks"),
    }
    for name, (tensors, message) in cases.items():
        torch.save(tensors, tmp_path / f"{name}.pt")
        with pytest.raises(ckptkit.CkptkitError, match=re.escape(message)):
            convert(tmp_path, model, base_pt, tmp_path / f"{name}.pt")
    with pytest.raises(ckptkit.CkptkitError, match="--rename and --base do not go together"):
        convert(tmp_path, model, base_pt, new_pt, rename=["a=b"])
    result = run_cli("convert", new_pt, tmp_path / "o.onnx", "--base", base_pt)
    assert_one_line_error(result, "--base needs --template")


def test_a_weight_no_tensor_explains_is_refused_unless_partial(tmp_path):
    rng = np.random.default_rng(0)
    w, extra = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((4, 4)).astype(np.float32)
    io_ = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])]
    out_ = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])]
    nodes = [
        helper.make_node("Gemm", ["x", "fc.weight"], ["h"], transB=1),
        helper.make_node("MatMul", ["h", "adapter"], ["y"]),
    ]
    save_model(tmp_path / "model.onnx", nodes, io_, out_, {"fc.weight": w, "adapter": extra})
    ckptkit.save({"fc.weight": w}, tmp_path / "base.safetensors")
    new_w = rng.standard_normal((4, 6)).astype(np.float32)
    ckptkit.save({"fc.weight": new_w}, tmp_path / "new.safetensors")
    args = ["convert", tmp_path / "new.safetensors", tmp_path / "o.onnx", "--template", tmp_path / "model.onnx"]
    result = run_cli(*args, "--base", tmp_path / "base.safetensors")
    assert_one_line_error(
        result, "read as weights derive from no tensor of BASE (adapter (MatMul input 1))", "--allow-partial"
    )
    result = run_cli(*args, "--base", tmp_path / "base.safetensors", "--allow-partial")
    assert result.code == 0, result.stderr
    assert "initializers kept from the model (1): adapter (MatMul input 1)" in result.stdout
    x = rng.standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_allclose(
        session(tmp_path / "o.onnx").run(None, {"x": x})[0], (x @ new_w.T) @ extra, rtol=1e-5, atol=1e-5
    )


def test_ulp_distance_counts_representable_numbers():
    one = np.array([1.0, -1.0, 0.0], np.float32)
    up = np.nextafter(one, np.float32(np.inf)).astype(np.float32)
    assert ulp_distance(one, one) == 0
    assert ulp_distance(one, up) == 1
    assert ulp_distance(np.array([0.0], np.float32), np.array([-0.0], np.float32)) == 0
    assert ulp_distance(np.array([-1e-45], np.float32), np.array([1e-45], np.float32)) == 2
    assert ulp_distance(np.array([np.nan], np.float32), np.array([1.0], np.float32)) > 1000
    assert ulp_distance(np.array([1.0], np.float16), np.array([1.0009766], np.float16)) == 1
    assert ulps_of(np.array([2.0**-23]), np.array([1.0]), np.dtype(np.float32)) == 1
    assert ulps_of(np.array([2.0**-23]), np.array([1e-3]), np.dtype(np.float32)) > 1000
    assert degenerate(np.zeros((3, 4), np.float32)) and degenerate(np.ones(1))
    assert not degenerate(np.array([0.0, -0.0], np.float32))  # different bits


class UpBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 6, 2, stride=2)
        self.bn = nn.BatchNorm2d(6, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.up(x))


def test_batchnorm_with_its_own_eps_folded_into_a_transposed_convolution(tmp_path):
    torch.manual_seed(0)
    net = UpBN().eval()
    base = randomized(net, 1, scale=0.05)  # small variances: eps 1e-3 is far from the default 1e-5
    base["bn.running_var"] = base["bn.running_var"] * 0 + 0.002
    new = tuned(base, 2)
    x = torch.randn(1, 4, 3, 3)
    net.load_state_dict(base)
    _dynamo(net, (x,), tmp_path / "model.onnx")
    torch.save(base, tmp_path / "base.pt")
    torch.save(new, tmp_path / "new.pt")
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    out, receipt = convert(tmp_path, tmp_path / "model.onnx", tmp_path / "base.pt", tmp_path / "new.pt")
    assert receipt.transformed["up.weight"].startswith("up.weight with BatchNorm bn folded in (eps 0.001) (bit-exact")
    net.load_state_dict(new)
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(run_onnx(out, x.numpy()), want, rtol=0, atol=1e-5)


def test_recurrent_biases_initialised_to_zero_are_found_by_their_layer(tmp_path):
    # All-zero blocks match every zero tensor of their shape; the layer's W names the module.
    torch.manual_seed(0)
    net = nn.GRU(4, 6, num_layers=2, bidirectional=True, batch_first=True)
    base = randomized(net, 1)
    for name in base:
        if name.startswith("bias_hh"):
            base[name] = torch.zeros_like(base[name])
    new = tuned(base, 2)
    x = torch.randn(2, 3, 4)
    model, base_pt, new_pt = exported(tmp_path, net, (x,), base, new)
    out, receipt = convert(tmp_path, model, base_pt, new_pt)
    assert any(v.endswith("bias_ih_l1_reverse, bias_hh_l1_reverse") for v in receipt.transformed.values())
    with torch.no_grad():
        want = net(x)[0].numpy()
    np.testing.assert_allclose(run_onnx(out, x.numpy()), want, rtol=0, atol=1e-5)
