import json

import h5py
import ml_dtypes
import numpy as np
import pytest

import ckptkit
from ckptkit.core.dtypes import DTYPES
from ckptkit.core.errors import CorruptCheckpointError, UnknownFormatError, UnsupportedError, UsageError
from tests.conftest import assert_one_line_error, realworld_files
from tests.helpers import assert_same_tensors, sample_array, write_read
from tests.keras2_files import sequential_config, write_keras2


@pytest.fixture(scope="module")
def keras():
    import tests.keras_pairs  # noqa: F401 - sets KERAS_BACKEND=torch before keras loads

    return pytest.importorskip("keras")


def _values(model) -> dict[str, np.ndarray]:
    import keras

    return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}


def _text(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _same_weights(a, b) -> bool:
    """Same values in the same order (a reloaded model may name its nested layers differently)."""
    va, vb = list(_values(a).values()), list(_values(b).values())
    return len(va) == len(vb) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(va, vb, strict=True))


def _small_model(keras, seed: int = 0):
    """Conv + BatchNorm + LSTM-free functional model with a nested Sequential, trained one step."""
    from keras import layers as L

    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(3, 3, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Flatten(name="flat")(x)
    x = keras.Sequential([L.Dense(4, name="d1"), L.Dense(2, name="d2")], name="inner")(x)
    model = keras.Model(inp, x, name="small")
    model.compile("adam", "mse")
    model.fit(np.ones((2, 6, 6, 2)), np.ones((2, 2)), verbose=0)
    return model


def test_keras2_weights_file_inner_scopes_nested_model_empty_layers_split_attribute(tmp_path):
    k = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    layers = [
        ("conv2d", [("conv2d_3/kernel:0", k), ("conv2d_3/bias:0", np.ones(2, np.float32))]),
        ("flatten", []),
        (
            "model_1",
            [("dense_5/kernel:0", np.eye(3, dtype=np.float32)), ("dense_6/kernel:0", np.ones((3, 1), np.float32))],
        ),
        ("lstm", [("lstm/lstm_cell/kernel:0", np.zeros((2, 8), np.float32))]),
    ]
    path = tmp_path / "keras2.h5"
    write_keras2(path, layers, split_layer_names=True)
    with ckptkit.load(path) as ckpt:
        assert ckpt.format_name == "keras-h5"
        assert ckpt.names() == ["conv2d/kernel", "conv2d/bias", "model_1/dense_5/kernel", "model_1/dense_6/kernel",
                                "lstm/lstm_cell/kernel"]  # fmt: skip
        assert np.array_equal(ckpt.read_tensor("conv2d/kernel"), k)
        paths = json.loads(ckpt.metadata["keras:h5_paths"])
        assert paths["conv2d/kernel"] == "/conv2d/conv2d_3/kernel:0"
        groups = ckpt.structure()["sections"][0]["groups"]
        assert [(g["name"], len(g["tensors"])) for g in groups] == [
            ("conv2d", 2),
            ("flatten", 0),
            ("model_1", 2),
            ("lstm", 1),
        ]
        assert ckpt.metadata["keras:keras_version"] == "2.13.1"


def test_keras2_full_model_classes_from_config_and_optimizer_apart(tmp_path):
    config = sequential_config(("Conv2D", "c"), ("Sequential", "sub"), nested={"sub": [("Dense", "dense")]})
    path = tmp_path / "model.h5"
    write_keras2(
        path,
        [
            ("c", [("c/kernel:0", np.ones((1, 1, 1, 2), np.float32))]),
            ("sub", [("dense/kernel:0", np.ones((2, 2), np.float32))]),
        ],
        model_config=config,
        optimizer=[("Adam/iter:0", np.array(3, np.int64)), ("Adam/c/kernel/m:0", np.zeros((1, 1, 1, 2), np.float32))],
    )
    with ckptkit.load(path) as ckpt:
        assert ckpt.names() == ["c/kernel", "sub/dense/kernel", "optimizer/Adam/iter", "optimizer/Adam/c/kernel/m"]
        assert json.loads(ckpt.metadata["keras:classes"]) == {"c": "Conv2D", "sub": "Sequential", "sub/dense": "Dense"}
        titles = [s["title"] for s in ckpt.structure()["sections"]]
        assert titles == ["layers", "optimizer variables"]
        assert ckpt.read_tensor("optimizer/Adam/iter")[()] == 3


def test_reads_what_keras3_writes_in_every_format(tmp_path, keras):
    model = _small_model(keras)
    want = _values(model)
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    model.save_weights(tmp_path / "m.weights.h5")
    for name, fmt in (("m.keras", "keras"), ("m.h5", "keras-h5"), ("m.weights.h5", "keras")):
        with ckptkit.load(tmp_path / name) as ckpt:
            assert ckpt.format_name == fmt
            model_names = [n for n in ckpt.names() if not n.startswith("optimizer/")]
            assert sorted(model_names) == sorted(want), name
            for path, value in want.items():
                assert np.array_equal(ckpt.read_tensor(path), value), (name, path)
            assert sum(n.startswith("optimizer/") for n in ckpt.names()) == len(model.optimizer.variables)
            classes = json.loads(ckpt.metadata["keras:classes"])
            assert classes["bn"] == "BatchNormalization" and classes["inner/d1"] == "Dense"
    with ckptkit.load(tmp_path / "m.keras") as ckpt:
        layer_order = [g["name"] for g in ckpt.structure()["sections"][0]["groups"]]
        assert layer_order[0].startswith("input_layer") and layer_order[1:] == ["conv", "bn", "flat", "inner"]
        assert ckpt.raw_extent("conv/kernel") is not None  # read in place inside the zip


def _bidirectional_model(keras, seed: int = 0):
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((5, 3)),
            layers.Bidirectional(layers.LSTM(4, return_sequences=True), name="bi"),
            layers.Bidirectional(layers.GRU(2), name="bi2"),
        ]
    )
    rng = np.random.default_rng(seed)
    model.set_weights([rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def test_bidirectional_halves_read_in_keras_order_and_written_where_keras_looks(tmp_path, keras):
    model = _bidirectional_model(keras)
    want = {path.split("/", 1)[1]: value for path, value in _values(model).items()}  # without the model's name
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    model.save_weights(tmp_path / "m.weights.h5")
    for name in ("m.keras", "m.h5", "m.weights.h5"):
        with ckptkit.load(tmp_path / name) as ckpt:
            assert ckpt.names() == list(want), name  # forward half first, as Keras lists the weights
            for path, value in want.items():
                assert np.array_equal(ckpt.read_tensor(path), value), (name, path)
            classes = json.loads(ckpt.metadata["keras:classes"])
            backward, forward = model.layers[0].backward_layer.name, model.layers[1].forward_layer.name
            assert classes["bi"] == "Bidirectional" and classes[f"bi/{backward}"] == "LSTM", name
            assert classes[f"bi2/{forward}/gru_cell"] == "GRUCell", name
    # Layouts derived from the classes (a legacy .h5 records none of Keras 3's paths), and the other way.
    for src, out in (("m.h5", "out.weights.h5"), ("m.weights.h5", "out.h5"), ("m.keras", "out2.h5")):
        ckptkit.convert(tmp_path / src, tmp_path / out)
        fresh = _bidirectional_model(keras, seed=1)
        fresh.load_weights(tmp_path / out)
        assert _same_weights(fresh, model), out


@pytest.mark.parametrize("ext", [".h5", ".weights.h5", ".keras"])
def test_written_files_load_in_keras(tmp_path, keras, ext):
    model = _small_model(keras)
    model.save(tmp_path / "src.keras")
    out = tmp_path / f"out{ext}"
    receipt = ckptkit.convert(tmp_path / "src.keras", out)
    assert receipt.verified
    fresh = _small_model(keras, seed=1)
    assert not np.array_equal(fresh.get_layer("conv").kernel, model.get_layer("conv").kernel)
    if ext == ".keras":
        fresh = keras.saving.load_model(out)
    else:
        fresh.load_weights(out)
    assert _same_weights(fresh, model)


def test_keras_archive_to_legacy_h5_is_a_model_keras_loads(tmp_path, keras, cli):
    """config.json becomes model_config; weights in the order Keras loads them (attention, nested models)."""
    from keras import layers as L

    keras.utils.set_random_seed(3)
    inp = keras.Input((4, 6))
    x = L.MultiHeadAttention(2, 3, name="mha")(inp, inp)
    # Keras 3 files keep a nested model's layers by class name (dense before layer_normalization).
    x = keras.Sequential([L.LayerNormalization(name="norm"), L.Dense(5, name="proj")], name="inner")(x)
    model = keras.Model(inp, x)
    model.set_weights(
        [np.random.default_rng(i).standard_normal(w.shape).astype(w.dtype) for i, w in enumerate(model.get_weights())]
    )
    model.compile("adam", "mse")
    model.save(tmp_path / "m.keras")
    result = cli("convert", tmp_path / "m.keras", tmp_path / "m.h5")
    assert result.code == 0, result.stderr
    assert "returns the model uncompiled" in result.stdout + result.stderr
    x_in = np.random.default_rng(9).standard_normal((2, 4, 6)).astype(np.float32)
    want = keras.ops.convert_to_numpy(model(x_in))
    loaded = keras.saving.load_model(tmp_path / "m.h5", compile=False)
    assert np.array_equal(keras.ops.convert_to_numpy(loaded(x_in)), want)
    fresh = keras.models.clone_model(model)
    fresh.load_weights(tmp_path / "m.h5")
    assert np.array_equal(keras.ops.convert_to_numpy(fresh(x_in)), want)
    ckptkit.convert(tmp_path / "m.h5", tmp_path / "back.keras")  # and back: the archive's own config.json
    assert np.array_equal(keras.ops.convert_to_numpy(keras.saving.load_model(tmp_path / "back.keras")(x_in)), want)

    @keras.saving.register_keras_serializable(package="ckptkit_tests")
    class TwoDense(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.b_first, self.a_second = L.Dense(3), L.Dense(3)

        def call(self, x):
            return self.a_second(self.b_first(x))

    inp = keras.Input((3,))
    keras.Model(inp, TwoDense(name="two")(inp)).save(tmp_path / "custom.keras")
    result = cli("convert", tmp_path / "custom.keras", tmp_path / "custom.h5")
    assert_one_line_error(result, "layer 'two'", "in the order the layer made them", "write a .keras or .weights.h5")
    assert not (tmp_path / "custom.h5").exists()


def test_safetensors_round_trip_restores_the_keras_layout(tmp_path, keras):
    model = _small_model(keras)
    model.save(tmp_path / "m.h5")
    ckptkit.convert(tmp_path / "m.h5", tmp_path / "m.safetensors")
    ckptkit.convert(tmp_path / "m.safetensors", tmp_path / "back.h5")
    with h5py.File(tmp_path / "m.h5") as a, h5py.File(tmp_path / "back.h5") as b:
        assert _text(a["model_weights"].attrs["layer_names"]) == _text(b["model_weights"].attrs["layer_names"])
        for layer in _text(a["model_weights"].attrs["layer_names"]):
            names = _text(a["model_weights"][layer].attrs["weight_names"])
            assert names == _text(b["model_weights"][layer].attrs["weight_names"])
            for w in names:
                ga, gb = a["model_weights"][layer][w], b["model_weights"][layer][w]
                assert ga.dtype == gb.dtype and ga[()].tobytes() == gb[()].tobytes()
        assert a.attrs["model_config"] == b.attrs["model_config"]
        assert _text(a["optimizer_weights"].attrs["weight_names"]) == _text(
            b["optimizer_weights"].attrs["weight_names"]
        )
    assert _same_weights(keras.saving.load_model(tmp_path / "back.h5", compile=False), model)


@pytest.mark.parametrize("dtype", [d.name for d in DTYPES])
def test_every_dtype_round_trips_bit_exactly(tmp_path, dtype):
    arrays = {
        "layer/w": sample_array(dtype, (4, 3)),
        "layer/scalar": sample_array(dtype, ()),
        "other/e": sample_array(dtype, (0, 2)),
    }
    write_read(arrays, tmp_path / "x.h5")
    dense = {"dense/kernel": sample_array(dtype, (4, 3))}
    write_read(dense, tmp_path / "x.weights.h5")


def test_large_tensors_land_in_step_with_the_source_for_in_kernel_copies(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "dense/kernel": rng.standard_normal((512, 1024)).astype(np.float32),
        "dense/bias": np.ones(1000, np.float32),
        "embedding/embeddings": rng.standard_normal((700, 1024)).astype(ml_dtypes.bfloat16),
    }
    ckptkit.save(arrays, tmp_path / "src.safetensors")
    for name in ("out.h5", "out.weights.h5"):
        ckptkit.convert(tmp_path / "src.safetensors", tmp_path / name)
        with ckptkit.load(tmp_path / "src.safetensors") as src, ckptkit.load(tmp_path / name) as out:
            assert_same_tensors(arrays, out)
            for tensor in ("dense/kernel", "embedding/embeddings"):
                assert out.raw_extent(tensor).offset % 4096 == src.raw_extent(tensor).offset % 4096
            assert out.structure()["sections"][0]["groups"][0]["name"] == "dense"
    with h5py.File(tmp_path / "out.h5") as f:
        assert (
            f["embedding/embedding/embeddings"].attrs["dtype"] == "bfloat16" and f["dense/dense/kernel"].chunks is None
        )


def test_bfloat16_weights_written_by_keras_and_read_back_by_keras(tmp_path, keras):
    from keras import layers as L

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), L.Dense(4, dtype="bfloat16", name="d")])
    model.save_weights(tmp_path / "bf.weights.h5")
    with ckptkit.load(tmp_path / "bf.weights.h5") as ckpt:
        assert ckpt.info("d/kernel").dtype.name == "bfloat16"
        kernel = np.array(ckpt.read_tensor("d/kernel"))
    assert np.array_equal(kernel, keras.ops.convert_to_numpy(model.get_layer("d").kernel))
    ckptkit.convert(tmp_path / "bf.weights.h5", tmp_path / "bf.safetensors")
    ckptkit.convert(tmp_path / "bf.safetensors", tmp_path / "again.weights.h5")
    fresh = keras.Sequential([keras.Input((3,)), L.Dense(4, dtype="bfloat16", name="d")])
    fresh.load_weights(tmp_path / "again.weights.h5")
    assert np.array_equal(keras.ops.convert_to_numpy(fresh.get_layer("d").kernel), kernel)


def test_template_fills_a_model_by_name_and_by_order(tmp_path, keras):
    model = _small_model(keras)
    model.save(tmp_path / "template.keras")
    trained = _small_model(keras, seed=3)
    values = _values(trained)
    ckptkit.save({k.replace("/", "."): v for k, v in values.items()}, tmp_path / "flat.safetensors")
    renamed = {f"t{i}": values[k] for i, k in enumerate(_values(model))}
    ckptkit.save(renamed, tmp_path / "ordered.safetensors")
    ckptkit.save(values, tmp_path / "named.safetensors")
    for src, match in (("named.safetensors", None), ("ordered.safetensors", "order")):
        out = tmp_path / f"out_{match}.keras"
        receipt = ckptkit.convert(
            tmp_path / src, out, options={"template": tmp_path / "template.keras", "template_match": match}
        )
        assert receipt.verified
        assert _same_weights(keras.saving.load_model(out), trained)
    with pytest.raises(UsageError, match="template's variables"):
        ckptkit.convert(
            tmp_path / "flat.safetensors",
            tmp_path / "x.keras",
            options={"template": tmp_path / "template.keras", "template_match": "name"},
        )


def test_template_shape_mismatch_names_layer_and_shapes_and_writes_nothing(tmp_path, keras, cli):
    model = _small_model(keras)
    model.save(tmp_path / "template.h5")
    values = _values(model)
    values["conv/kernel"] = np.zeros((3, 3, 2, 5), np.float32)
    ckptkit.save(values, tmp_path / "bad.safetensors")
    result = cli("convert", tmp_path / "bad.safetensors", tmp_path / "out.h5", "--template", tmp_path / "template.h5")
    assert_one_line_error(result, "template layer 'conv'", "[3, 3, 2, 3]", "[3, 3, 2, 5]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "template.h5"]


def test_bad_input_is_one_line_and_exit_2(tmp_path, cli):
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["images"] = np.zeros((2, 2))
    assert_one_line_error(cli("inspect", tmp_path / "data.h5"), "not a Keras one", "images")
    arrays = {"d/kernel": np.ones((64, 64), np.float32)}
    ckptkit.save(arrays, tmp_path / "ok.h5")
    data = (tmp_path / "ok.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    assert_one_line_error(cli("convert", tmp_path / "cut.h5", tmp_path / "out.safetensors"), "truncated")
    assert not (tmp_path / "out.safetensors").exists()
    (tmp_path / "cut.keras").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(CorruptCheckpointError, match="zip archive is incomplete or damaged"):
        ckptkit.load(tmp_path / "cut.keras")
    with pytest.raises(UnknownFormatError):
        ckptkit.load(tmp_path / "data.h5")
    with pytest.raises(CorruptCheckpointError):
        ckptkit.load(tmp_path / "cut.h5")


def test_each_keras_format_claims_its_own_layout_whatever_the_name(tmp_path, cli):
    # Keras 2 wrote legacy files under Keras 3's name too: content decides, not the name.
    legacy = tmp_path / "old.weights.h5"
    write_keras2(legacy, [("dense", [("dense/kernel:0", np.ones((2, 2), np.float32))])])
    with ckptkit.load(legacy) as ckpt:
        assert ckpt.format_name == "keras-h5" and ckpt.names() == ["dense/kernel"]
    v3 = tmp_path / "new.weights.h5"
    ckptkit.save({"dense/kernel": np.ones((2, 2), np.float32)}, v3)
    with ckptkit.load(v3) as ckpt:
        assert ckpt.format_name == "keras"
    assert_one_line_error(cli("inspect", "--from", "keras", legacy), "old.weights.h5", "legacy", "--from keras-h5")
    assert_one_line_error(cli("inspect", "--from", "keras-h5", v3), "new.weights.h5", "Keras 3", "--from keras")
    with pytest.raises(UnknownFormatError, match="read it as keras-h5"):
        ckptkit.load(legacy, "keras")


@pytest.mark.parametrize("ext", [".h5", ".weights.h5"])
def test_an_empty_checkpoint_round_trips(tmp_path, ext):
    write_read({}, tmp_path / f"empty{ext}")


def test_weights_h5_needs_layer_classes(tmp_path):
    ckptkit.save({"encoder/w": np.ones(2, np.float32)}, tmp_path / "x.h5")
    with pytest.raises(UnsupportedError, match="cannot tell the Keras class of layer 'encoder'"):
        ckptkit.convert(tmp_path / "x.h5", tmp_path / "x.weights.h5")
    assert not (tmp_path / "x.weights.h5").exists()


def test_inspect_shows_layers_and_optimizer_apart(tmp_path, keras, cli):
    _small_model(keras).save(tmp_path / "m.keras")
    result = cli("inspect", tmp_path / "m.keras")
    assert result.code == 0, result.stderr
    out = result.stdout
    assert "layers (5," in out and "optimizer variables (1," in out
    assert "bn (BatchNormalization)" in out and "flat (Flatten)" in out and "no weights" in out
    assert out.index("optimizer variables") > out.index("inner/d2/bias")
    report = ckptkit.inspect(tmp_path / "m.keras")
    assert report["structure"]["sections"][1]["title"] == "optimizer variables"


@pytest.mark.parametrize("path", realworld_files("*.weights.h5") + realworld_files("*.keras"), ids=lambda p: p.name)
def test_realworld_keras_files_inspect_and_convert_both_ways(tmp_path, cli, path):
    result = cli("inspect", path)
    assert result.code == 0 and "Traceback" not in result.stderr, result.stderr
    assert "optimizer variables" in result.stdout and "(Dense)" in result.stdout
    with ckptkit.load(path) as ckpt:
        want = {n: np.array(ckpt.read_tensor(n)) for n in ckpt.names()}
        assert any(n.endswith("/kernel") for n in want)
    for ext in ("safetensors", "h5"):
        mid = tmp_path / f"mid.{ext}"
        assert ckptkit.convert(path, mid).verified
        back = tmp_path / f"back_{ext}{''.join(path.suffixes)}"
        assert ckptkit.convert(mid, back).verified
        with ckptkit.load(back) as ckpt:
            assert_same_tensors(want, ckpt)
    receipt = ckptkit.convert(path, tmp_path / "model.pt", layout="torch")
    assert receipt.verified and any(n.startswith("optimizer/") for n in receipt.dropped)
    assert ckptkit.convert(tmp_path / "model.pt", tmp_path / "again.weights.h5", layout="keras").verified
    with ckptkit.load(tmp_path / "again.weights.h5") as ckpt:
        assert_same_tensors({n: v for n, v in want.items() if not n.startswith("optimizer/")}, ckpt)


def test_datasets_pointing_into_other_files_are_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f.attrs["layer_names"] = [b"d"]
        g = f.create_group("d")
        g.attrs["weight_names"] = [b"d/kernel"]
        g.create_dataset("d/kernel", shape=(4,), dtype="f4", external=[(str(tmp_path / "secret.bin"), 0, 16)])
    with pytest.raises(UnsupportedError, match="keeps its data in other files"):
        ckptkit.load(tmp_path / "ext.h5")


def test_import_and_detection_of_other_formats_load_no_h5py(tmp_path):
    import subprocess
    import sys

    ckptkit.save({"w": np.ones(2, np.float32)}, tmp_path / "w.safetensors")
    code = "import sys, ckptkit; ckptkit.inspect(sys.argv[1]); print('h5py' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.safetensors")], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_tied_names_become_hard_links_that_keras_and_ckptkit_read(tmp_path, keras):
    # Two Dense layers sharing one kernel: stored once, linked under both layers' groups.
    rng = np.random.default_rng(7)
    tensors = {
        "dense/kernel": rng.standard_normal((4, 4)).astype(np.float32),
        "dense/bias": rng.standard_normal(4).astype(np.float32),
        "dense_1/bias": rng.standard_normal(4).astype(np.float32),
    }
    src = ckptkit.core.model.MemoryCheckpoint(tensors, aliases={"dense_1/kernel": "dense/kernel"})
    out = tmp_path / "tied.h5"
    receipt = ckptkit.save(src, out)
    assert receipt.aliased == {"dense_1/kernel": "dense/kernel"}
    with h5py.File(out) as f:
        kernels = [f[f"{layer}/{_text(f[layer].attrs['weight_names'])[0]}"] for layer in ("dense", "dense_1")]
        assert kernels[0].id == kernels[1].id  # one HDF5 object, two paths
    with ckptkit.load(out) as ckpt:
        assert ckpt.aliases == {"dense_1/kernel": "dense/kernel"}
        assert sorted(ckpt.names()) == ["dense/bias", "dense/kernel", "dense_1/bias"]
        np.testing.assert_array_equal(ckpt.read_tensor("dense/kernel"), tensors["dense/kernel"])

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.Dense(4)])
    model.load_weights(out)  # the legacy loader, by layer order
    got = [keras.ops.convert_to_numpy(w) for w in model.weights]
    np.testing.assert_array_equal(got[0], tensors["dense/kernel"])
    np.testing.assert_array_equal(got[2], tensors["dense/kernel"])
    np.testing.assert_array_equal(got[3], tensors["dense_1/bias"])

    back = tmp_path / "back.safetensors"
    ckptkit.convert(out, back)
    with ckptkit.load(back) as ckpt:
        assert ckpt.aliases == {"dense_1/kernel": "dense/kernel"}


def test_names_that_are_not_utf8_text_are_shown_escaped_and_refused_by_text_formats(tmp_path, cli):
    # A vars group's name attribute holding bytes that are not UTF-8: h5py hands it over with
    # lone surrogates. Found by fuzzing; it used to end in a UnicodeEncodeError traceback.
    src = tmp_path / "odd.weights.h5"
    with h5py.File(src, "w") as f:
        f.create_group("vars")
        group = f.create_group("layers").create_group("dense").create_group("vars")
        group.create_dataset("0", data=np.ones((2, 2), np.float32))
        group.attrs.create("name", b"\x80ense", dtype=h5py.string_dtype("utf-8"))
    r = cli("inspect", src)
    assert r.code == 0 and "\\udc80ense/kernel" in r.stdout
    r = cli("inspect", src, "--json")
    assert r.code == 0 and json.loads(r.stdout)["tensors"][0]["name"] == "\udc80ense/kernel"
    for ext in ("safetensors", "onnx", "h5"):
        r = cli("convert", src, tmp_path / f"out.{ext}")
        assert_one_line_error(r, "is not UTF-8 text")
        assert not (tmp_path / f"out.{ext}").exists()
    assert cli("convert", src, tmp_path / "out.pt").code == 0  # pickle keeps such names
    assert cli("hash", src, "-o", tmp_path / "m.json").code == 0

    bytes_link = tmp_path / "link.weights.h5"
    with h5py.File(bytes_link, "w") as f:
        f.create_group("vars")
        f.create_group("layers").create_group(b"\x80ense").create_group("vars").create_dataset("0", data=np.ones(2))
    assert_one_line_error(cli("inspect", bytes_link), "link.weights.h5", "not UTF-8 text")
