"""Checkpoints written to an S3 server on localhost (moto): the objects equal a local conversion's
files byte for byte, an existing checkpoint is kept without --force, and a failed upload leaves
no object behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ckptkit
from ckptkit.core.errors import OutputExistsError, UploadError, UsageError
from ckptkit.io.source import use_storage_options
from tests import test_remote_sources as sources
from tests.conftest import assert_one_line_error
from tests.helpers import sample_array

s3fs = pytest.importorskip("s3fs")
s3 = sources.s3  # the moto server fixture
BUCKET = sources.BUCKET
torch = pytest.importorskip("torch")

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _torch_checkpoint(path: Path) -> Path:
    state = {f"layers.{i}.weight": torch.from_numpy(sample_array("float32", (64, 64), seed=i)) for i in range(6)}
    state["norm.bias"] = torch.from_numpy(sample_array("float32", (64,), seed=9))
    torch.save(state, path)
    return path


def _objects(s3, prefix: str) -> dict[str, bytes]:
    _endpoint, client = s3
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_sharded_convert_to_a_bucket_folder_equals_the_local_convert(tmp_path, s3, cli):
    src = _torch_checkpoint(tmp_path / "m.pt")
    option = f"endpoint_url={s3[0]}"
    here = cli("convert", src, f"{tmp_path}/out/", "--to", "safetensors", "--shard-size", "40KB")
    assert here.code == 0, here.stderr
    there = cli("convert", src, f"s3://{BUCKET}/sharded/out/", "--to", "safetensors", "--shard-size", "40KB",
                "--storage-option", option, "--json", env=ENV)  # fmt: skip
    assert there.code == 0, there.stderr
    receipt = json.loads(there.stdout)
    local = _files(tmp_path / "out")
    assert len(local) > 3 and "model.safetensors.index.json" in local
    assert _objects(s3, "sharded/out/") == local
    assert receipt["destination"] == f"s3://{BUCKET}/sharded/out/model.safetensors.index.json"
    assert receipt["files"][-1] == receipt["destination"] and receipt["verified"] is True
    with ckptkit.load(tmp_path / "out" / "model.safetensors.index.json") as written:
        assert sorted(written.names()) == sorted(torch.load(src, weights_only=True))


def test_a_single_file_url_and_the_force_rules(tmp_path, s3):
    src = _torch_checkpoint(tmp_path / "m.pt")
    url = f"s3://{BUCKET}/single/model.safetensors"
    ckptkit.convert(src, tmp_path / "model.safetensors")
    with use_storage_options({"endpoint_url": s3[0]}):
        receipt = ckptkit.convert(src, url)
        assert receipt.destination == url and receipt.files == [url]
        assert _objects(s3, "single/") == {"model.safetensors": (tmp_path / "model.safetensors").read_bytes()}

        other = _torch_checkpoint(tmp_path / "other.pt")
        with torch.no_grad():
            state = torch.load(other, weights_only=True)
            state["norm.bias"] += 1
            torch.save(state, other)
        with pytest.raises(OutputExistsError, match="--force"):
            ckptkit.convert(other, url)
        assert _objects(s3, "single/") == {"model.safetensors": (tmp_path / "model.safetensors").read_bytes()}

        # Shards over the single file: refused without --force, and with it the single file goes.
        folder = f"s3://{BUCKET}/single/"
        with pytest.raises(OutputExistsError, match=r"model\.safetensors"):
            ckptkit.convert(other, folder, to_format="safetensors", options={"shard_size": "40KB"})
        assert list(_objects(s3, "single/")) == ["model.safetensors"]
        ckptkit.convert(other, folder, to_format="safetensors", options={"shard_size": "40KB"}, force=True)
        ckptkit.convert(other, f"{tmp_path}/again/", to_format="safetensors", options={"shard_size": "40KB"})
    assert _objects(s3, "single/") == _files(tmp_path / "again")


@pytest.mark.parametrize("fail_at", [2, -1], ids=["a-shard", "the-index"])
def test_a_failed_upload_leaves_no_object(tmp_path, s3, monkeypatch, fail_at):
    src = _torch_checkpoint(tmp_path / "m.pt")
    ckptkit.convert(src, f"{tmp_path}/out/", to_format="safetensors", options={"shard_size": "40KB"})
    count = len(list((tmp_path / "out").iterdir()))
    fail_at = count if fail_at == -1 else fail_at
    calls: list[str] = []
    original = s3fs.S3FileSystem._put_file

    async def flaky(self, lpath, rpath, **kwargs):
        calls.append(rpath)
        if len(calls) == fail_at:
            raise ConnectionResetError("connection reset by peer")
        return await original(self, lpath, rpath, **kwargs)

    # A new filesystem instance binds the patched coroutine (fsspec caches instances).
    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", flaky)
    try:
        with use_storage_options({"endpoint_url": s3[0]}), pytest.raises(UploadError, match="connection reset"):
            ckptkit.convert(src, f"s3://{BUCKET}/flaky/", to_format="safetensors", options={"shard_size": "40KB"})
    finally:
        monkeypatch.undo()
        s3fs.S3FileSystem.clear_instance_cache()
    assert len(calls) >= fail_at
    assert _objects(s3, "flaky/") == {}


def test_urls_that_take_no_writes_are_refused(tmp_path, cli):
    src = _torch_checkpoint(tmp_path / "m.pt")
    with pytest.raises(UsageError, match="cannot be written"):
        ckptkit.convert(src, "https://example.com/model.safetensors")
    result = cli("convert", src, "https://example.com/model.safetensors")
    assert_one_line_error(result, "https:// URLs cannot be written to")


def test_force_over_a_checkpoint_whose_data_files_keep_their_names_never_shows_its_main_file_over_new_data(
    tmp_path, s3, monkeypatch
):
    """A TensorFlow checkpoint's data file keeps its name from one write to the next: while a new
    one is uploaded (and after that upload fails), the old index must not stand over other data."""
    src = _torch_checkpoint(tmp_path / "m.pt")
    other = tmp_path / "other.pt"
    state = torch.load(src, weights_only=True)
    torch.save({k: v + 1 for k, v in state.items()}, other)
    url = f"s3://{BUCKET}/tf/ckpt-1.index"
    with use_storage_options({"endpoint_url": s3[0]}):
        ckptkit.convert(src, url)
    old = _objects(s3, "tf/")
    assert sorted(old) == ["ckpt-1.data-00000-of-00001", "ckpt-1.index"]

    seen: list[list[str]] = []
    original = s3fs.S3FileSystem._put_file

    async def flaky(self, lpath, rpath, **kwargs):
        seen.append(sorted(_objects(s3, "tf/")))  # what a reader could open at this moment
        if rpath.endswith(".index"):
            raise ConnectionResetError("connection reset by peer")
        return await original(self, lpath, rpath, **kwargs)

    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", flaky)
    try:
        with use_storage_options({"endpoint_url": s3[0]}), pytest.raises(UploadError, match="connection reset"):
            ckptkit.convert(other, url, force=True)
    finally:
        monkeypatch.undo()
        s3fs.S3FileSystem.clear_instance_cache()
    after = _objects(s3, "tf/")
    # The old index was never beside a data file it does not describe: gone before the data was
    # replaced, or still with its own data.
    assert len(seen) == 2 and "ckpt-1.index" not in seen[1]
    assert "ckpt-1.index" not in after or after == old
