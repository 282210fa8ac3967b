"""torch.distributed.checkpoint folders, read without torch and checked against what torch saved."""

import json
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

import ckptkit
from ckptkit.core.errors import CorruptCheckpointError, UnsafeCheckpointError, UnsupportedError
from tests.conftest import FIXTURES, REPO, assert_one_line_error
from tests.helpers import assert_same_tensors

TWO_RANKS = FIXTURES / "dcp_two_ranks"


def _expected_two_ranks() -> dict[str, np.ndarray]:
    with ckptkit.load(FIXTURES / "dcp_two_ranks.safetensors") as ckpt:
        return {n: np.array(ckpt.read_tensor(n)) for n in ckpt.names()}


def _dcp_save(state, folder) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is ... uninitialized, assuming a single process"
        dcp.save(state, checkpoint_id=folder)


@pytest.fixture
def saved(tmp_path):
    """A single-process dcp.save of several dtypes, nested names and non-tensor values."""
    import torch

    from ckptkit.core.torch_interop import torch_to_numpy

    gen = torch.Generator().manual_seed(5)
    tensors = {
        "w": torch.randn(6, 4, generator=gen),
        "half": torch.randn(3, 5, generator=gen).half(),
        "bf": torch.randn(7, generator=gen).bfloat16(),
        "ids": torch.arange(9, dtype=torch.int64).reshape(3, 3),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "column": torch.randn(5, 6, generator=gen)[:, 2:4],  # a non-contiguous view
    }
    state = {**tensors, "block": {"inner": torch.ones(2, 2)}, "epoch": 3, "name": "run-1"}
    folder = tmp_path / "ckpt"
    _dcp_save(state, folder)
    want = {k: torch_to_numpy(v) for k, v in tensors.items()}
    want["block.inner"] = np.ones((2, 2), np.float32)
    return folder, want


def test_single_process_save_reads_back_equal(saved):
    folder, want = saved
    with ckptkit.load(folder) as ckpt:
        assert ckpt.format_name == "dcp"
        assert_same_tensors(want, ckpt)
        assert ckpt.extras == {"epoch": 3, "name": "run-1"}
        assert ckpt.raw_extent("w") is not None  # saved whole: its bytes are copied as they lie
    for entry in (folder / ".metadata", folder / "__0_0.distcp"):
        with ckptkit.load(entry) as ckpt:
            assert sorted(ckpt.names()) == sorted(want)


def test_reading_imports_neither_torch_nor_torch_distributed(saved):
    folder, want = saved
    code = (
        "import sys, ckptkit\n"
        f"with ckptkit.load({str(folder)!r}) as c:\n"
        "    total = sum(int(c.read_tensor(n).size) for n in c.names())\n"
        "print(total, sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split(" ", 1) == [str(sum(a.size for a in want.values())), "[]\n"]


def test_two_ranks_chunks_are_assembled(tmp_path):
    want = _expected_two_ranks()
    with ckptkit.load(TWO_RANKS) as ckpt:
        assert_same_tensors(want, ckpt)
        assert ckpt.extras == {"step": 42, "optim.lr": 0.01, "optim.betas": [0.9, 0.999]}
        assert ckpt.info("model.rows.weight").location == "2 chunks in __0_0.distcp, __1_0.distcp"
        assert ckpt.raw_extent("model.cols.weight") is None
        assert ckpt.raw_extent("model.replicated") is not None


def test_convert_to_safetensors_and_torch(tmp_path, cli):
    want = _expected_two_ranks()
    r = cli("convert", TWO_RANKS, tmp_path / "model.safetensors", "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["verified"] is True
    import safetensors.torch
    import torch

    from ckptkit.core.torch_interop import torch_to_numpy

    got = safetensors.torch.load_file(tmp_path / "model.safetensors")
    assert {k: torch_to_numpy(v).tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in want.items()}
    receipt = ckptkit.convert(TWO_RANKS, tmp_path / "model.pt")
    assert receipt.verified
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)
    assert {k: torch_to_numpy(v).tobytes() for k, v in loaded.items() if k in want} == {
        k: v.tobytes() for k, v in want.items()
    }


# Damaged and hostile folders. The metadata is rewritten with torch's own classes, as a bug or an
# attacker would leave it.


def _rewrite_metadata(folder, change) -> None:
    import torch.distributed.checkpoint.metadata  # noqa: F401 - the classes the pickle names

    path = folder / ".metadata"
    meta = pickle.loads(path.read_bytes())  # the test wrote this file itself
    change(meta)
    path.write_bytes(pickle.dumps(meta))


def _copy_two_ranks(tmp_path):
    import shutil

    folder = tmp_path / "two"
    shutil.copytree(TWO_RANKS, folder)
    return folder


def _drop_storage(meta, fqn):
    key = next(k for k in meta.storage_data if k.fqn == fqn and k.offset is not None and k.offset[0] > 0)
    del meta.storage_data[key]


def _drop_chunk(meta, fqn):
    meta.state_dict_metadata[fqn].chunks.pop()


def _escape(meta, fqn):
    key = next(k for k in meta.storage_data if k.fqn == fqn)
    meta.storage_data[key].relative_path = "../../etc/passwd"


def _transform(meta, fqn):
    key = next(k for k in meta.storage_data if k.fqn == fqn)
    meta.storage_data[key].transform_descriptors = ["zstd"]


@pytest.mark.parametrize(
    ("change", "error", "fragment"),
    [
        (_drop_storage, CorruptCheckpointError, "no file holds its chunk"),
        (_drop_chunk, CorruptCheckpointError, "chunks hold 20 of 35 elements"),
        (_escape, CorruptCheckpointError, "not a file inside"),
        (_transform, UnsupportedError, "zstd"),
    ],
)
def test_bad_metadata_is_named(tmp_path, cli, change, error, fragment):
    folder = _copy_two_ranks(tmp_path)
    _rewrite_metadata(folder, lambda meta: change(meta, "model.rows.weight"))
    with pytest.raises(error, match=fragment):
        ckptkit.load(folder)
    assert_one_line_error(cli("convert", folder, tmp_path / "out.safetensors"), str(folder), fragment)
    assert not (tmp_path / "out.safetensors").exists()


def test_missing_and_truncated_rank_files(tmp_path, cli):
    folder = _copy_two_ranks(tmp_path)
    data = (folder / "__1_0.distcp").read_bytes()
    (folder / "__1_0.distcp").write_bytes(data[: len(data) // 2])
    assert_one_line_error(cli("inspect", folder), str(folder), "__1_0.distcp", "truncated")
    (folder / "__1_0.distcp").unlink()
    assert_one_line_error(cli("inspect", folder), "__1_0.distcp", "missing")


def test_chunk_holding_the_wrong_tensor_is_named(tmp_path):
    folder = _copy_two_ranks(tmp_path)

    def swap(meta):  # point the bias's second chunk at the archive of another tensor
        bias = next(k for k in meta.storage_data if k.fqn == "model.bias" and k.offset == (5,))
        other = next(k for k in meta.storage_data if k.fqn == "model.replicated")
        meta.storage_data[bias] = meta.storage_data[other]

    _rewrite_metadata(folder, swap)
    with ckptkit.load(folder) as ckpt, pytest.raises(CorruptCheckpointError, match=r"'model\.bias'.*holds float32"):
        ckpt.read_tensor("model.bias")


def test_metadata_that_calls_code_is_refused(tmp_path, cli):
    folder = _copy_two_ranks(tmp_path)
    (folder / ".metadata").write_bytes(b"\x80\x04cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(UnsafeCheckpointError, match=r"os\.system"):
        ckptkit.load(folder)
    assert_one_line_error(cli("inspect", folder), "os.system")


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental:UserWarning")
def test_a_tensor_of_a_dtype_ckptkit_cannot_hold_is_listed_apart(tmp_path):
    torch = pytest.importorskip("torch")
    folder = tmp_path / "ckpt"
    _dcp_save({"w": torch.arange(3, dtype=torch.float32), "z": torch.zeros(2, dtype=torch.complex32)}, folder)
    with ckptkit.load(folder) as ckpt:
        assert ckpt.names() == ["w"] and ckpt.read_tensor("w").tolist() == [0.0, 1.0, 2.0]
        assert ckpt.unsupported["z"].startswith("a complex32 tensor of shape [2], which ckptkit cannot read")
    with pytest.raises(UnsupportedError, match=r"tensor 'z' is a complex32 tensor.*--exclude 'z'"):
        ckptkit.convert(folder, tmp_path / "out.safetensors")
    receipt = ckptkit.convert(folder, tmp_path / "out.safetensors", exclude=["z"])
    assert receipt.verified and receipt.dropped == ["z"]


def test_a_dcp_folder_is_not_a_folder_holding_a_checkpoint(tmp_path, cli):
    from ckptkit import registry

    sharded = registry.get("sharded")
    assert not sharded.sniff(b"", TWO_RANKS)
    assert registry.detect(TWO_RANKS).name == "dcp"
    assert_one_line_error(cli("inspect", "--from", "sharded", TWO_RANKS), "dcp_two_ranks", "folder")
    holder = tmp_path / "holder"  # a folder holding a checkpoint file stays the sharded format's
    holder.mkdir()
    ckptkit.save({"w": np.ones(2, np.float32)}, holder / "model.safetensors")
    assert sharded.sniff(b"", holder) and registry.detect(holder).name == "sharded"


def test_verify_checks_every_chunk_against_its_crc(tmp_path, cli):
    folder = _copy_two_ranks(tmp_path)
    assert cli("verify", folder).code == 0
    with ckptkit.load(folder) as ckpt:
        extent = ckpt.raw_extent("model.replicated")
    with open(folder / extent.path.name, "r+b") as f:
        f.seek(extent.offset)
        byte = f.read(1)[0]
        f.seek(extent.offset)
        f.write(bytes([byte ^ 0x01]))
    result = cli("verify", "--json", folder)
    assert result.code == 1
    found = [(f["check"], f["tensor"]) for f in json.loads(result.stdout)["findings"]]
    assert found == [("torch.crc", "model.replicated")]
