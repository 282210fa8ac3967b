"""Attention layers and tied weights across PyTorch and Keras, proven by both frameworks' outputs."""

import h5py
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
nn = torch.nn
L = keras.layers

TOLERANCE = 1e-5


def _state_dict(module) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def _randomize_keras(model, seed: int = 5) -> None:
    """Random values everywhere (Keras starts biases at zero, which would hide a misplaced one)."""
    rng = np.random.default_rng(seed)
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    model.set_weights([(0.4 * rng.standard_normal(w.shape) + (w.ndim == 1)).astype(w.dtype) for w in weights])


def _run(model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


def _same_bits(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name, value in a.items():
        got = b[name]
        assert got.dtype == value.dtype and tuple(got.shape) == tuple(value.shape), name
        assert got.contiguous().view(-1).numpy().tobytes() == value.contiguous().view(-1).numpy().tobytes(), name


def test_attention_block_both_ways_as_a_user_runs_it(tmp_path, cli):
    """Embedding + MultiHeadAttention + LayerNorm + Dense: heads from the template, outputs equal both ways."""
    pair = pairs.attention_block()
    torch.save(pair.torch_model.state_dict(), tmp_path / "model.pt")
    pair.keras_model.save(tmp_path / "template.keras")
    want = pair.torch_out()
    template = tmp_path / "template.keras"
    result = cli(
        "convert", tmp_path / "model.pt", tmp_path / "model.weights.h5", "--layout", "keras", "--template", template
    )
    assert result.code == 0, result.stderr
    ckptkit.convert(tmp_path / "model.pt", tmp_path / "model.h5", layout="keras", options={"template": template})
    fresh = pairs.attention_block()
    fresh.keras_model.load_weights(tmp_path / "model.weights.h5")
    assert np.abs(fresh.keras_out() - want).max() <= TOLERANCE
    # A complete legacy model: the template's config included.
    assert np.abs(_run(keras.saving.load_model(tmp_path / "model.h5"), pair.x) - want).max() <= TOLERANCE

    made_by_keras = pairs.attention_block()
    _randomize_keras(made_by_keras.keras_model)
    made_by_keras.keras_model.save(tmp_path / "keras_made.keras")
    result = cli("convert", tmp_path / "keras_made.keras", tmp_path / "from_keras.safetensors", "--layout", "torch")
    assert result.code == 0, result.stderr
    fresh = pairs.attention_block()
    fresh.torch_model.load_state_dict(safetensors_torch.load_file(tmp_path / "from_keras.safetensors"), strict=True)
    assert np.abs(fresh.torch_out() - made_by_keras.keras_out()).max() <= TOLERANCE


def _encoder_block() -> "keras.Model":
    """The Keras equivalent of nn.TransformerEncoderLayer(8, 2, 16, dropout=0, batch_first=True), post-norm."""
    x = keras.Input((5, 8))
    h = L.LayerNormalization(epsilon=1e-5, name="norm1")(
        L.Add()([x, L.MultiHeadAttention(2, 4, name="self_attn")(x, x)])
    )
    ff = L.Dense(8, name="linear2")(L.Dense(16, activation="relu", name="linear1")(h))
    return keras.Model(x, L.LayerNormalization(epsilon=1e-5, name="norm2")(L.Add()([h, ff])))


def _encoder_layer():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).eval()
    pairs._randomize(layer)
    return layer


def test_transformer_encoder_layer_runs_as_a_keras_block_and_back(tmp_path):
    layer = _encoder_layer()
    x = np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32)
    with torch.no_grad():
        want = layer(torch.from_numpy(x)).numpy()
    torch.save(layer.state_dict(), tmp_path / "encoder.pt")
    _encoder_block().save(tmp_path / "template.keras")
    receipt = ckptkit.convert(
        tmp_path / "encoder.pt",
        tmp_path / "encoder.keras",
        layout="keras",
        options={"template": tmp_path / "template.keras"},
    )
    assert receipt.verified and receipt.renamed["self_attn/value/bias"] == "self_attn.in_proj_bias"
    assert np.abs(_run(keras.saving.load_model(tmp_path / "encoder.keras"), x) - want).max() <= TOLERANCE

    block = _encoder_block()
    _randomize_keras(block)
    block.save(tmp_path / "trained.keras")
    ckptkit.convert(tmp_path / "trained.keras", tmp_path / "back.safetensors", layout="torch")
    fresh = _encoder_layer()
    fresh.load_state_dict(safetensors_torch.load_file(tmp_path / "back.safetensors"), strict=True)
    with torch.no_grad():
        assert np.abs(fresh(torch.from_numpy(x)).numpy() - _run(block, x)).max() <= TOLERANCE


@pytest.mark.parametrize("make", pairs.ATTENTION, ids=lambda m: m.__name__)
def test_attention_round_trips_restore_every_bit(tmp_path, make):
    pair = make()
    sd = _state_dict(pair.torch_model)
    first = next(iter(sd))
    sd[first].view(-1)[:2] = -0.0  # a sign a sloppy copy would lose
    safetensors_torch.save_file(sd, tmp_path / "sd.safetensors")
    ckptkit.convert(tmp_path / "sd.safetensors", tmp_path / "k.h5", layout="keras", layout_hints=pair.hints)
    ckptkit.convert(tmp_path / "k.h5", tmp_path / "back.safetensors", layout="torch")
    _same_bits(sd, safetensors_torch.load_file(tmp_path / "back.safetensors"))

    _randomize_keras(pair.keras_model)
    pair.keras_model.save_weights(tmp_path / "k.weights.h5")
    ckptkit.convert(tmp_path / "k.weights.h5", tmp_path / "t.safetensors", layout="torch", layout_hints=pair.hints)
    ckptkit.convert(tmp_path / "t.safetensors", tmp_path / "back.weights.h5", layout="keras")
    with ckptkit.load(tmp_path / "k.weights.h5") as a, ckptkit.load(tmp_path / "back.weights.h5") as b:
        assert a.names() == b.names()
        for name in a.names():
            assert a.read_tensor(name).tobytes() == b.read_tensor(name).tobytes(), name
    fresh = make()
    fresh.keras_model.load_weights(tmp_path / "back.weights.h5")
    assert np.array_equal(fresh.keras_out(), pair.keras_out())


@pytest.mark.parametrize("separate", [False, True], ids=["in_proj_weight", "q_k_v_proj_weight"])
def test_attention_without_a_head_count_is_refused_with_the_hint(tmp_path, cli, separate):
    mha = nn.MultiheadAttention(8, 2, kdim=6 if separate else None, vdim=6 if separate else None)
    safetensors_torch.save_file({f"enc.attn.{k}": v.detach() for k, v in mha.state_dict().items()},
                                tmp_path / "sd.safetensors")  # fmt: skip
    result = cli("convert", tmp_path / "sd.safetensors", tmp_path / "out.weights.h5", "--layout", "keras")
    assert_one_line_error(result, "enc.attn is an attention layer (nn.MultiheadAttention)", "'enc.attn=mha:HEADS'")
    assert "--template" in result.stderr and not (tmp_path / "out.weights.h5").exists()
    with pytest.raises(LayoutAmbiguityError, match="8 query features do not split into 3 heads"):
        ckptkit.convert(tmp_path / "sd.safetensors", tmp_path / "o.h5", layout="keras", layout_hints=["enc.attn=mha:3"])
    receipt = ckptkit.convert(
        tmp_path / "sd.safetensors", tmp_path / "o.h5", layout="keras", layout_hints=["enc.attn=mha:2"]
    )
    assert receipt.renamed["enc.attn/key/kernel"] == (
        "enc.attn.k_proj_weight" if separate else "enc.attn.in_proj_weight"
    )


def test_grouped_query_attention_needs_its_key_value_heads(tmp_path):
    pair = pairs.grouped_query_attention()
    safetensors_torch.save_file(_state_dict(pair.torch_model), tmp_path / "sd.safetensors")
    with pytest.raises(LayoutAmbiguityError, match="grouped-query attention has 2 key/value heads: 'attn=gqa:4x2'"):
        ckptkit.convert(tmp_path / "sd.safetensors", tmp_path / "k.h5", layout="keras", layout_hints=["attn=mha:4"])
    with pytest.raises(LayoutAmbiguityError, match="not grouped-query attention with 4 query and 1 key/value heads"):
        ckptkit.convert(tmp_path / "sd.safetensors", tmp_path / "k.h5", layout="keras", layout_hints=["attn=gqa:4x1"])
    for bad, message in (
        ("attn=gqa:4", "HEADSxKV_HEADS"),
        ("attn=gqa:4x3", "do not split evenly"),
        ("a=mha:2x2", "HEADS"),
    ):
        with pytest.raises(UsageError, match=message):
            ckptkit.convert(tmp_path / "sd.safetensors", tmp_path / "k.h5", layout="keras", layout_hints=[bad])
    pair.keras_model.save(tmp_path / "template.keras")  # the template says 4 and 2
    receipt = ckptkit.convert(
        tmp_path / "sd.safetensors",
        tmp_path / "k.keras",
        layout="keras",
        options={"template": tmp_path / "template.keras"},
    )
    assert receipt.renamed["attn/key/kernel"] == "attn.k_proj.weight"
    assert np.abs(_run(keras.saving.load_model(tmp_path / "k.keras"), pair.x) - pair.torch_out()).max() <= TOLERANCE


def test_einsum_dense_is_translated_by_its_equation_never_as_a_convolution(tmp_path, cli):
    x = keras.Input((5, 8))
    heads = keras.Model(x, L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3), bias_axes="de", name="proj")(x))
    heads.save(tmp_path / "heads.keras")
    heads.save_weights(tmp_path / "heads.weights.h5")
    result = cli("convert", tmp_path / "heads.keras", tmp_path / "t.safetensors", "--layout", "torch")
    assert_one_line_error(result, "proj is a Keras EinsumDense computing 'abc,cde->abde' with bias on 'de'")
    result = cli("convert", tmp_path / "heads.weights.h5", tmp_path / "t.safetensors", "--layout", "torch")
    assert_one_line_error(result, "does not record its equation", "'proj=dense'")
    assert not (tmp_path / "t.safetensors").exists()

    dense_like = keras.Model(x, L.EinsumDense("abc,cd->abd", output_shape=(None, 4), bias_axes="d", name="proj")(x))
    _randomize_keras(dense_like)
    dense_like.save(tmp_path / "dense_like.keras")
    ckptkit.convert(tmp_path / "dense_like.keras", tmp_path / "t.safetensors", layout="torch")
    linear = nn.Linear(8, 4)
    linear.load_state_dict(
        {k.removeprefix("proj."): v for k, v in safetensors_torch.load_file(tmp_path / "t.safetensors").items()},
        strict=True,
    )
    xs = np.random.default_rng(2).standard_normal((2, 5, 8)).astype(np.float32)
    with torch.no_grad():
        assert np.abs(linear(torch.from_numpy(xs)).numpy() - _run(dense_like, xs)).max() <= TOLERANCE


def test_attention_is_recognised_by_its_projection_names_where_the_class_is_unknown(tmp_path):
    """Keras names without any class record (a plain dict of arrays): query/key/value/attention_output."""
    pair = pairs.attention_narrow_keys()
    _randomize_keras(pair.keras_model)
    pair.keras_model.save_weights(tmp_path / "k.weights.h5")
    with ckptkit.load(tmp_path / "k.weights.h5") as ckpt:
        arrays = {n: np.array(ckpt.read_tensor(n)) for n in ckpt.names()}
    assert set(arrays) == {f"mha/{p}/kernel" for p in ("query", "key", "value", "attention_output")}
    ckptkit.save(arrays, tmp_path / "bare.safetensors")
    ckptkit.convert(tmp_path / "bare.safetensors", tmp_path / "t.safetensors", layout="torch")
    fresh = pairs.attention_narrow_keys()
    fresh.torch_model.load_state_dict(safetensors_torch.load_file(tmp_path / "t.safetensors"), strict=True)
    assert np.abs(fresh.torch_out() - pair.keras_out()).max() <= TOLERANCE


@keras.saving.register_keras_serializable(package="ckptkit_tests")
class _Scale(L.Layer):
    """A layer of its own with a 2-D ``kernel``: a name the rules know, a class they do not."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], input_shape[-1]), name="kernel")

    def call(self, x):
        return x * keras.ops.diagonal(self.kernel)


def test_a_known_class_without_a_rule_is_refused_not_translated_by_shape(tmp_path):
    x = keras.Input((4,))
    keras.Model(x, _Scale(name="scale")(x)).save(tmp_path / "custom.h5")  # legacy .h5 names it scale/kernel
    with pytest.raises(
        LayoutAmbiguityError, match=r"scale is a Keras ckptkit_tests>_Scale, which no rule translates \('scale=keep'\)"
    ):
        ckptkit.convert(tmp_path / "custom.h5", tmp_path / "t.safetensors", layout="torch")

    x = keras.Input((5, 8))
    keras.Model(x, L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3), name="proj")(x)).save(
        tmp_path / "template.keras"
    )
    safetensors_torch.save_file(
        _state_dict(nn.ModuleDict({"proj": nn.Linear(8, 6, bias=False)})), tmp_path / "sd.safetensors"
    )
    with pytest.raises(LayoutAmbiguityError, match="proj: the template's layer is a Keras EinsumDense computing"):
        ckptkit.convert(
            tmp_path / "sd.safetensors",
            tmp_path / "k.keras",
            layout="keras",
            options={"template": tmp_path / "template.keras"},
        )


class _TiedLM(nn.Module):
    """Token embedding and output projection sharing one weight, as GPT-like models do."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(20, 8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.tok(ids))))


def _datasets(group) -> dict:
    """Every dataset path (a hard-linked dataset under each of its paths) -> its HDF5 object address."""
    found = {}
    for key, obj in group.items():
        path = f"{group.name.rstrip('/')}/{key}"
        if isinstance(obj, h5py.Dataset) and not path.startswith("/.ckptkit_padding"):
            found[path] = h5py.h5o.get_info(obj.id).addr
        elif isinstance(obj, h5py.Group):
            found.update(_datasets(obj))
    return found


def _tied_lm() -> "_TiedLM":
    torch.manual_seed(0)
    return _TiedLM().eval()


def test_a_tie_translated_alike_stays_one_stored_tensor(tmp_path):
    torch.save(_tied_lm().state_dict(), tmp_path / "lm.pt")
    ckptkit.convert(tmp_path / "lm.pt", tmp_path / "plain.h5")
    ckptkit.convert(tmp_path / "lm.pt", tmp_path / "kept.h5", layout="keras", layout_hints=["*=keep"])
    # One copy of the 20x8 table, as without --layout (two copies would add 640 bytes).
    assert (tmp_path / "kept.h5").stat().st_size < (tmp_path / "plain.h5").stat().st_size + 640
    with ckptkit.load(tmp_path / "kept.h5") as ckpt:
        assert ckpt.aliases == {"head.weight": "tok.weight"}
    ckptkit.convert(tmp_path / "kept.h5", tmp_path / "back.pt", layout="torch")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert back["head.weight"].data_ptr() == back["tok.weight"].data_ptr()

    class Pair(nn.Module):  # two tables tied under Keras names of their own: hard links Keras reads
        def __init__(self) -> None:
            super().__init__()
            self.enc_emb = nn.Embedding(6, 4)
            self.dec_emb = nn.Embedding(6, 4)
            self.dec_emb.weight = self.enc_emb.weight

    torch.save(Pair().state_dict(), tmp_path / "two.pt")
    table = torch.load(tmp_path / "two.pt", weights_only=True)["enc_emb.weight"].numpy()
    for ext in (".weights.h5", ".h5"):
        ckptkit.convert(tmp_path / "two.pt", tmp_path / f"two{ext}", layout="keras")
        with h5py.File(tmp_path / f"two{ext}") as f:
            found = _datasets(f)
            assert len(found) == 2 and len(set(found.values())) == 1, (ext, found)  # one dataset, linked twice
        ids = keras.Input((3,), dtype="int64")
        model = keras.Model(
            ids, L.Add()([L.Embedding(6, 4, name="enc_emb")(ids), L.Embedding(6, 4, name="dec_emb")(ids)])
        )
        model.load_weights(tmp_path / f"two{ext}")
        assert all(np.array_equal(keras.ops.convert_to_numpy(w), table) for w in model.weights), ext
    model.save(tmp_path / "template.keras")  # a template wants a copy per layer: both names fill one
    ckptkit.convert(
        tmp_path / "two.pt", tmp_path / "two.keras", layout="keras", options={"template": tmp_path / "template.keras"}
    )
    loaded = keras.saving.load_model(tmp_path / "two.keras")
    assert all(np.array_equal(keras.ops.convert_to_numpy(w), table) for w in loaded.weights)
    ckptkit.convert(tmp_path / "two.keras", tmp_path / "two_back.pt", layout="torch")
    back = torch.load(tmp_path / "two_back.pt", weights_only=True)
    assert back["dec_emb.weight"].data_ptr() == back["enc_emb.weight"].data_ptr()


def test_a_tie_across_a_layout_change_comes_back_tied(tmp_path):
    lm = _tied_lm()
    ids = np.random.default_rng(0).integers(0, 20, (2, 5))
    with torch.no_grad():
        want = lm(torch.from_numpy(ids)).numpy()
    torch.save(lm.state_dict(), tmp_path / "lm.pt")
    hints = ["tok=embedding", "head=dense"]
    ckptkit.convert(tmp_path / "lm.pt", tmp_path / "k.h5", layout="keras", layout_hints=hints)
    x = keras.Input((5,), dtype="int64")
    h = L.Dense(8, activation="tanh", name="mix")(L.Embedding(20, 8, name="tok")(x))
    model = keras.Model(x, L.Dense(20, use_bias=False, name="head")(h))
    model.load_weights(tmp_path / "k.h5")  # Keras needs the table and its transpose: two tensors
    assert np.abs(_run(model, ids) - want).max() <= TOLERANCE

    ckptkit.convert(tmp_path / "k.h5", tmp_path / "back.pt", layout="torch")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert back["head.weight"].data_ptr() == back["tok.weight"].data_ptr()
    fresh = _tied_lm()
    fresh.load_state_dict(back, strict=True)
    with torch.no_grad():
        assert np.abs(fresh(torch.from_numpy(ids)).numpy() - want).max() <= TOLERANCE

    # Trained apart in Keras: the two no longer agree, so they come back as two tensors, with a note.
    ckptkit.convert(tmp_path / "k.h5", tmp_path / "k.safetensors")
    state = safetensors_torch.load_file(tmp_path / "k.safetensors")
    state["head/kernel"][0, 0] += 1.0
    with ckptkit.load(tmp_path / "k.safetensors") as ckpt:
        metadata = dict(ckpt.metadata)
    safetensors_torch.save_file(state, tmp_path / "k2.safetensors", metadata=metadata)
    receipt = ckptkit.convert(tmp_path / "k2.safetensors", tmp_path / "apart.pt", layout="torch")
    assert any("head.weight was tied to tok.weight; their values differ now" in n for n in receipt.notes)
    apart = torch.load(tmp_path / "apart.pt", weights_only=True)
    assert apart["head.weight"].data_ptr() != apart["tok.weight"].data_ptr()


def _reversible_lm() -> "keras.Model":
    ids = keras.Input((5,), dtype="int64")
    table = L.ReversibleEmbedding(20, 8, name="tok")
    return keras.Model(ids, table(L.Dense(8, activation="tanh", name="mix")(table(ids)), reverse=True))


def test_a_tied_output_projection_is_a_reversible_embedding_in_keras(tmp_path, cli):
    """One table in Keras too: ReversibleEmbedding(tie_weights=True), from a hint or from the template."""
    lm = _tied_lm()
    ids = np.random.default_rng(0).integers(0, 20, (2, 5))
    with torch.no_grad():
        want = lm(torch.from_numpy(ids)).numpy()
    torch.save(lm.state_dict(), tmp_path / "lm.pt")
    result = cli(
        "convert", tmp_path / "lm.pt", tmp_path / "x.h5", "--layout", "keras", "--layout-hint", "tok=embedding"
    )
    assert_one_line_error(result, "'head=dense' or 'head=embedding', or, tied to tok.weight", "'tok=reversible'")
    _reversible_lm().save(tmp_path / "template.keras")
    runs = {
        "k.weights.h5": {"layout_hints": ["tok=reversible"]},
        "k.h5": {"layout_hints": ["tok=reversible"]},
        "k.keras": {"options": {"template": tmp_path / "template.keras"}},
    }
    for out, how in runs.items():
        receipt = ckptkit.convert(tmp_path / "lm.pt", tmp_path / out, layout="keras", **how)
        assert "head.weight" in receipt.dropped, out
        with ckptkit.load(tmp_path / out) as ckpt:
            assert sorted(n for n in ckpt.names() if not n.startswith("optimizer/")) == [
                "mix/bias",
                "mix/kernel",
                "tok/embeddings",
            ]
        if out == "k.keras":
            model = keras.saving.load_model(tmp_path / out)
        else:
            model = _reversible_lm()
            model.load_weights(tmp_path / out)
        assert np.abs(_run(model, ids) - want).max() <= TOLERANCE, out
        ckptkit.convert(tmp_path / out, tmp_path / "back.pt", layout="torch", force=True)
        back = torch.load(tmp_path / "back.pt", weights_only=True)
        assert back["head.weight"].data_ptr() == back["tok.weight"].data_ptr(), out
        _same_bits(lm.state_dict(), back)

    # Which name holds the storage is the file's order: with the projection first, the table is the alias.
    state = lm.state_dict()
    torch.save({k: state[k] for k in ("head.weight", "mix.weight", "mix.bias", "tok.weight")}, tmp_path / "hf.pt")
    with ckptkit.load(tmp_path / "hf.pt") as ckpt:
        assert ckpt.aliases == {"tok.weight": "head.weight"}
    receipt = ckptkit.convert(
        tmp_path / "hf.pt", tmp_path / "hf.weights.h5", layout="keras", layout_hints=["tok=reversible"]
    )
    assert "head.weight" in receipt.dropped
    model = _reversible_lm()
    model.load_weights(tmp_path / "hf.weights.h5")
    assert np.abs(_run(model, ids) - want).max() <= TOLERANCE
    ckptkit.convert(tmp_path / "hf.weights.h5", tmp_path / "hf_back.pt", layout="torch")
    back = torch.load(tmp_path / "hf_back.pt", weights_only=True)
    assert back["head.weight"].data_ptr() == back["tok.weight"].data_ptr()
    _same_bits(state, back)
