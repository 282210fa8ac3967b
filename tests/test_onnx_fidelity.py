"""The fidelity zoo: models exported by torch.onnx's own exporters, patched with tuned weights, run in onnxruntime.

Every model of :mod:`tests.onnx_zoo` is exported (legacy with and without constant folding, dynamo
with and without its optimizer) from BASE weights; NEW weights (BASE plus noise) are written into
the exported graph. With ``--base`` the output must equal torch's within 1e-5. Without it (names
only, with or without ``--allow-partial``) ckptkit may refuse, but a run that succeeds must compute
the same; and for the exporters that rename and fold, the old invocations must refuse.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import ckptkit
from tests.conftest import assert_one_line_error, run_cli
from tests.onnx_zoo import EXPORTERS, MODELS, Exported, export_all, run_onnx

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")

ATOL = 1e-5  # float32 outputs of graphs this small agree to ~3e-7; a stale weight moves them by >1e-2

# (model, exporter) pairs torch 2.13's exporters cannot export, with the start of their error.
# None today: every model exports with every exporter.
EXPORT_FAILURES: dict[tuple[str, str], str] = {}

# Exporters that rename, transpose, pack or fold: patching by name alone must refuse.
RENAMING = ("legacy-fold", "dynamo-opt")

CASES = [(m, e) for m in MODELS for e in EXPORTERS]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Each model exported once for all exporters, on first use."""
    folder = tmp_path_factory.mktemp("zoo")
    cache: dict[str, dict[str, Exported]] = {}

    def get(model: str, exporter: str) -> Exported:
        if model not in cache:
            cache[model] = export_all(model, folder)
        exported = cache[model][exporter]
        expected = EXPORT_FAILURES.get((model, exporter))
        if expected is None:
            assert not exported.error, exported.error
        else:
            assert exported.onnx is None and exported.error.startswith(expected), exported.error
        return exported

    return get


def patch(exported: Exported, out, **options) -> ckptkit.Receipt | ckptkit.CkptkitError:
    try:
        return ckptkit.convert(exported.new, out, force=True, options={"template": exported.onnx, **options})
    except ckptkit.CkptkitError as err:
        return err


@pytest.mark.parametrize(("model", "exporter"), CASES)
def test_base_derives_every_tensor_and_the_model_computes_like_torch(zoo, tmp_path, model, exporter):
    exported = zoo(model, exporter)
    if exported.onnx is None:
        return  # recorded in EXPORT_FAILURES and checked by the fixture
    out = tmp_path / "patched.onnx"
    receipt = patch(exported, out, base=exported.base)
    assert isinstance(receipt, ckptkit.Receipt), receipt
    assert receipt.verified
    onnx.checker.check_model(str(out), full_check=True)
    assert np.abs(exported.stale - exported.want).max() > 1e-2  # tuning changed the function
    np.testing.assert_allclose(run_onnx(out, exported.x), exported.want, rtol=0, atol=ATOL)
    # Every float initializer the graph reads as a weight is listed with its derivation.
    template = onnx.load(str(exported.onnx), load_external_data=False)
    weights = {i.name for i in template.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 1}
    listed = set(receipt.transformed)
    assert {n for n in weights if _reads_as_weight(template, n)} <= listed
    assert any("not used by inference" in n for n in receipt.notes) == (model == "cnn-bn")


def _reads_as_weight(model: onnx.ModelProto, name: str) -> bool:
    weight_inputs = {"Conv": {1, 2}, "Gemm": {1, 2}, "MatMul": {1}, "LSTM": {1, 2, 3}, "GRU": {1, 2, 3}}
    return any(
        i in weight_inputs.get(node.op_type, ())
        for node in model.graph.node
        for i, n in enumerate(node.input)
        if n == name
    )


@pytest.mark.parametrize(("model", "exporter"), CASES)
@pytest.mark.parametrize("partial", [False, True], ids=["names", "allow-partial"])
def test_without_base_a_run_that_succeeds_computes_like_torch(zoo, tmp_path, model, exporter, partial):
    exported = zoo(model, exporter)
    if exported.onnx is None:
        return
    out = tmp_path / "patched.onnx"
    result = patch(exported, out, allow_partial=partial)
    if isinstance(result, ckptkit.CkptkitError):
        assert "--base" in str(result), result
        assert exporter in RENAMING, f"{exporter} keeps names: patching by name should work ({result})"
        return
    assert exporter not in RENAMING, "a renaming/folding exporter was patched by name and exited 0"
    np.testing.assert_allclose(run_onnx(out, exported.x), exported.want, rtol=0, atol=ATOL)


def test_the_folded_cnn_refuses_by_name_on_the_command_line_and_points_at_base(zoo, tmp_path):
    exported = zoo("cnn-bn", "dynamo-opt")  # keeps the name c1.weight for the folded weight
    out = tmp_path / "out.onnx"
    result = run_cli("convert", exported.new, out, "--template", exported.onnx, "--allow-partial")
    assert_one_line_error(result, "BatchNorms b1, b2, b3 have no BatchNormalization node", "--base")
    # Leaving the BatchNorms out does not make c1.weight hold the raw weight.
    for exclude in ([], ["b1", "b2", "b3"]):
        with pytest.raises(ckptkit.CkptkitError, match="BatchNorms b1, b2, b3 have no BatchNormalization node"):
            ckptkit.convert(exported.new, out, exclude=exclude, options={"template": exported.onnx})
    assert not out.exists()
    result = run_cli("convert", exported.new, out, "--template", exported.onnx, "--base", exported.base)
    assert result.code == 0, result.stderr
    assert "c1.weight: c1.weight with BatchNorm b1 folded in (eps 1e-05) (bit-exact on BASE" in result.stdout
    assert "not used by inference (3): b1.num_batches_tracked" in result.stdout
    np.testing.assert_allclose(run_onnx(out, exported.x), exported.want, rtol=0, atol=ATOL)


def test_renamed_and_transposed_weights_get_the_right_remedy_never_dtype(zoo, tmp_path):
    exported = zoo("transformer", "legacy-fold")
    template = onnx.load(str(exported.onnx))
    b_of_matmul = {n.input[1] for n in template.graph.node if n.op_type == "MatMul"}
    inits = {i.name: tuple(i.dims) for i in template.graph.initializer}
    linear1 = next(n for n in b_of_matmul if inits.get(n) == (16, 32))
    out = tmp_path / "out.onnx"
    result = run_cli(
        "convert", exported.new, out, "--template", exported.onnx, "--rename", f"layer.linear1.weight={linear1}"
    )
    assert_one_line_error(result, linear1, "float32 [16, 32]", "float32 [32, 16]", "transposed", "--base")
    assert "--dtype" not in result.stderr
