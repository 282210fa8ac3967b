"""Checkpoints inside a Hugging Face hub cache, where every snapshot file is a symbolic link into
``blobs/``: read, verified and hashed like the same files in a plain folder; index entries that
name files outside the snapshot are still refused."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from ckptkit.hashing.manifest import build_manifest
from ckptkit.io.paths import is_inside_name
from ckptkit.verify import verify
from tests.conftest import assert_one_line_error

INDEX = "model.safetensors.index.json"
REVISION = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".safetensors", ".bin")


def _blob_name(path: Path) -> str:
    """The hub names a blob by its ETag: SHA-256 for LFS files, the git blob SHA-1 for the others."""
    data = path.read_bytes()
    if path.name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def hub_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """Put the files of ``source`` in ``cache`` as huggingface_hub's downloads do, and return the
    snapshot folder: content in ``blobs/<etag>``, ``refs/main`` naming the revision, and each
    snapshot entry a relative link (``snapshots/<rev>/model.safetensors -> ../../blobs/<etag>``)."""
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    names = sorted(p.name for p in source.iterdir())
    for name in names:
        blob = repo / "blobs" / _blob_name(source / name)
        blob.write_bytes((source / name).read_bytes())
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    # The layout is the hub's own if the hub's cache scanner and lookup agree.
    scanned = scan_cache_dir(cache)
    assert not scanned.warnings, scanned.warnings
    [repo_info] = scanned.repos
    [revision] = repo_info.revisions
    assert (repo_info.repo_id, revision.commit_hash, revision.refs) == (repo_id, REVISION, frozenset({"main"}))
    assert sorted(f.file_name for f in revision.files) == names
    assert all(f.blob_path.parent == repo / "blobs" for f in revision.files)
    assert try_to_load_from_cache(repo_id, names[-1], cache_dir=cache) == str(snapshot / names[-1])
    return snapshot


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """A small state dict as huggingface_hub saves it: sharded (an index and shards), and as one file."""
    import torch
    from huggingface_hub import save_torch_state_dict

    torch.manual_seed(0)
    state = {f"encoder.layer.{i}.{part}": torch.randn(32, 32) for i in range(3) for part in ("query", "value")}
    state["embeddings.weight"] = torch.randn(64, 32).to(torch.bfloat16)
    out = {"sharded": tmp_path_factory.mktemp("sharded"), "single": tmp_path_factory.mktemp("single")}
    for kind, size in (("sharded", "10KB"), ("single", "5GB")):
        save_torch_state_dict(state, out[kind], max_shard_size=size)
        (out[kind] / "config.json").write_text('{"model_type": "bert"}')
    assert len(list(out["sharded"].glob("model-*.safetensors"))) > 2 and not (out["single"] / INDEX).exists()
    return out


def _root(result) -> str:
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)["root"]


@pytest.mark.parametrize("kind", ["sharded", "single"])
def test_a_cache_snapshot_works_like_a_plain_folder(tmp_path, cli, saved, kind):
    plain = saved[kind]
    snapshot = hub_cache(tmp_path / "hub", "org/tiny-bert", plain)
    checkpoint = snapshot / (INDEX if kind == "sharded" else "model.safetensors")
    assert checkpoint.is_symlink()

    r = cli("verify", snapshot)
    assert r.code == 0 and r.stdout.startswith("ok "), (r.stdout, r.stderr)
    assert verify([checkpoint]).findings == []
    hashed = cli("hash", snapshot)
    assert _root(hashed) == build_manifest(plain).root
    assert set(json.loads(hashed.stdout)["files"]) == {p.name for p in plain.iterdir() if p.name != "config.json"}

    r = cli("inspect", snapshot, "--json")
    assert r.code == 0, r.stderr
    want = {}
    for f in plain.glob("*.safetensors"):
        want |= safetensors.numpy.load_file(f)
    assert {t["name"] for t in json.loads(r.stdout)["tensors"]} == set(want)

    out = tmp_path / "one.safetensors"
    r = cli("convert", snapshot, out)
    assert r.code == 0, r.stderr
    got = safetensors.numpy.load_file(out)
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)

    r = cli("diff", snapshot, plain, "--json", "--fail-on", "max_abs>0,missing")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["summary"]["identical"] == len(want)


@pytest.mark.parametrize("bad", ["../outside.safetensors", "ABSOLUTE"])
def test_an_index_naming_a_file_outside_the_snapshot_is_refused(tmp_path, cli, saved, bad):
    snapshot = hub_cache(tmp_path / "hub", "org/tiny-bert", saved["sharded"])
    doc = json.loads((snapshot / INDEX).read_text())
    tensor, shard = next(iter(doc["weight_map"].items()))
    if bad == "ABSOLUTE":
        bad = str(tmp_path / "outside.safetensors")
    outside = snapshot / bad  # an absolute ``bad`` replaces the folder
    outside.write_bytes((snapshot / shard).read_bytes())  # the file exists: only its name is at fault
    doc["weight_map"][tensor] = bad
    (snapshot / INDEX).unlink()  # replaced the way a newer download of the index would be: a new blob
    blob = snapshot.parents[1] / "blobs" / "edited-index"
    blob.write_text(json.dumps(doc))
    (snapshot / INDEX).symlink_to(os.path.relpath(blob, snapshot))

    report = verify([snapshot])
    assert report.exit_code == 1 and [f.check for f in report.findings] == ["index.path-escape"]
    assert bad in report.findings[0].message
    assert_one_line_error(cli("hash", snapshot), bad, "not a file inside")
    assert_one_line_error(cli("inspect", snapshot), bad, "not a file inside")
    assert_one_line_error(cli("convert", snapshot, tmp_path / "out.safetensors"), bad, "not a file inside")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(
    ("name", "inside"),
    [
        ("model-00001-of-00002.safetensors", True),
        ("sub/shard.safetensors", True),
        ("./shard.safetensors", True),
        ("", False),
        (".", False),
        ("..", False),
        ("../shard.safetensors", False),
        ("sub/../../shard.safetensors", False),
        ("/etc/passwd", False),
        ("//server/share/shard.safetensors", False),
        ("C:shard.safetensors", False),
        ("C:\\shard.safetensors", False),
        ("..\\shard.safetensors", False),
        ("sub\\shard.safetensors", False),
        ("shard.safetensors:stream", False),
        ("shard\0.safetensors", False),
    ],
)
def test_shard_names_are_judged_as_written(name, inside):
    assert is_inside_name(name) is inside
