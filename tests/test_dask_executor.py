"""Shard-parallel convert, hash and verify on a Dask cluster of two worker processes: the same
bytes, manifests and reports as a local run, and a complete output when a worker dies mid-job."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ckptkit
from ckptkit.core.errors import CorruptCheckpointError, UsageError
from ckptkit.core.model import MemoryCheckpoint
from ckptkit.hashing.manifest import build_manifest
from ckptkit.io.workers import executor_spec, shard_executor, use_executor
from ckptkit.verify import VerifyOptions, verify
from tests.conftest import assert_one_line_error
from tests.helpers import sample_array

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """One cluster for the module: two worker processes of one thread each."""
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, host="127.0.0.1"
        ) as c,
        distributed.Client(c) as client,
    ):
        yield c, client


@pytest.fixture
def address(cluster) -> str:
    return "dask://" + cluster[0].scheduler_address.removeprefix("tcp://")


def _arrays(blocks: int = 6) -> dict[str, np.ndarray]:
    arrays = {"embed.weight": sample_array("float16", (64, 32), seed=0)}
    for i in range(blocks):
        arrays[f"layers.{i}.attn.weight"] = sample_array("bfloat16", (32, 32), seed=10 + i)
        arrays[f"layers.{i}.mlp.weight"] = sample_array("float32", (32, 64), seed=20 + i)
    return arrays


def _sharded_source(folder: Path, fmt: str = "safetensors", aliases: dict[str, str] | None = None) -> Path:
    folder.mkdir()
    name = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
    ckptkit.save(MemoryCheckpoint(_arrays(), aliases=aliases), folder / name, fmt, shard_size="10KB")
    index = folder / f"{name}.index.json"
    assert index.is_file()
    return index


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_executor_spec_is_checked(monkeypatch):
    monkeypatch.delenv("CKPTKIT_EXECUTOR", raising=False)
    assert executor_spec() == "local"
    monkeypatch.setenv("CKPTKIT_EXECUTOR", "dask://10.0.0.1:8786")
    assert executor_spec() == "dask://10.0.0.1:8786"
    with use_executor("local"):
        assert executor_spec() == "local"
        assert not shard_executor().remote
    for bad in ("dask://", "spark://h:1", "threads"):
        with pytest.raises(UsageError, match="dask://HOST:PORT"):
            executor_spec(bad)


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_sharded_convert_on_the_cluster_equals_the_local_one(tmp_path, address, fmt):
    src = _sharded_source(tmp_path / "src", fmt)
    target = "model.safetensors" if fmt == "torch" else "pytorch_model.bin"
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    ckptkit.convert(src, local / target, options={"shard_size": "12KB"})
    with use_executor(address):
        receipt = ckptkit.convert(src, remote / target, options={"shard_size": "12KB"})
    assert receipt.verified
    assert len(_tree(local)) > 3  # several shards and the index
    assert _tree(remote) == _tree(local)


def test_hash_and_verify_on_the_cluster_equal_the_local_ones(tmp_path, address):
    src = _sharded_source(tmp_path / "src", aliases={"lm_head.weight": "embed.weight"})
    local = build_manifest(src)
    with use_executor(address):
        remote = build_manifest(src)
    assert remote.to_dict() == local.to_dict()
    assert local.tensors["lm_head.weight"].alias_of == "embed.weight", "the index's tie reaches the worker"
    # A damaged shard: the same findings, in the same order, either way.
    shards = sorted(src.parent.glob("model-*.safetensors"))
    data = bytearray(shards[1].read_bytes())
    data[-3:] = b"\xff\xff\xff"
    shards[1].write_bytes(bytes(data))
    opts = VerifyOptions(no_nan=True)
    here = verify([src], opts)
    with use_executor(address):
        there = verify([src], opts)
    assert [t.__dict__ for t in there.targets] == [t.__dict__ for t in here.targets]
    assert here.targets[0].files and here.targets[0].tensors == len(_arrays())


def test_a_refusal_on_a_worker_is_raised_as_it_is(tmp_path, address):
    src = _sharded_source(tmp_path / "src")
    shard = sorted(src.parent.glob("model-*.safetensors"))[2]
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated: the header promises more data
    with use_executor(address), pytest.raises(CorruptCheckpointError):
        build_manifest(src)


def test_the_cli_takes_executor(tmp_path, address, cli):
    src = _sharded_source(tmp_path / "src")
    there = cli("hash", src, "--executor", address)
    assert there.code == 0, there.stderr
    assert json.loads(there.stdout) == build_manifest(src).to_dict()
    assert_one_line_error(cli("hash", src, "--executor", "spark://x:1"), "spark://x:1", "dask://HOST:PORT")


def _slow_shards(seconds: float) -> None:
    """Run on each worker: every shard write there takes ``seconds`` longer."""
    from ckptkit.io.shards import write

    original = getattr(write, "_original_write_shard", write.write_shard)
    write._original_write_shard = original

    def slow(task):
        time.sleep(seconds)
        return original(task)

    write.write_shard = slow


def test_a_worker_killed_mid_job_leaves_a_complete_output(tmp_path, cluster, address):
    _c, client = cluster
    src = _sharded_source(tmp_path / "src")
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    ckptkit.convert(src, local / "pytorch_model.bin", options={"shard_size": "4KB"})
    assert len(_tree(local)) > 8
    client.run(_slow_shards, 0.3)
    victim = next(iter(client.run(os.getpid).values()))
    # Killed while the conversion's tasks run: its tasks go to the other worker.
    killer = threading.Timer(0.8, os.kill, (victim, signal.SIGKILL))
    killer.start()
    try:
        with use_executor(address):
            ckptkit.convert(src, remote / "pytorch_model.bin", options={"shard_size": "4KB"})
    finally:
        killer.join()
    assert victim not in client.run(os.getpid).values()
    assert _tree(remote) == _tree(local)
