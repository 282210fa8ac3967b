"""diff on a Dask cluster of two worker processes: shard pairs are tasks on the workers, and the
report equals the local one; trusted pickle globals (--allow-global) reach the workers, and a
checkpoint a worker cannot reopen fails with ckptkit's own error."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

import ckptkit
from ckptkit.core.errors import UnsafeCheckpointError
from ckptkit.core.model import MemoryCheckpoint
from ckptkit.core.trust import trusting
from ckptkit.io.workers import use_executor
from tests import test_dask_executor as dask_tests
from tests.helpers import sample_array

distributed = pytest.importorskip("distributed")
cluster = dask_tests.cluster  # the module's LocalCluster of two worker processes
address = dask_tests.address


@dataclass
class TrainConfig:
    """A class a training script pickles beside its tensors."""

    lr: float = 0.1

    def __reduce__(self):  # pickled as a call, which a pickle may make only of trusted globals
        return (TrainConfig, (self.lr,))


def _diff_tasks(stream) -> int:
    """How many diff_shards tasks a task stream recorded."""
    return sum(1 for t in stream.data if str(t["key"]).startswith("diff_shards-"))


def _drifted(arrays: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, x in arrays.items():
        noise = rng.standard_normal(x.shape).astype(np.float32) * 1e-2
        out[name] = (x.astype(np.float32) + noise).astype(x.dtype)
    return out


def test_sharded_diff_on_the_cluster_equals_the_local_one(tmp_path, cluster, address, cli):
    arrays = dask_tests._arrays()
    a = dask_tests._sharded_source(tmp_path / "a")
    (tmp_path / "b").mkdir()
    # Other shard boundaries on the b side: a pair of shards is whatever the tensors' shards make.
    b = tmp_path / "b" / "model.safetensors"
    ckptkit.save(MemoryCheckpoint(_drifted(arrays, 1)), b, "safetensors", shard_size="7KB")
    b = tmp_path / "b" / "model.safetensors.index.json"
    local = ckptkit.diff(a, b).to_dict()
    with use_executor(address), distributed.get_task_stream(cluster[1]) as stream:
        there = ckptkit.diff(a, b).to_dict()
    assert _diff_tasks(stream) > 2, "shard pairs ran as tasks on the cluster"
    assert there == local
    assert local["summary"]["compared"] == len(arrays) and local["total"]["max_abs"] > 0
    here = cli("diff", a, b, "--json")
    remote = cli("diff", a, b, "--json", env={"CKPTKIT_EXECUTOR": address})
    assert remote.code == here.code == 0, remote.stderr
    assert json.loads(remote.stdout) == json.loads(here.stdout)


def test_allow_global_reaches_the_workers(tmp_path, cluster, address, cli):
    torch = pytest.importorskip("torch")
    paths = []
    for seed in (0, 1):
        state = {f"w{i}": torch.from_numpy(sample_array("float32", (16, 16), seed=seed * 10 + i)) for i in range(3)}
        state["config"] = TrainConfig()
        paths.append(tmp_path / f"{seed}.pt")
        torch.save(state, paths[-1])
    trusted = f"{__name__}.TrainConfig"
    with pytest.raises(UnsafeCheckpointError, match="--allow-global"):
        ckptkit.diff(*paths)
    with trusting([trusted]):
        local = ckptkit.diff(*paths).to_dict()
        with use_executor(address), distributed.get_task_stream(cluster[1]) as stream:
            there = ckptkit.diff(*paths).to_dict()
        assert _diff_tasks(stream) == 1, "the pair of files was one task on a worker"
    assert there == local
    result = cli("diff", *paths, "--json", "--executor", address, "--allow-global", trusted)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout) == local


def test_a_checkpoint_gone_before_a_worker_reopens_it_is_a_ckptkit_error(tmp_path, address):
    from ckptkit import registry
    from ckptkit.core.errors import CkptkitError
    from ckptkit.io.workers import shard_executor

    path = tmp_path / "model.safetensors"
    ckptkit.save(dask_tests._arrays(1), path)
    with registry.open_checkpoint(path) as ckpt, use_executor(address):
        path.unlink()  # this process keeps its open file; a worker reopens the path
        with pytest.raises(CkptkitError, match=r"model\.safetensors"):
            shard_executor().map(len, [ckpt])
