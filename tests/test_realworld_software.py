"""End to end on checkpoints written by the real libraries (torch, transformers, Keras, onnx), made in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest

import ckptkit
from ckptkit.core.errors import UnsupportedError
from ckptkit.hashing.manifest import build_manifest
from tests.conftest import assert_one_line_error

torch = pytest.importorskip("torch")


def _resolved(t) -> np.ndarray:
    return t.detach().resolve_conj().resolve_neg().contiguous().numpy()


def test_lazy_conjugate_and_negative_views_read_with_their_values(tmp_path):
    # torch.save keeps t.conj() as the unconjugated storage plus {"conj": True}; .imag of it sets "neg".
    z, w = torch.randn(3, 2, dtype=torch.complex64), torch.randn(4, dtype=torch.complex128)
    saved = {"conj": z.conj(), "plain": z, "neg_imag": w.conj().imag}
    src = tmp_path / "views.pt"
    torch.save(saved, src)
    with ckptkit.load(src) as ckpt:
        for name, t in saved.items():
            np.testing.assert_array_equal(ckpt.read_tensor(name), _resolved(t))
        assert not ckpt.aliases, "a conjugated view is not the tensor it views"

    dst = tmp_path / "views.safetensors"
    ckptkit.convert(src, dst)
    from safetensors.torch import load_file

    back = load_file(dst)
    for name, t in saved.items():
        np.testing.assert_array_equal(back[name].numpy(), _resolved(t))

    plain = tmp_path / "resolved.pt"
    torch.save({k: torch.from_numpy(_resolved(t)) for k, t in saved.items()}, plain)
    assert build_manifest(src).root == build_manifest(plain).root == build_manifest(dst).root


class _TiedLM(torch.nn.Module):
    """An embedding and an output head sharing one weight, plus buffers, as language models have."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.norm = torch.nn.BatchNorm1d(4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("pos", torch.arange(5))


@pytest.mark.parametrize("ext", [".h5", ".onnx", ".safetensors"])
def test_tied_state_dict_survives_each_format_and_back(tmp_path, ext):
    src = tmp_path / "tied.pt"
    torch.save(_TiedLM().state_dict(), src)
    mid, back = tmp_path / f"tied{ext}", tmp_path / "back.pt"
    ckptkit.convert(src, mid)
    with ckptkit.load(mid) as ckpt:
        assert ckpt.aliases == {"head.weight": "emb.weight"}
    ckptkit.convert(mid, back)
    want = torch.load(src, weights_only=True)
    got = torch.load(back, weights_only=True)
    assert set(got) == set(want)
    for name, t in want.items():
        assert torch.equal(got[name], t), name
    assert got["head.weight"].data_ptr() == got["emb.weight"].data_ptr(), "the tie is restored"


def test_whole_pickled_module_is_refused_naming_its_class(tmp_path, cli):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()), path)
    with pytest.raises(UnsupportedError, match=r"whole pickled torch.nn.Module \(torch.nn.modules"):
        ckptkit.load(path)
    nested = tmp_path / "nested.pt"
    torch.save({"epoch": 1, "model": torch.nn.Linear(2, 2)}, nested)
    result = cli("convert", nested, tmp_path / "out.safetensors")
    assert_one_line_error(result, "torch.nn.modules.linear.Linear at 'model'", "model.state_dict()")
    assert not (tmp_path / "out.safetensors").exists()
    report = cli("verify", path)
    assert report.code == 1 and "whole pickled torch.nn.Module" in report.stdout


@pytest.mark.filterwarnings("ignore:.*quantize:UserWarning")
def test_tensors_ckptkit_cannot_hold_are_refused_with_a_fitting_remedy(tmp_path):
    cases = {
        "quantized": (torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8), "dequantize()"),
        "sparse": (torch.eye(3).to_sparse(), "to_dense()"),
        "complex32": (torch.zeros(2, dtype=torch.complex32), ".to(torch.complex64)"),
        "float4": (torch.zeros(2, dtype=torch.uint8).view(torch.float4_e2m1fn_x2), ".view(torch.uint8)"),
    }
    for key, (tensor, remedy) in cases.items():
        path = tmp_path / f"{key}.pt"
        torch.save({"ok": torch.ones(2), key: tensor}, path)
        with ckptkit.load(path) as ckpt:
            assert remedy in ckpt.unsupported[key], (key, ckpt.unsupported)
        with pytest.raises(UnsupportedError, match=rf"tensor '{key}' is a .* tensor") as caught:
            ckptkit.convert(path, tmp_path / f"{key}.safetensors")
        assert remedy in str(caught.value), (key, str(caught.value))


def test_complex128_reaches_safetensors_through_a_complex_cast(tmp_path, cli):
    src = tmp_path / "spectra.pt"
    saved = {"z": torch.randn(3, dtype=torch.complex128), "w": torch.randn(2, dtype=torch.float64)}
    torch.save(saved, src)
    dst = tmp_path / "spectra.safetensors"
    assert_one_line_error(cli("convert", src, dst), "'z' is complex128", "--dtype complex64", "--exclude 'z'")
    ckptkit.convert(src, dst, dtype="complex64")
    from safetensors.torch import load_file

    back = load_file(dst)
    assert back["z"].dtype == torch.complex64 and torch.equal(back["z"], saved["z"].to(torch.complex64))
    assert back["w"].dtype == torch.float64 and torch.equal(back["w"], saved["w"]), "floats keep their dtype"
    assert_one_line_error(cli("convert", src, tmp_path / "i.pt", "--dtype", "int8"), "--dtype int8")
    assert not (tmp_path / "i.pt").exists()


def _attention_model(keras):
    layers = keras.layers
    inp = keras.Input((5,), dtype="int32")
    x = layers.Embedding(12, 8, name="emb")(inp)
    x = layers.MultiHeadAttention(2, 4, name="mha")(x, x)
    return keras.Model(inp, layers.Dense(3, name="out")(x))


def test_keras_attention_projections_are_named_and_convert_from_legacy_h5(tmp_path):
    import tests.keras_pairs  # noqa: F401 - sets KERAS_BACKEND=torch before keras loads

    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = _attention_model(keras)
    model.save_weights(tmp_path / "w.weights.h5")
    model.save(tmp_path / "m.h5")
    names = {f"mha/{p}/{v}" for p in ("query", "key", "value", "attention_output") for v in ("kernel", "bias")}
    with ckptkit.load(tmp_path / "w.weights.h5") as v3, ckptkit.load(tmp_path / "m.h5") as legacy:
        assert names <= set(v3.names()) and names <= set(legacy.names())
        for name in names:
            np.testing.assert_array_equal(v3.read_tensor(name), legacy.read_tensor(name))

    ckptkit.convert(tmp_path / "m.h5", tmp_path / "from_h5.weights.h5")
    fresh = _attention_model(keras)
    fresh.load_weights(tmp_path / "from_h5.weights.h5")
    tokens = np.arange(10).reshape(2, 5) % 12
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fresh(tokens)), keras.ops.convert_to_numpy(model(tokens)))


def test_state_dict_to_keras3_weights_points_at_layout_keras(tmp_path, cli):
    src = tmp_path / "mlp.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).state_dict(), src)
    dst = tmp_path / "mlp.weights.h5"
    assert_one_line_error(cli("convert", src, dst), "cannot tell the Keras class", "--layout keras")
    assert cli("convert", src, dst, "--layout", "keras").code == 0
    with ckptkit.load(dst) as ckpt:
        assert {"0/kernel", "2/kernel"} <= set(ckpt.names())


def test_sharded_bin_with_tied_weights_reads_as_one_checkpoint(tmp_path, cli):
    # huggingface_hub keeps a tied pair in one .bin shard, where torch.save stores it once; the
    # index lists both names.
    hub = pytest.importorskip("huggingface_hub")
    torch.manual_seed(0)
    embed = torch.randn(100, 32)
    state = {"wte.weight": embed, "h.0.w": torch.randn(32, 32), "h.1.w": torch.randn(32, 32), "lm_head.weight": embed}
    folder = tmp_path / "tied"
    folder.mkdir()
    hub.save_torch_state_dict(state, folder, safe_serialization=False, max_shard_size="10KB")
    assert len(list(folder.glob("pytorch_model-*.bin"))) == 2

    with ckptkit.load(folder) as ckpt:
        assert ckpt.aliases == {"lm_head.weight": "wte.weight"}
        assert sorted(ckpt.names()) == ["h.0.w", "h.1.w", "wte.weight"]
        np.testing.assert_array_equal(ckpt.read_tensor("h.1.w"), state["h.1.w"].numpy())
    assert cli("verify", folder).code == 0

    dst = tmp_path / "model.safetensors"
    ckptkit.convert(folder, dst)
    from safetensors import safe_open

    with safe_open(dst, "np") as f:
        np.testing.assert_array_equal(f.get_tensor("wte.weight"), embed.numpy())
    assert build_manifest(folder).root == build_manifest(dst).root
