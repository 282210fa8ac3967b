"""--layout keras|torch, proven by running the same architecture in both frameworks."""

import json

import numpy as np
import pytest

import ckptkit
from ckptkit.core.errors import UsageError
from ckptkit.layout import LayoutAmbiguityError
from tests.conftest import assert_one_line_error

pairs = pytest.importorskip("tests.keras_pairs")
torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
keras = pytest.importorskip("keras")

TOLERANCE = 1e-5
PAIR_IDS = [make.__name__ for make in pairs.PAIRS]


def _state_dict(pair) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in pair.torch_model.state_dict().items()}


def _save_state_dict(pair, path):
    safetensors_torch.save_file(_state_dict(pair), path)
    return path


def _keras_weights(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


@pytest.mark.parametrize("make", pairs.PAIRS, ids=PAIR_IDS)
def test_pytorch_weights_run_in_keras(tmp_path, make):
    pair = make()
    src = _save_state_dict(pair, tmp_path / "torch.safetensors")
    pair.keras_model.save(tmp_path / "template.keras")  # Keras's own random weights, replaced below
    want = pair.torch_out()

    ckptkit.convert(src, tmp_path / "k.weights.h5", layout="keras", layout_hints=pair.hints)
    pair.keras_model.load_weights(tmp_path / "k.weights.h5")
    assert np.abs(pair.keras_out() - want).max() <= TOLERANCE

    # A torch.save file keeps the modules' order, which legacy .h5 loading (by order) needs.
    torch.save(pair.torch_model.state_dict(), tmp_path / "model.pt")
    ckptkit.convert(tmp_path / "model.pt", tmp_path / "from_pt.h5", layout="keras", layout_hints=pair.hints)
    fresh = make()
    fresh.keras_model.load_weights(tmp_path / "from_pt.h5")
    assert np.abs(fresh.keras_out() - want).max() <= TOLERANCE

    fresh = make()
    fresh.keras_model.set_weights([np.zeros_like(w) for w in _keras_weights(fresh.keras_model)])
    receipt = ckptkit.convert(
        src,
        tmp_path / "k.h5",
        layout="keras",
        layout_hints=pair.hints,
        options={"template": tmp_path / "template.keras"},
    )
    assert receipt.verified and receipt.renamed
    fresh.keras_model.load_weights(tmp_path / "k.h5")
    assert np.abs(fresh.keras_out() - want).max() <= TOLERANCE


@pytest.mark.parametrize("make", pairs.PAIRS, ids=PAIR_IDS)
def test_keras_weights_run_in_pytorch(tmp_path, make):
    pair = make()
    # Small random values everywhere (biases and normalization statistics too); variances positive.
    rng = np.random.default_rng(5)
    pair.keras_model.set_weights(
        [
            (np.abs(rng.standard_normal(w.shape)) + 0.5 if w.ndim == 1 else 0.3 * rng.standard_normal(w.shape)).astype(
                w.dtype
            )
            for w in _keras_weights(pair.keras_model)
        ]
    )
    want = pair.keras_out()
    pair.keras_model.save(tmp_path / "k.h5")
    pair.keras_model.save_weights(tmp_path / "k.weights.h5")
    for src, ext in (("k.h5", "pt"), ("k.weights.h5", "safetensors")):
        out = tmp_path / f"{src}.{ext}"
        ckptkit.convert(tmp_path / src, out, layout="torch", layout_hints=pair.hints)
        state = torch.load(out, weights_only=True) if ext == "pt" else safetensors_torch.load_file(out)
        fresh = make()
        fresh.torch_model.load_state_dict(state, strict=True)
        assert np.abs(fresh.torch_out() - want).max() <= TOLERANCE, src


@pytest.mark.parametrize("make", [pairs.depthwise_separable, pairs.conv_transpose2d], ids=lambda m: m.__name__)
def test_template_layer_classes_settle_what_names_cannot(tmp_path, make):
    pair = make()
    src = _save_state_dict(pair, tmp_path / "torch.safetensors")
    pair.keras_model.save(tmp_path / "template.keras")
    if pair.name == "depthwise_separable":
        with pytest.raises(LayoutAmbiguityError, match="'dw=conv' or 'dw=depthwise'"):
            ckptkit.convert(src, tmp_path / "plain.weights.h5", layout="keras")
    else:  # same layout rule as a convolution, only the class name is in doubt
        receipt = ckptkit.convert(src, tmp_path / "plain.weights.h5", layout="keras")
        assert any("up2" in n and "conv_transpose" in n for n in receipt.notes)
    ckptkit.convert(src, tmp_path / "k.keras", layout="keras", options={"template": tmp_path / "template.keras"})
    loaded = keras.saving.load_model(tmp_path / "k.keras")
    assert (
        np.abs(pair.from_keras(keras.ops.convert_to_numpy(loaded(pair.to_keras(pair.x)))) - pair.torch_out()).max()
        <= TOLERANCE
    )


def test_round_trip_through_keras_restores_the_state_dict_bit_for_bit(tmp_path):
    sd = {}
    for make in (pairs.cnn_batchnorm, pairs.lstm, pairs.gru):
        pair = make()
        sd.update({f"{pair.name}.{k}": v for k, v in _state_dict(pair).items()})
    sd["lstm.lstm.bias_hh_l0"][:3] = -0.0
    safetensors_torch.save_file(sd, tmp_path / "sd.safetensors")
    hint = ["cnn_batchnorm.fc=flatten:5x4x4"]
    receipt = ckptkit.convert(tmp_path / "sd.safetensors", tmp_path / "k.h5", layout="keras", layout_hints=hint)
    assert "cnn_batchnorm.bn1.num_batches_tracked" in receipt.dropped
    assert receipt.renamed["cnn_batchnorm.bn1/moving_variance"] == "cnn_batchnorm.bn1.running_var"
    with ckptkit.load(tmp_path / "k.h5") as ckpt:
        assert "lstm.lstm/lstm_cell/bias" in ckpt.names() and "ckptkit:layout" in ckpt.metadata
    ckptkit.convert(tmp_path / "k.h5", tmp_path / "back.safetensors", layout="torch")
    back = safetensors_torch.load_file(tmp_path / "back.safetensors")
    assert back.keys() == sd.keys()
    for name, value in sd.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        assert back[name].view(-1).numpy().tobytes() == value.view(-1).numpy().tobytes(), name
    assert int(back["cnn_batchnorm.bn1.num_batches_tracked"]) == 7
    with ckptkit.load(tmp_path / "back.safetensors") as ckpt:
        assert "ckptkit:layout" not in ckpt.metadata and "keras:classes" not in ckpt.metadata


def test_round_trip_through_pytorch_restores_the_keras_file(tmp_path):
    pair = pairs.cnn_batchnorm()
    pair.keras_model.save(tmp_path / "k.h5")
    with ckptkit.load(tmp_path / "k.h5") as ckpt:
        want = {n: np.array(ckpt.read_tensor(n)) for n in ckpt.names()}
    ckptkit.convert(tmp_path / "k.h5", tmp_path / "t.safetensors", layout="torch", layout_hints=pair.hints)
    ckptkit.convert(tmp_path / "t.safetensors", tmp_path / "back.h5", layout="keras")
    with ckptkit.load(tmp_path / "back.h5") as ckpt:
        assert ckpt.names() == list(want)
        for name, value in want.items():
            assert ckpt.read_tensor(name).tobytes() == value.tobytes(), name
    fresh = pairs.cnn_batchnorm()
    fresh.keras_model.load_weights(tmp_path / "back.h5")
    assert np.array_equal(fresh.keras_out(), pair.keras_out())


@pytest.mark.parametrize(
    "make",
    [pairs.cnn_batchnorm, pairs.depthwise_separable, pairs.lstm, pairs.gru, *pairs.BIDIRECTIONAL, *pairs.ATTENTION],
    ids=lambda m: m.__name__,
)
def test_h5_through_a_pytorch_file_and_back_is_bit_exact(tmp_path, make):
    """A .pt file keeps no metadata: the way back relies on the rules (and the same hints)."""
    pair = make()
    pair.keras_model.save(tmp_path / "k.h5")
    with ckptkit.load(tmp_path / "k.h5") as ckpt:
        want = {n: np.array(ckpt.read_tensor(n)) for n in ckpt.names()}
    ckptkit.convert(tmp_path / "k.h5", tmp_path / "model.pt", layout="torch", layout_hints=pair.hints)
    ckptkit.convert(tmp_path / "model.pt", tmp_path / "back.h5", layout="keras", layout_hints=pair.hints)
    with ckptkit.load(tmp_path / "back.h5") as ckpt:
        assert ckpt.names() == list(want)
        for name, value in want.items():
            got = ckpt.read_tensor(name)
            assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), name
    fresh = make()
    fresh.keras_model.load_weights(tmp_path / "back.h5")
    assert np.array_equal(fresh.keras_out(), pair.keras_out())


def test_rules_alone_are_symmetric_without_the_record(tmp_path):
    """Without metadata (a plain state_dict), Keras -> PyTorch -> Keras still gives the same tensors."""
    pair = pairs.lstm()
    pair.keras_model.save_weights(tmp_path / "k.weights.h5")
    ckptkit.convert(tmp_path / "k.weights.h5", tmp_path / "t.safetensors", layout="torch")
    plain = safetensors_torch.load_file(tmp_path / "t.safetensors")
    assert not torch.any(plain["lstm.bias_hh_l1"])
    safetensors_torch.save_file(plain, tmp_path / "plain.safetensors")  # no ckptkit metadata
    ckptkit.convert(tmp_path / "plain.safetensors", tmp_path / "back.weights.h5", layout="keras")
    with ckptkit.load(tmp_path / "k.weights.h5") as a, ckptkit.load(tmp_path / "back.weights.h5") as b:
        assert sorted(a.names()) == sorted(b.names())
        for name in a.names():
            assert a.read_tensor(name).tobytes() == b.read_tensor(name).tobytes(), name


def test_plan_prints_every_rename_and_transpose_and_writes_nothing(tmp_path, cli):
    pair = pairs.cnn_batchnorm()
    src = _save_state_dict(pair, tmp_path / "sd.safetensors")
    result = cli(
        "convert", src, tmp_path / "out.h5", "--layout", "keras", "--layout-hint", "fc=flatten:5x4x4", "--plan"
    )
    assert result.code == 0, result.stderr
    assert "conv1.weight -> conv1/kernel [3, 3, 3, 4]" in result.stdout
    assert "transpose(2, 3, 1, 0)" in result.stdout
    assert "fc.weight -> fc/kernel [80, 3]" in result.stdout and "Flatten of 5x4x4" in result.stdout
    assert "bn1.num_batches_tracked: dropped" in result.stdout
    assert not (tmp_path / "out.h5").exists()
    plan = ckptkit.api.plan_layout(src, "keras", ["fc=flatten:5x4x4"])
    assert {s.out for s in plan.steps} >= {"bn2/moving_mean", "conv2/kernel", "fc/bias"}
    as_json = {s["out"]: s for s in json.loads(json.dumps([s.to_json() for s in plan.steps]))}
    assert as_json["conv1/kernel"]["in"] == ["conv1.weight"] and as_json["conv1/kernel"]["shape"] == [3, 3, 3, 4]


def test_ambiguous_tensors_ask_for_a_hint(tmp_path, cli):
    sd = {  # safetensors keeps names sorted: a_, b_, c_ keep the model's order
        "a_stem.weight": np.zeros((8, 1, 3, 3), np.float32),  # one input channel, or depthwise?
        "b_head.weight": np.zeros((10, 8 * 9), np.float32),  # after an 8-channel feature map
        "b_head.bias": np.zeros(10, np.float32),
        "c_proj.weight": np.zeros((4, 10), np.float32),  # Linear without bias, or Embedding?
    }
    ckptkit.save(sd, tmp_path / "sd.safetensors")
    result = cli("convert", tmp_path / "sd.safetensors", tmp_path / "out.h5", "--layout", "keras")
    assert_one_line_error(result, "'a_stem=conv' or 'a_stem=depthwise'", "'c_proj=dense' or 'c_proj=embedding'")
    assert not (tmp_path / "out.h5").exists()
    with pytest.raises(LayoutAmbiguityError, match="b_head=flatten:8xHxW"):
        ckptkit.convert(
            tmp_path / "sd.safetensors", tmp_path / "out.h5", layout="keras", layout_hints=["a_*=conv", "c_proj=dense"]
        )
    hints = ["a_stem=conv", "c_proj=embedding", "b_head=flatten:8x3x3"]
    receipt = ckptkit.convert(tmp_path / "sd.safetensors", tmp_path / "out.h5", layout="keras", layout_hints=hints)
    assert receipt.renamed["c_proj/embeddings"] == "c_proj.weight"
    with pytest.raises(UsageError, match="unknown kind 'sideways'"):
        ckptkit.convert(
            tmp_path / "sd.safetensors", tmp_path / "x.h5", layout="keras", layout_hints=["a_stem=sideways"]
        )


def test_gru_without_reset_after_has_no_pytorch_equivalent(tmp_path):
    model = keras.Sequential([keras.Input((3, 2)), keras.layers.GRU(4, reset_after=False, name="g")])
    model.save_weights(tmp_path / "g.weights.h5")
    with pytest.raises(LayoutAmbiguityError, match="reset_after=False"):
        ckptkit.convert(tmp_path / "g.weights.h5", tmp_path / "g.safetensors", layout="torch")


@pytest.mark.parametrize("ext", [".weights.h5", ".h5", ".keras"])
@pytest.mark.parametrize("make", pairs.BIDIRECTIONAL, ids=lambda m: m.__name__)
def test_bidirectional_round_trip_through_keras_is_bit_exact(tmp_path, make, ext):
    pair = make()
    module = next(iter(pair.torch_model.state_dict())).split(".")[0]
    with torch.no_grad():  # a sum with zeros would make -0.0 +0.0
        getattr(pair.torch_model, module).bias_hh_l0_reverse[:2] = -0.0
    sd = _state_dict(pair)
    torch.save(sd, tmp_path / "sd.pt")
    template = {}
    if ext == ".keras":  # an archive needs the model's config
        pair.keras_model.save(tmp_path / "template.keras")
        template = {"template": tmp_path / "template.keras"}
    receipt = ckptkit.convert(tmp_path / "sd.pt", tmp_path / f"k{ext}", layout="keras", options=template)
    cls = {"lstm": "lstm", "gru": "gru", "rnn": "simple_rnn"}[module]
    assert receipt.renamed[f"{module}/backward_{cls}/{cls}_cell/kernel"] == f"{module}.weight_ih_l0_reverse"
    fresh = make()
    if ext == ".keras":
        fresh.keras_model = keras.saving.load_model(tmp_path / f"k{ext}")
    else:
        fresh.keras_model.load_weights(tmp_path / f"k{ext}")
    assert np.abs(fresh.keras_out() - pair.torch_out()).max() <= TOLERANCE
    ckptkit.convert(tmp_path / f"k{ext}", tmp_path / "back.safetensors", layout="torch")
    back = safetensors_torch.load_file(tmp_path / "back.safetensors")
    assert list(back) == sorted(sd)
    for name, value in sd.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        assert back[name].view(-1).numpy().tobytes() == value.view(-1).numpy().tobytes(), name


@pytest.mark.parametrize("make", [pairs.gru, *pairs.BIDIRECTIONAL], ids=lambda m: m.__name__)
def test_keras_rnn_file_through_pytorch_and_back_restores_it(tmp_path, make):
    """Through a file that keeps the record: a GRU bias split into two rows is stacked again."""
    pair = make()
    rng = np.random.default_rng(3)  # Keras starts GRU biases at zero: random ones show a misplaced row
    pair.keras_model.set_weights(
        [rng.standard_normal(w.shape).astype(w.dtype) for w in _keras_weights(pair.keras_model)]
    )
    pair.keras_model.save_weights(tmp_path / "k.weights.h5")
    with ckptkit.load(tmp_path / "k.weights.h5") as ckpt:
        want = {n: np.array(ckpt.read_tensor(n)) for n in ckpt.names()}
    ckptkit.convert(tmp_path / "k.weights.h5", tmp_path / "t.safetensors", layout="torch")
    state = safetensors_torch.load_file(tmp_path / "t.safetensors")
    fresh = make()
    fresh.torch_model.load_state_dict(state, strict=True)
    assert np.abs(fresh.torch_out() - pair.keras_out()).max() <= TOLERANCE
    ckptkit.convert(tmp_path / "t.safetensors", tmp_path / "back.weights.h5", layout="keras")
    with ckptkit.load(tmp_path / "back.weights.h5") as ckpt:
        assert ckpt.names() == list(want)
        for name, value in want.items():
            assert ckpt.read_tensor(name).tobytes() == value.tobytes(), name


def test_plan_shows_each_half_of_a_bidirectional_rnn(tmp_path, cli):
    src = _save_state_dict(pairs.bi_gru_2layer(), tmp_path / "sd.safetensors")
    result = cli("convert", src, tmp_path / "out.weights.h5", "--layout", "keras", "--plan")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    kernel = next(ln for ln in lines if "gru.weight_ih_l1_reverse ->" in ln)
    assert "-> gru_l1/backward_gru/gru_cell/kernel [6, 9]" in kernel
    assert "backward half of Bidirectional" in kernel and "reorder gates (1, 0, 2)" in kernel
    bias = next(ln for ln in lines if "-> gru/forward_gru/gru_cell/bias" in ln)
    assert "gru.bias_ih_l0 + gru.bias_hh_l0" in bias and "stack" in bias
    assert not (tmp_path / "out.weights.h5").exists()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_projected_lstm_is_refused_in_one_line(tmp_path, cli, bidirectional):
    lstm = torch.nn.LSTM(4, 6, proj_size=3, bidirectional=bidirectional)
    safetensors_torch.save_file({f"enc.{k}": v.detach().contiguous() for k, v in lstm.state_dict().items()},
                                tmp_path / "sd.safetensors")  # fmt: skip
    result = cli("convert", tmp_path / "sd.safetensors", tmp_path / "out.weights.h5", "--layout", "keras")
    assert_one_line_error(result, "enc is an LSTM with proj_size", "Keras has no projected LSTM")
    assert not (tmp_path / "out.weights.h5").exists()


def test_bidirectional_halves_pytorch_cannot_hold_are_refused(tmp_path):
    layers = keras.layers
    for units in (3, 4):  # a backward_layer of its own keeps its own name (lstm_<n>)
        model = keras.Sequential(
            [
                keras.Input((5, 3)),
                layers.Bidirectional(layers.LSTM(3), backward_layer=layers.LSTM(units, go_backwards=True), name="bi"),
            ]
        )
        model.save_weights(tmp_path / f"k{units}.weights.h5")
    ckptkit.convert(tmp_path / "k3.weights.h5", tmp_path / "t.safetensors", layout="torch")
    state = safetensors_torch.load_file(tmp_path / "t.safetensors")
    torch.nn.LSTM(3, 3, bidirectional=True).load_state_dict({k.removeprefix("bi."): v for k, v in state.items()})
    with pytest.raises(LayoutAmbiguityError, match="differs from the other half of Bidirectional bi;"):
        ckptkit.convert(tmp_path / "k4.weights.h5", tmp_path / "t4.safetensors", layout="torch")
    one_way = {
        "enc.weight_ih_l0": np.zeros((8, 3), np.float32),
        "enc.weight_hh_l0": np.zeros((8, 2), np.float32),
        "enc.weight_ih_l0_reverse": np.zeros((8, 3), np.float32),
        "enc.weight_hh_l0_reverse": np.zeros((8, 2), np.float32),
        "enc.weight_ih_l1": np.zeros((8, 4), np.float32),
        "enc.weight_hh_l1": np.zeros((8, 2), np.float32),
    }
    ckptkit.save(one_way, tmp_path / "one_way.safetensors")
    with pytest.raises(LayoutAmbiguityError, match="enc is bidirectional, but layer 1 lacks one of its two directions"):
        ckptkit.convert(tmp_path / "one_way.safetensors", tmp_path / "k.weights.h5", layout="keras")
