"""Sharded output (--shard-size) and sharded input (indexes, folders), checked against the
Hugging Face libraries that write and load them."""

import json
import os

import numpy as np
import pytest

import ckptkit
from ckptkit.core.dtypes import by_name
from ckptkit.core.errors import CorruptCheckpointError, OutputExistsError, UsageError
from ckptkit.core.model import MemoryCheckpoint, TensorInfo
from ckptkit.io.shards.write import plan, shard_names, split
from tests.conftest import assert_one_line_error
from tests.helpers import assert_same_tensors, sample_array


def _layers(n: int = 8, dtype: str = "float16") -> dict[str, np.ndarray]:
    """A small transformer-like state dict: an embedding, then blocks of attention and MLP weights."""
    arrays = {"embed.weight": sample_array(dtype, (64, 32), seed=0)}
    for i in range(n):
        arrays[f"layers.{i}.attn.weight"] = sample_array(dtype, (32, 32), seed=10 + i)
        arrays[f"layers.{i}.mlp.weight"] = sample_array(dtype, (32, 64), seed=20 + i)
        arrays[f"layers.{i}.norm.bias"] = sample_array("float32", (32,), seed=30 + i)
    return arrays


def test_split_matches_huggingface_hub():
    import torch
    from huggingface_hub import split_torch_state_dict_into_shards

    sizes = [6000, 6000, 2000, 6000, 2000, 2000, 12000, 100, 100]
    state = {f"t{i}": torch.zeros(n, dtype=torch.uint8) for i, n in enumerate(sizes)}
    hub = split_torch_state_dict_into_shards(state, max_shard_size=10000)
    infos = [TensorInfo(k, by_name("uint8"), (v.numel(),)) for k, v in state.items()]
    ours = split(infos, 10000)
    assert [[t.name for t in g] for g in ours] == list(hub.filename_to_tensors.values())
    assert shard_names("model.safetensors", len(ours)) == list(hub.filename_to_tensors)


def test_sharded_write_index_fields_and_round_trip(tmp_path):
    arrays = _layers()
    out = tmp_path / "model.safetensors"
    receipt = ckptkit.save(arrays, out, shard_size="10KB")
    index_path = tmp_path / "model.safetensors.index.json"
    assert receipt.destination == str(index_path)
    index = json.loads(index_path.read_text())
    assert set(index) == {"metadata", "weight_map"}
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in arrays.values())
    assert index["metadata"]["total_parameters"] == sum(a.size for a in arrays.values())
    assert list(index["weight_map"]) == list(arrays)
    shard_files = sorted(set(index["weight_map"].values()))
    assert shard_files == shard_names("model.safetensors", len(shard_files)) and len(shard_files) > 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*shard_files, index_path.name])
    import safetensors

    for name, file_name in index["weight_map"].items():  # each shard is a plain safetensors file
        with safetensors.safe_open(tmp_path / file_name, framework="numpy") as f:
            assert name in f.keys()  # noqa: SIM118 - safe_open has no __contains__
    with ckptkit.load(tmp_path) as ckpt:
        assert ckpt.format_name == "sharded"
        assert_same_tensors(arrays, ckpt)
        assert ckpt.info("layers.3.mlp.weight").location.startswith(index["weight_map"]["layers.3.mlp.weight"])


def test_sharded_to_single_file_is_byte_identical_to_direct_write(tmp_path):
    src = tmp_path / "src.safetensors"
    ckptkit.save(_layers(dtype="bfloat16"), src, metadata={"format": "pt"})
    ckptkit.convert(src, tmp_path / "sh.safetensors.index.json", options={"shard_size": "9KB"})
    receipt = ckptkit.convert(tmp_path / "sh.safetensors.index.json", tmp_path / "back.safetensors")
    assert receipt.verified
    assert (tmp_path / "back.safetensors").read_bytes() == src.read_bytes()


def test_one_shard_is_a_plain_file_unless_an_index_is_named(tmp_path):
    arrays = {"a": np.ones(4, np.float32)}
    receipt = ckptkit.save(arrays, tmp_path / "m.safetensors", shard_size="5GB")
    assert receipt.files == [str(tmp_path / "m.safetensors")]
    assert any("one shard" in n for n in receipt.notes)
    ckptkit.save(arrays, tmp_path / "n.safetensors.index.json")
    assert json.loads((tmp_path / "n.safetensors.index.json").read_text())["weight_map"] == {
        "a": "n-00001-of-00001.safetensors"
    }


def test_aliases_and_extras_survive_sharding(tmp_path):
    ckpt = MemoryCheckpoint(
        {"emb": np.arange(600, dtype=np.float32), "b": np.ones(600, np.float32)}, aliases={"head": "emb"}
    )
    ckpt.extras = {"epoch": 2}
    ckptkit.save(ckpt, tmp_path / "t.safetensors", shard_size="2KB")
    with ckptkit.load(tmp_path / "t.safetensors.index.json") as back:
        assert back.aliases == {"head": "emb"}
        assert back.extras == {"epoch": 2}
        assert_same_tensors(
            {"emb": ckpt.read_tensor("emb"), "head": ckpt.read_tensor("emb"), "b": ckpt.read_tensor("b")}, back
        )


def test_folder_output_and_cli(tmp_path, cli):
    src = tmp_path / "src.safetensors"
    ckptkit.save(_layers(), src)
    folder = tmp_path / "out"
    folder.mkdir()
    r = cli("convert", src, folder, "--to", "safetensors", "--shard-size", "0.01MB", "--json")
    assert r.code == 0, r.stderr
    receipt = json.loads(r.stdout)
    assert receipt["destination"] == str(folder / "model.safetensors.index.json") and receipt["verified"]
    r = cli("inspect", folder, "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["tensor_count"] == len(_layers())
    assert_one_line_error(cli("convert", src, folder, "--shard-size", "1MB"), "--to")
    assert_one_line_error(cli("convert", src, tmp_path / "x.safetensors", "--shard-size", "lots"), "lots", "5GB")


def test_existing_shard_stops_the_write_before_anything_is_written(tmp_path):
    src = tmp_path / "src.safetensors"
    ckptkit.save(_layers(), src)
    with ckptkit.load(src) as ckpt:
        shards = plan(ckpt, tmp_path / "model.safetensors", "10KB")
    assert shards is not None and len(shards) > 3
    taken = shards[-2].final
    taken.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        ckptkit.convert(src, tmp_path / "model.safetensors", options={"shard_size": "10KB"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([taken.name, "src.safetensors"])
    assert taken.read_bytes() == b"keep"


def test_index_name_for_a_format_without_shards_is_refused(tmp_path, monkeypatch):
    from ckptkit import registry

    def write_plain(ckpt, ctx):
        ctx.output.temp_for().write_bytes(b"plain")

    plain = registry.Format("plain", "test format", (".plain",), lambda head, path: False, write=write_plain)
    monkeypatch.setitem(registry._load(), "plain", plain)
    with pytest.raises(UsageError, match="cannot write plain as shards"):
        ckptkit.save({"a": np.ones(2)}, tmp_path / "a.plain.index.json")
    with pytest.raises(UsageError, match="--shard-size cannot be used when writing plain"):
        ckptkit.save({"a": np.ones(2)}, tmp_path / "a.plain", shard_size="1KB")
    assert list(tmp_path.iterdir()) == []


# Reading what the Hugging Face libraries write, and the reverse.


@pytest.fixture(scope="module")
def bert():
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    return BertModel(cfg)


def _numpy_state(model) -> dict[str, np.ndarray]:
    from ckptkit.core.torch_interop import torch_to_numpy

    return {k: torch_to_numpy(v) for k, v in model.state_dict().items()}


def test_transformers_and_hub_load_what_ckptkit_shards(tmp_path, bert):
    import torch
    from huggingface_hub import load_torch_model
    from transformers import AutoModel

    want = _numpy_state(bert)
    folder = tmp_path / "bert"
    folder.mkdir()
    bert.config.save_pretrained(folder)
    receipt = ckptkit.save(want, folder / "model.safetensors", shard_size="12KB")
    assert len(receipt.files) >= 3  # two or more shards and the index
    loaded = AutoModel.from_pretrained(folder)
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, bert.state_dict()[name]), name
    fresh = type(bert)(bert.config)
    result = load_torch_model(fresh, folder, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, bert.state_dict()[name]), name


def test_reads_what_transformers_and_hub_shard(tmp_path, bert):
    import torch
    from huggingface_hub import save_torch_state_dict

    want = _numpy_state(bert)
    bert.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    with ckptkit.load(tmp_path / "hf") as ckpt:
        assert len(ckpt.shards) == 2
        assert_same_tensors(want, ckpt)
        assert ckpt.metadata == {"format": "pt"}
    state = {k: v.to(torch.bfloat16) for k, v in bert.state_dict().items()}
    (tmp_path / "hub").mkdir()
    save_torch_state_dict(state, tmp_path / "hub", max_shard_size="5KB")
    with ckptkit.load(tmp_path / "hub" / "model.safetensors.index.json") as ckpt:
        assert len(ckpt.shards) > 2
        assert_same_tensors(_numpy_state_of(state), ckpt)
    receipt = ckptkit.convert(tmp_path / "hub", tmp_path / "one.safetensors")
    assert receipt.verified


def _numpy_state_of(state) -> dict[str, np.ndarray]:
    from ckptkit.core.torch_interop import torch_to_numpy

    return {k: torch_to_numpy(v) for k, v in state.items()}


# Broken or hostile indexes.


def _sharded(tmp_path) -> tuple:
    ckptkit.save(_layers(2), tmp_path / "model.safetensors", shard_size="5KB")
    index_path = tmp_path / "model.safetensors.index.json"
    return index_path, json.loads(index_path.read_text())


def _first(doc: dict) -> str:
    return min(doc["weight_map"].values())


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d["weight_map"].update({"layers.0.attn.weight": "../" + _first(d)}), "not a file inside"),
        (lambda d: d["weight_map"].update({"layers.0.attn.weight": "/etc/passwd"}), "not a file inside"),
        (lambda d: d["weight_map"].update({"ghost": "model-00009-of-00009.safetensors"}), "missing"),
        (lambda d: d["weight_map"].update({"ghost": _first(d)}), "no shard holds it"),
        (lambda d: d["weight_map"].pop("layers.0.norm.bias"), "does not list"),
        (lambda d: d["weight_map"].update({"embed.weight": 3}), "not to a shard file name"),
        (lambda d: d.pop("weight_map"), "weight_map"),
        (lambda d: d["weight_map"].update({"ghost": "model.safetensors.index.json"}), "shard index itself"),
    ],
)
def test_bad_indexes_are_named(tmp_path, cli, change, fragment):
    index_path, doc = _sharded(tmp_path)
    change(doc)
    index_path.write_text(json.dumps(doc))
    with pytest.raises(CorruptCheckpointError, match=fragment):
        ckptkit.load(index_path)
    assert_one_line_error(cli("inspect", tmp_path), str(index_path), fragment)


def test_tensor_in_two_shards_is_refused(tmp_path):
    index_path, doc = _sharded(tmp_path)
    first, second = sorted(set(doc["weight_map"].values()))[:2]
    with ckptkit.load(tmp_path / first) as a:
        name = a.names()[0]
        extra = {name: np.array(a.read_tensor(name))}
    with ckptkit.load(tmp_path / second) as b:
        extra.update({n: np.array(b.read_tensor(n)) for n in b.names()})
    ckptkit.save(extra, tmp_path / second, force=True)
    with pytest.raises(CorruptCheckpointError, match="in two shards"):
        ckptkit.load(index_path)


def test_not_json_index(tmp_path, cli):
    bad = tmp_path / "model.safetensors.index.json"
    bad.write_text('{"weight_map": {')
    assert_one_line_error(cli("inspect", bad), str(bad), "not valid JSON")


def test_folder_with_one_checkpoint_and_with_several(tmp_path, cli):
    (tmp_path / "config.json").write_text("{}")
    ckptkit.save({"a": np.ones(3, np.float32)}, tmp_path / "weights.safetensors")
    with ckptkit.load(tmp_path) as ckpt:
        assert ckpt.format_name == "safetensors" and ckpt.names() == ["a"]
    ckptkit.save({"b": np.ones(3, np.float32)}, tmp_path / "other.safetensors")
    assert_one_line_error(cli("inspect", tmp_path), "several checkpoints", "other.safetensors", "weights.safetensors")
    ckptkit.save({"c": np.ones(3, np.float32)}, tmp_path / "model.safetensors")
    with ckptkit.load(tmp_path) as ckpt:
        assert ckpt.names() == ["c"]  # the name transformers loads wins
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(cli("inspect", empty), str(empty), "no checkpoint")


def test_folder_with_a_forced_file_format_says_what_to_do(tmp_path, cli):
    ckptkit.save({"a": np.ones(3, np.float32)}, tmp_path / "model.safetensors")
    assert_one_line_error(cli("inspect", tmp_path, "--from", "safetensors"), str(tmp_path), "leave out --from")
    r = cli("inspect", tmp_path, "--from", "sharded", "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["tensors"][0]["name"] == "a"


def test_keras_sharded_weights_read_like_the_unsharded_file(tmp_path):
    from ckptkit import registry

    if not any(ext.endswith(".h5") for f in registry.formats() if f.can_read for ext in f.extensions):
        pytest.skip("this build has no Keras weights format to read the shards with")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    # Named layers: Keras states a layer's name only in the shard where the layer starts, so the
    # shard continuing "hidden" must take its name from the first one.
    names = ("encoder", "hidden", "head")
    layers = [keras.layers.Dense(n, name=name) for n, name in zip((256, 256, 10), names, strict=True)]
    model = keras.Sequential([keras.Input((64,)), *layers])
    model.save_weights(tmp_path / "whole.weights.h5")
    (tmp_path / "sharded").mkdir()
    model.save_weights(tmp_path / "sharded" / "model.weights.json", max_shard_size=0.0003)
    assert len(list((tmp_path / "sharded").glob("model_*.weights.h5"))) == 2
    with ckptkit.load(tmp_path / "whole.weights.h5") as whole, ckptkit.load(tmp_path / "sharded") as sharded:
        assert sharded.format_name == "sharded" and len(sharded.shards) == 2
        assert sorted(sharded.names()) == sorted(whole.names())
        assert {n.split("/")[0] for n in sharded.names()} == set(names)
        assert_same_tensors({n: whole.read_tensor(n) for n in whole.names()}, sharded)


def test_pytorch_shards_load_in_transformers_and_hub_and_read_back(tmp_path, bert):
    import torch
    from huggingface_hub import load_torch_model, save_torch_state_dict
    from transformers import AutoModel

    want = _numpy_state(bert)
    folder = tmp_path / "bert"
    folder.mkdir()
    bert.config.save_pretrained(folder)
    receipt = ckptkit.save(want, folder, "torch", shard_size="12KB")
    assert receipt.destination == str(folder / "pytorch_model.bin.index.json")
    shard_files = sorted(p.name for p in folder.glob("pytorch_model-*.bin"))
    assert shard_files == shard_names("pytorch_model.bin", len(shard_files)) and len(shard_files) >= 2
    for f in shard_files:  # each shard is a plain torch.save file of the tensors the index gives it
        index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
        shard = torch.load(folder / f, weights_only=True)
        assert set(shard) == {k for k, v in index["weight_map"].items() if v == f}
    loaded = AutoModel.from_pretrained(folder)
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, bert.state_dict()[name]), name
    fresh = type(bert)(bert.config)
    result = load_torch_model(fresh, folder, strict=True, safe=False)
    assert not result.missing_keys and not result.unexpected_keys
    with ckptkit.load(folder) as back:
        assert back.format_name == "sharded" and back.shard_format == "torch"
        assert_same_tensors(want, back)
    hub = tmp_path / "hub"
    hub.mkdir()
    save_torch_state_dict(bert.state_dict(), hub, max_shard_size="10KB", safe_serialization=False)
    with ckptkit.load(hub / "pytorch_model.bin.index.json") as ckpt:
        assert len(ckpt.shards) > 1
        assert_same_tensors(want, ckpt)
    ckptkit.convert(hub, tmp_path / "hub.safetensors")  # sharded .bin to one safetensors file, verified
    ckptkit.save(want, hub / "model.safetensors")
    with ckptkit.load(hub) as ckpt:  # with both, the safetensors checkpoint wins, as in transformers
        assert ckpt.format_name == "safetensors"


# Writing over an earlier checkpoint in the other layout, or with other shards.


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _loaded_by_transformers(folder) -> dict[str, np.ndarray]:
    from transformers import AutoModel

    return _numpy_state(AutoModel.from_pretrained(folder))


def test_force_replaces_the_earlier_checkpoint_whatever_its_layout(tmp_path, cli, bert):
    import torch

    new = _numpy_state(bert)
    old_model = type(bert)(bert.config)
    with torch.no_grad():
        for p in old_model.parameters():
            p.zero_()
    old = _numpy_state(old_model)
    new_src, old_src = tmp_path / "new.safetensors", tmp_path / "old.safetensors"
    ckptkit.save(new, new_src)
    ckptkit.save(old, old_src)
    folder = tmp_path / "model"
    old_model.save_pretrained(folder)  # config.json and model.safetensors, as transformers saves them
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    keep = {n: (folder / n).read_bytes() for n in ("config.json", "tokenizer.json")}

    before = _files(folder)
    assert_one_line_error(cli("convert", new_src, folder, "--to", "safetensors", "--shard-size", "12KB"),
                          "model.safetensors", "--force")  # fmt: skip
    assert _files(folder) == before

    def convert(src, *args):
        r = cli("convert", src, folder, "--to", "safetensors", "--force", *args)
        assert r.code == 0, r.stderr
        files = _files(folder)
        assert {n: files[n] for n in keep} == keep
        return sorted(files)

    # A single file, then shards: the single file goes, or transformers would load it.
    names = convert(new_src, "--shard-size", "12KB")
    many = shard_names("model.safetensors", len(names) - 3)
    assert names == sorted(["config.json", "tokenizer.json", "model.safetensors.index.json", *many])
    assert_same_tensors(new, _as_checkpoint(_loaded_by_transformers(folder)))
    # Shards, then fewer shards with other names: the old series goes.
    names = convert(old_src, "--shard-size", "20KB")
    fewer = shard_names("model.safetensors", len(names) - 3)
    assert names == sorted(["config.json", "tokenizer.json", "model.safetensors.index.json", *fewer])
    assert 1 < len(fewer) < len(many)
    assert_same_tensors(old, _as_checkpoint(_loaded_by_transformers(folder)))
    # Shards, then a single file: the index and its shards go.
    assert convert(new_src) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert_same_tensors(new, _as_checkpoint(_loaded_by_transformers(folder)))


def _as_checkpoint(arrays: dict[str, np.ndarray]) -> MemoryCheckpoint:
    return MemoryCheckpoint(arrays)


def test_earlier_files_stay_when_the_write_fails(tmp_path, monkeypatch):
    import ckptkit.io.atomic

    src = tmp_path / "src.safetensors"
    ckptkit.save(_layers(), src)
    folder = tmp_path / "out"
    folder.mkdir()
    ckptkit.save({"old": np.zeros(3, np.float32)}, folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    before = _files(folder)
    real_replace = os.replace

    def crash_at_the_index(staged, final):
        if str(final).endswith(".index.json"):
            raise OSError("disk full")
        real_replace(staged, final)

    monkeypatch.setattr(ckptkit.io.atomic.os, "replace", crash_at_the_index)
    with pytest.raises(OSError, match="disk full"):
        ckptkit.convert(src, folder, to_format="safetensors", force=True, options={"shard_size": "10KB"})
    monkeypatch.undo()
    after = _files(folder)
    assert {n: after[n] for n in before} == before  # the single file was not removed before the index was in place
    assert not (folder / "model.safetensors.index.json").exists()


def test_previous_files_are_the_checkpoints_own(tmp_path):
    from ckptkit.io.shards.write import previous_files

    names = [
        "config.json", "tokenizer.json", "model.safetensors", "other.safetensors", "pytorch_model.bin",
        "model-a.safetensors", "model-00003-of-00007.safetensors", "model-00001-of-00002.bin",
    ]  # fmt: skip
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path.parent / "x.safetensors").write_bytes(b"x")
    weight_map = {"a": "model-a.safetensors", "b": "../x.safetensors", "c": "config.json", "d": "missing.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    found = previous_files(tmp_path / "model.safetensors")
    assert [p.name for p in found] == [
        "model.safetensors", "model.safetensors.index.json", "model-a.safetensors", "model-00003-of-00007.safetensors",
    ]  # fmt: skip
    assert previous_files(tmp_path / "model.safetensors.index.json") == found
    assert [p.name for p in previous_files(tmp_path / "pytorch_model.bin")] == ["pytorch_model.bin"]
