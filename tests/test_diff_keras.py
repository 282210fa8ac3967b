"""ckptkit diff between a PyTorch checkpoint and its Keras translation, through the layout rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ckptkit
from tests.conftest import assert_one_line_error

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")
nn = torch.nn

NORMALIZER = "keras_to_torch_layout"


def _mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), []


def _cnn():
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 4, 3))
    model.add_module("bn1", nn.BatchNorm2d(4))
    model.add_module("conv2", nn.Conv2d(4, 5, 3, bias=False))
    model.add_module("bn2", nn.BatchNorm2d(5))
    model.add_module("fc", nn.Linear(5 * 4 * 4, 3))
    for bn in (model.bn1, model.bn2):  # statistics that differ from the defaults, as after training
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.num_batches_tracked += 7
    return model, ["fc=flatten:5x4x4"]


def _lstm():
    model = nn.Module()
    model.lstm = nn.LSTM(4, 6, num_layers=2, batch_first=True)
    model.head = nn.Linear(6, 2)
    return model, []


def _attention():
    model = nn.Module()
    model.emb = nn.Embedding(10, 8)
    model.mha = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        model.mha.in_proj_bias.uniform_(-1, 1)  # zeros at first, which would hide a misplaced bias
    return model, ["mha=mha:2"]


MODELS = {"mlp": _mlp, "cnn": _cnn, "lstm": _lstm, "attention": _attention}
# Keras 3 weights for some models, legacy HDF5 for others: both Keras readers are exercised.
TARGETS = {"mlp": "model.weights.h5", "cnn": "model.weights.h5", "lstm": "model.h5", "attention": "model.h5"}


def _translated(tmp_path, kind):
    """A torch.save state dict and its ``convert --layout keras`` translation; the state dict as numpy."""
    torch.manual_seed(0)
    model, hints = MODELS[kind]()
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)
    keras_file = tmp_path / TARGETS[kind]
    ckptkit.convert(pt, keras_file, layout="keras", layout_hints=hints)
    return pt, keras_file, {k: v.numpy() for k, v in model.state_dict().items()}, hints


def _diff_json(cli, a, b, *args):
    result = cli("diff", a, b, "--json", *args)
    assert result.code in (0, 1), result.stderr
    return result.code, json.loads(result.stdout)


def _edit_keras_tensor(path, name, edit):
    """Change one tensor of a Keras file in place, where the Keras reader finds it."""
    with ckptkit.load(path) as ckpt:
        h5_path = json.loads(ckpt.metadata["keras:h5_paths"])[name]
    with h5py.File(path, "r+") as f:
        data = f[h5_path][()]
        f[h5_path][...] = edit(data)
        return f[h5_path][()]


def _strip_metadata(path):
    """Drop what ckptkit recorded in the file (the layout record among it): a file Keras itself wrote."""
    with h5py.File(path, "r+") as f:
        del f.attrs["ckptkit_metadata"]


@pytest.mark.parametrize("kind", list(MODELS))
def test_pytorch_checkpoint_and_its_keras_translation_have_zero_drift(tmp_path, cli, kind):
    pt, keras_file, state, _ = _translated(tmp_path, kind)
    code, report = _diff_json(cli, pt, keras_file, "--fail-on", "max_abs>0,missing,shape,dtype")
    assert code == 0
    assert report["b"]["normalized_by"] == NORMALIZER and report["a"]["normalized_by"] is None
    assert [t["name"] for t in report["tensors"]] == list(state)
    assert {t["status"] for t in report["tensors"]} == {"compared"}
    assert report["summary"]["only_a"] == report["summary"]["only_b"] == 0
    assert report["total"]["max_abs"] == 0 and report["total"]["identical"] == 1.0
    assert report["total"]["elements"] == sum(v.size for v in state.values())
    assert all(t["metrics"]["identical"] == 1.0 for t in report["tensors"])

    # Keras as A: the first side is the one seen through the layout.
    swapped = ckptkit.diff(keras_file, pt)
    assert swapped.a.normalized_by == NORMALIZER and swapped.b.normalized_by is None
    assert len(swapped.compared) == len(state) and swapped.total.metrics()["max_abs"] == 0


@pytest.mark.parametrize(
    ("kind", "keras_name", "torch_name", "to_torch"),
    [
        ("cnn", "conv2/kernel", "conv2.weight", lambda k: k.transpose(3, 2, 0, 1)),
        ("lstm", "lstm_l1/lstm_cell/kernel", "lstm.weight_ih_l1", lambda k: k.T),
    ],
)
def test_a_changed_keras_tensor_is_reported_under_its_pytorch_name(
    tmp_path, cli, kind, keras_name, torch_name, to_torch
):
    pt, keras_file, state, _ = _translated(tmp_path, kind)

    def nudge(kernel):
        changed = kernel.copy()
        changed.flat[5] += np.float32(0.25)
        changed.flat[-1] -= np.float32(0.5)
        return changed

    edited = _edit_keras_tensor(keras_file, keras_name, nudge)
    delta = np.abs(state[torch_name].astype(np.float64) - to_torch(edited).astype(np.float64))

    code, report = _diff_json(cli, pt, keras_file, "--fail-on", "max_abs>0")
    assert code == 1
    assert [v["tensor"] for v in report["thresholds"]["violations"]] == [torch_name]
    by_name = {t["name"]: t for t in report["tensors"]}
    assert set(by_name) == set(state)
    got = by_name[torch_name]["metrics"]
    assert got["max_abs"] == pytest.approx(delta.max(), rel=1e-6)
    assert got["mean_abs"] == pytest.approx(delta.mean(), rel=1e-6)
    assert got["identical"] == pytest.approx((delta == 0).mean())
    assert all(t["metrics"]["max_abs"] == 0 for name, t in by_name.items() if name != torch_name)


def test_keras_against_keras_is_compared_as_it_is(tmp_path, cli):
    pt, weights_h5, _, hints = _translated(tmp_path, "cnn")
    legacy = tmp_path / "legacy.h5"
    ckptkit.convert(pt, legacy, layout="keras", layout_hints=hints)
    with ckptkit.load(weights_h5) as ckpt:
        keras_names = ckpt.names()
    code, report = _diff_json(cli, weights_h5, legacy, "--fail-on", "max_abs>0,missing")
    assert code == 0
    assert report["a"]["normalized_by"] is None and report["b"]["normalized_by"] is None
    assert sorted(t["name"] for t in report["tensors"]) == sorted(keras_names)
    assert report["total"]["max_abs"] == 0 and report["total"]["identical"] == 1.0


def test_a_keras_file_without_a_record_is_translated_by_the_rules(tmp_path, cli):
    pt, keras_file, state, hints = _translated(tmp_path, "cnn")
    _strip_metadata(keras_file)

    # Without the hint the Dense after Flatten stays under its Keras name; the rest still matches.
    code, report = _diff_json(cli, pt, keras_file, "--fail-on", "max_abs>0")
    assert code == 0 and report["b"]["normalized_by"] == NORMALIZER
    only_a = sorted(t["name"] for t in report["tensors"] if t["status"] == "only_a")
    only_b = sorted(t["name"] for t in report["tensors"] if t["status"] == "only_b")
    # Keras has no batch counter: it is reported missing, not compared with made-up zeros.
    assert only_a == ["bn1.num_batches_tracked", "bn2.num_batches_tracked", "fc.weight"]
    assert only_b == ["fc/kernel"]
    assert report["summary"]["compared"] == len(state) - 3 and report["total"]["max_abs"] == 0

    code, report = _diff_json(cli, pt, keras_file, *(f"--layout-hint={h}" for h in hints))
    compared = {t["name"] for t in report["tensors"] if t["status"] == "compared"}
    assert compared == set(state) - {"bn1.num_batches_tracked", "bn2.num_batches_tracked"}
    assert report["total"]["max_abs"] == 0 and report["summary"]["only_b"] == 0

    assert_one_line_error(cli("diff", pt, keras_file, "--layout-hint", "fc=sideways"), "unknown kind 'sideways'")


def test_attention_without_a_record_is_compared_through_the_rules(tmp_path, cli):
    """Keras kernels give the heads: no hint needed from Keras to PyTorch, packed in_proj_weight matches."""
    pt, keras_file, state, _ = _translated(tmp_path, "attention")
    _strip_metadata(keras_file)
    code, report = _diff_json(cli, pt, keras_file, "--fail-on", "max_abs>0,missing")
    assert code == 0 and report["b"]["normalized_by"] == NORMALIZER
    assert {t["name"] for t in report["tensors"] if t["status"] == "compared"} == set(state)
    assert report["total"]["max_abs"] == 0
