import json
from dataclasses import replace

import numpy as np
import pytest
import safetensors.numpy

import ckptkit
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.hashing.manifest import build_manifest
from ckptkit.verify import VerifyOptions, verify
from tests.conftest import FIXTURES

INDEX = "model.safetensors.index.json"


def _arrays():
    rng = np.random.default_rng(7)
    return {
        "embed.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "layer.0.weight": rng.standard_normal((4, 4)).astype(np.float32),
        "layer.1.weight": rng.standard_normal((4, 4)).astype(np.float32),
        "head.bias": rng.standard_normal(8).astype(np.float16),
    }


def _sharded(folder, layout=None, weight_map=None, total_size=None):
    """Shards written by the safetensors library and an index the way transformers writes them."""
    arrays = _arrays()
    layout = layout or {
        "model-00001-of-00002.safetensors": ["embed.weight", "layer.0.weight"],
        "model-00002-of-00002.safetensors": ["layer.1.weight", "head.bias"],
    }
    folder.mkdir(exist_ok=True)
    for shard, names in layout.items():
        safetensors.numpy.save_file({n: arrays[n] for n in names}, folder / shard, metadata={"format": "pt"})
    if weight_map is None:
        weight_map = {n: shard for shard, names in layout.items() for n in names}
    if total_size is None:
        total_size = sum(a.nbytes for a in arrays.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (folder / INDEX).write_text(json.dumps(index, indent=2))
    return folder / INDEX


def _errors(report):
    return sorted((f.check, f.tensor) for f in report.findings if f.severity == "error")


def test_a_consistent_sharded_checkpoint_passes_and_hashes_like_one_file(tmp_path):
    index = _sharded(tmp_path / "m")
    for path in (index, index.parent):
        report = verify([path])
        assert report.findings == [] and report.exit_code == 0
        assert report.targets[0].tensors == 4
    single = tmp_path / "single.safetensors"
    ckptkit.save(_arrays(), single)
    sharded_manifest = build_manifest(index.parent)
    assert sharded_manifest.root == build_manifest(single).root
    shards = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    assert set(sharded_manifest.files) == {INDEX, *shards}
    manifest = tmp_path / "single.json"
    manifest.write_text(json.dumps(build_manifest(single).to_dict()))
    assert verify([index.parent], VerifyOptions(manifest=manifest)).exit_code == 0


def test_missing_shard(tmp_path):
    index = _sharded(tmp_path / "m")
    (index.parent / "model-00002-of-00002.safetensors").unlink()
    report = verify([index])
    assert _errors(report) == [("index.shard-missing", "")]
    assert "model-00002-of-00002.safetensors" in report.findings[0].message
    with pytest.raises(CorruptCheckpointError):
        build_manifest(index)


def test_tensor_not_in_its_shard(tmp_path):
    arrays = _arrays()
    weight_map = {n: "model-00001-of-00002.safetensors" for n in ["embed.weight", "layer.0.weight"]}
    weight_map |= {n: "model-00002-of-00002.safetensors" for n in ["layer.1.weight", "head.bias", "lost.weight"]}
    size = sum(a.nbytes for a in arrays.values())
    report = verify([_sharded(tmp_path / "m", weight_map=weight_map, total_size=size)])
    assert _errors(report) == [("index.tensor-missing", "lost.weight")]


def test_tensor_in_two_shards_and_one_unlisted(tmp_path):
    layout = {
        "model-00001-of-00002.safetensors": ["embed.weight", "layer.0.weight", "head.bias"],
        "model-00002-of-00002.safetensors": ["layer.1.weight", "head.bias"],
    }
    weight_map = {"embed.weight": layout_first(layout), "layer.1.weight": "model-00002-of-00002.safetensors"}
    weight_map["head.bias"] = "model-00002-of-00002.safetensors"
    report = verify([_sharded(tmp_path / "m", layout, weight_map)])
    assert _errors(report) == [
        ("index.tensor-duplicate", "head.bias"),
        ("index.tensor-unlisted", "layer.0.weight"),
    ]


def layout_first(layout):
    return next(iter(layout))


def test_tensor_listed_twice_in_the_index(tmp_path):
    index = _sharded(tmp_path / "m")
    text = index.read_text().replace(
        '"head.bias": "model-00002-of-00002.safetensors"',
        '"head.bias": "model-00002-of-00002.safetensors", "head.bias": "model-00001-of-00002.safetensors"',
    )
    index.write_text(text)
    assert ("index.tensor-duplicate", "head.bias") in _errors(verify([index]))


def test_total_size_mismatch_and_absence(tmp_path):
    assert _errors(verify([_sharded(tmp_path / "a", total_size=12345)])) == [("index.total-size", "")]
    index = _sharded(tmp_path / "b")
    data = json.loads(index.read_text())
    del data["metadata"]
    index.write_text(json.dumps(data))
    report = verify([index])
    assert [(f.severity, f.check) for f in report.findings] == [("warning", "index.total-size")]
    assert report.exit_code == 0 and verify([index], VerifyOptions(strict=True)).exit_code == 1


def test_orphan_shard_and_stale_single_file(tmp_path):
    index = _sharded(tmp_path / "m")
    safetensors.numpy.save_file({"old": np.ones(2, np.float32)}, index.parent / "model-00003-of-00003.safetensors")
    safetensors.numpy.save_file(_arrays(), index.parent / "model.safetensors")  # left by another tool
    report = verify([index])
    assert _errors(report) == [("index.orphan-shard", "")]
    assert "model-00003-of-00003.safetensors" in report.findings[0].message
    warnings = [f for f in report.findings if f.severity == "warning"]
    assert [w.check for w in warnings] == ["index.orphan-shard"] and "model.safetensors" in warnings[0].message


def test_series_gap(tmp_path):
    layout = {
        "model-00001-of-00003.safetensors": ["embed.weight", "layer.0.weight"],
        "model-00003-of-00003.safetensors": ["layer.1.weight", "head.bias"],
    }
    report = verify([_sharded(tmp_path / "m", layout)])
    assert _errors(report) == [("index.series-gap", "")]
    assert "model-00002-of-00003.safetensors" in report.findings[0].message


@pytest.mark.parametrize("escape", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors"])
def test_shard_path_escaping_the_folder_is_not_opened(tmp_path, escape):
    outside = tmp_path / "outside.safetensors"
    safetensors.numpy.save_file({"x": np.ones(2, np.float32)}, outside)
    weight_map = {"x": escape}
    index = _sharded(tmp_path / "m", layout={"model-00001-of-00001.safetensors": list(_arrays())})
    data = json.loads(index.read_text())
    data["weight_map"] |= weight_map
    index.write_text(json.dumps(data))
    report = verify([index])
    assert ("index.path-escape", "") in _errors(report)
    assert all(escape.split("/")[-1] not in f for f in report.targets[0].files)


def test_a_shard_linked_from_elsewhere_is_read_and_a_dangling_link_is_missing(tmp_path):
    index = _sharded(tmp_path / "m")
    outside = tmp_path / "elsewhere.safetensors"
    link = index.parent / "model-00002-of-00002.safetensors"
    link.rename(outside)
    link.symlink_to(outside)  # as in the Hugging Face cache, whose snapshots link into ../../blobs
    assert verify([index]).findings == []
    assert build_manifest(index).root == build_manifest(tmp_path / "m").root
    outside.unlink()
    assert _errors(verify([index])) == [("index.shard-missing", "")]


def test_invalid_index(tmp_path):
    index = _sharded(tmp_path / "m")
    index.write_text('{"metadata": {}, "weight_map": {"a": 3}}')
    assert _errors(verify([index])) == [("index.invalid", "")]
    index.write_text("{")
    assert _errors(verify([index])) == [("index.invalid", "")]


def test_truncated_and_lfs_pointer_shards(tmp_path):
    index = _sharded(tmp_path / "m")
    first = index.parent / "model-00001-of-00002.safetensors"
    first.write_bytes(first.read_bytes()[:-10])
    second = index.parent / "model-00002-of-00002.safetensors"
    second.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 99\n")
    report = verify([index.parent])
    assert _errors(report) == [("file.lfs-pointer", ""), ("safetensors.truncated", "layer.0.weight")]


def test_cli_folder_with_two_indexes_needs_one_named(tmp_path, cli):
    index = _sharded(tmp_path / "m")
    (index.parent / "pytorch_model.bin.index.json").write_text(index.read_text())
    r = cli("hash", index.parent)
    assert r.code == 2 and "several shard indexes" in r.stderr
    r = cli("verify", index, "--json")
    assert r.code == 0, r.stdout
    assert json.loads(r.stdout)["targets"][0]["format"] == "sharded"


def test_folder_holding_one_file_is_verified_as_that_file(tmp_path, cli):
    folder = tmp_path / "m"
    folder.mkdir()
    ckptkit.save(_arrays(), folder / "model.safetensors")
    report = verify([folder])
    target = report.targets[0]
    assert (target.format, target.files, report.exit_code) == ("safetensors", [str(folder / "model.safetensors")], 0)
    assert "safetensors" in target.groups, "the file's own structure checks ran"
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-10])
    assert _errors(verify([folder])) == [("safetensors.truncated", "head.bias")]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no weights here")
    r = cli("verify", empty, "--json")
    assert r.code == 1
    finding = json.loads(r.stdout)["findings"][0]
    assert finding["check"] == "file.unreadable" and "no checkpoint ckptkit can read" in finding["message"]


SHARD_1, SHARD_2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


@pytest.mark.parametrize(
    ("layout", "weight_map", "kind", "fragment"),
    [
        pytest.param(None, {"lost.weight": SHARD_2}, "tensor-missing", "no shard holds it", id="listed-not-held"),
        pytest.param(None, {"layer.0.weight": SHARD_2}, "tensor-missing", f"it is in {SHARD_1!r}", id="elsewhere"),
        pytest.param(
            {SHARD_1: ["embed.weight", "layer.0.weight", "head.bias"], SHARD_2: ["layer.1.weight", "head.bias"]},
            {},
            "tensor-duplicate",
            "is in two shards",
            id="twice",
        ),
        pytest.param(None, {"layer.0.weight": None}, "tensor-unlisted", "which the index does not list", id="unlisted"),
    ],
)
def test_reader_hash_and_verify_judge_placement_alike(tmp_path, layout, weight_map, kind, fragment):
    layout = layout or {SHARD_1: ["embed.weight", "layer.0.weight"], SHARD_2: ["layer.1.weight", "head.bias"]}
    full = {n: shard for shard, names in layout.items() for n in names} | weight_map
    index = _sharded(tmp_path / "m", layout, {n: s for n, s in full.items() if s is not None})
    placement = [f for f in verify([index]).findings if f.check.startswith("index.tensor-")]
    assert [f.check for f in placement] == [f"index.{kind}"]
    assert fragment in placement[0].message and placement[0].file == str(index)
    with pytest.raises(CorruptCheckpointError) as read:
        ckptkit.load(index)
    with pytest.raises(CorruptCheckpointError) as hashed:
        build_manifest(index)
    assert read.value.message == hashed.value.message == placement[0].message
    assert read.value.path == hashed.value.path == str(index)


def test_a_keras_index_is_judged_only_for_tensors_in_two_shards(tmp_path):
    from ckptkit.io.shards.index import ShardIndex

    keras = ShardIndex(tmp_path / "model.weights.json", {}, ("a.weights.h5", "b.weights.h5"), {})
    faults = keras.placement_faults({"a.weights.h5": ["dense/kernel"], "b.weights.h5": ["dense/kernel", "x/bias"]})
    assert [(f.kind, f.tensor) for f in faults] == [("tensor-duplicate", "dense/kernel")]


def test_an_index_that_cannot_be_read_is_a_finding_on_the_command_line_too(tmp_path, cli):
    (tmp_path / INDEX).write_text('{"weight_map": 5}')
    result = cli("verify", tmp_path, "--json")
    assert result.code == 1, result.stderr
    [finding] = json.loads(result.stdout)["findings"]
    assert finding["check"] == "index.invalid" and "weight_map" in finding["message"]


TIED = FIXTURES / "tied_lm_fp32.pt"  # head.weight tied to embed.weight


def _tied_copies(tmp_path):
    """The tied model as torch.save wrote it, as one safetensors file, and in safetensors shards."""
    single = tmp_path / "single" / "model.safetensors"
    sharded = tmp_path / "sharded" / "model.safetensors"
    for dst, options in ((single, {}), (sharded, {"shard_size": "1KB"})):
        dst.parent.mkdir()
        ckptkit.convert(TIED, dst, to_format="safetensors", options=options)
    index = sharded.parent / INDEX
    doc = json.loads(index.read_text())
    assert doc["metadata"]["ckptkit:aliases"] == {"head.weight": "embed.weight"}
    assert len(set(doc["weight_map"].values())) > 1, "the model did not shard"
    return {"pt": TIED, "single": single, "sharded": index}


def test_tied_weights_hash_and_verify_alike_in_one_file_and_in_shards(tmp_path):
    copies = _tied_copies(tmp_path)
    manifests = {kind: build_manifest(path) for kind, path in copies.items()}
    assert len({m.root for m in manifests.values()}) == 1
    for m in manifests.values():
        assert m.tensors["head.weight"] == replace(m.tensors["embed.weight"], alias_of="embed.weight")
    for made_from, m in manifests.items():
        path = tmp_path / f"{made_from}.json"
        path.write_text(json.dumps(m.to_dict()))
        for kind, target in copies.items():
            report = verify([target], VerifyOptions(manifest=path))
            assert report.exit_code == 0, (made_from, kind, [f.to_dict() for f in report.findings])
    # Left out, the tensor a tie shares makes the tied name a tensor of its own, sharded or not.
    kept = [build_manifest(p, exclude=["embed.weight"]).tensors for p in copies.values()]
    assert kept[0] == kept[1] == kept[2] and kept[0]["head.weight"].alias_of is None


@pytest.mark.parametrize(
    ("aliases", "kind", "fragment"),
    [
        pytest.param({"head.weight": "nope"}, "alias-target", "no shard holds a tensor 'nope'", id="no-such-tensor"),
        pytest.param({"norm.bias": "embed.weight"}, "alias-name", "as a tensor of its own", id="tie-over-a-tensor"),
    ],
)
def test_a_wrong_tie_in_the_index_is_judged_alike_by_reader_hash_and_verify(tmp_path, aliases, kind, fragment):
    index = _tied_copies(tmp_path)["sharded"]
    doc = json.loads(index.read_text())
    doc["metadata"]["ckptkit:aliases"] = aliases
    index.write_text(json.dumps(doc))
    errors = [f for f in verify([index]).findings if f.severity == "error"]
    assert [(f.check, f.tensor) for f in errors] == [(f"index.{kind}", next(iter(aliases)))]
    assert fragment in errors[0].message and errors[0].file == str(index)
    with pytest.raises(CorruptCheckpointError) as read:
        ckptkit.load(index)
    with pytest.raises(CorruptCheckpointError) as hashed:
        build_manifest(index)
    assert read.value.message == hashed.value.message == errors[0].message


def test_an_alias_map_that_is_not_one_makes_the_index_invalid(tmp_path):
    index = _sharded(tmp_path / "m")
    doc = json.loads(index.read_text())
    doc["metadata"]["ckptkit:aliases"] = ["head", "embed.weight"]
    index.write_text(json.dumps(doc))
    report = verify([index])
    assert _errors(report) == [("index.invalid", "")]
    assert "ckptkit:aliases must map names to names" in report.findings[0].message
    with pytest.raises(CorruptCheckpointError, match="must map names to names"):
        build_manifest(index)


def test_a_tie_into_a_shard_that_could_not_be_opened_is_not_judged(tmp_path):
    from ckptkit.io.shards.index import ShardIndex

    index = ShardIndex(
        tmp_path / INDEX, {"a": SHARD_1, "b": SHARD_2}, (SHARD_1, SHARD_2), {}, aliases={"t": "b", "u": "ghost"}
    )
    assert index.alias_faults({SHARD_1: ["a"]}) == [], "b's shard and any unlisted tensor may be the missing one's"
    faults = index.alias_faults({SHARD_1: ["a"], SHARD_2: ["b"]})
    assert [(f.kind, f.tensor) for f in faults] == [("alias-target", "u")]
