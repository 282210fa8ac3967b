"""The contract kit itself: its read watch sees reads, and the contract fails formats that break it."""

import mmap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ckptkit import registry
from ckptkit.core.errors import UnsupportedError
from ckptkit.core.format import WriteContext
from ckptkit.core.model import Checkpoint
from ckptkit.formats.safetensors import SafetensorsCheckpoint
from ckptkit.testing import DataReads, FormatContract, fault_block

needs_proc = pytest.mark.skipif(DataReads.unavailable() is not None, reason=str(DataReads.unavailable()))


@needs_proc
def test_data_reads_sees_read_calls_and_touched_pages(tmp_path):
    block = fault_block()
    path = tmp_path / "blob"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4 * block, dtype=np.uint8).tobytes())
    with DataReads() as reads, open(path, "rb") as f:
        f.read(100_000)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        assert mm[2 * block + 5] >= 0  # touching one byte maps its folio
        mm.close()
    assert 100_000 <= reads.read_bytes < 200_000
    assert reads.mapped_bytes(path, 2 * block + 5, 2 * block + 6) == 1
    assert reads.mapped_bytes(path, 0, 2 * block) == 0  # untouched blocks stay unmapped
    assert reads.mapped_bytes(path, 3 * block, 4 * block) == 0
    assert mmap.mmap is not type(mm)  # the watch is over


class _GreedyCheckpoint(SafetensorsCheckpoint):
    """A reader that reads every tensor when it opens: what the listing check must catch."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        for name in self.names():
            np.ascontiguousarray(self.read_tensor(name)).view(np.uint8).sum()


def _open_greedy(path: Path, options: object) -> Checkpoint:
    return _GreedyCheckpoint(path)


def _contract_against(monkeypatch, name: str, **changes: object) -> FormatContract:
    """The contract for a format like safetensors with ``changes``, registered for this test only."""
    registry.formats()
    fmt = replace(registry.get("safetensors"), name=name, extensions=(f".{name}",), default_extension=f".{name}",
                  **changes)  # fmt: skip
    monkeypatch.setitem(registry._formats, name, fmt)
    contract = type(f"Contract_{name}", (FormatContract,), {"format_name": name, "detects_flipped_data": False})
    return contract()


@needs_proc
def test_a_reader_that_reads_data_when_listing_fails_the_contract(monkeypatch, tmp_path_factory):
    contract = _contract_against(monkeypatch, "greedy", open=_open_greedy)
    with pytest.raises(AssertionError, match=r"listing touched .* bytes of tensor"):
        contract.test_listing_reads_no_tensor_data(tmp_path_factory)
    honest = _contract_against(monkeypatch, "honest")
    honest.test_listing_reads_no_tensor_data(tmp_path_factory)


def test_a_sniffer_that_claims_everything_fails_the_contract(monkeypatch, tmp_path_factory):
    contract = _contract_against(monkeypatch, "claims-all", sniff=lambda head, path: True)
    with pytest.raises(AssertionError, match="claims-all's sniffer claims a torch checkpoint"):
        contract.test_other_formats_are_refused("torch", tmp_path_factory)


def test_a_dtype_column_that_overstates_the_writer_fails_the_contract(monkeypatch, tmp_path):
    contract = _contract_against(monkeypatch, "overstated", dtypes=registry.get("safetensors").dtypes | {"int4"})
    with pytest.raises(UnsupportedError, match="int4"):
        contract.test_round_trip_of_every_declared_dtype(tmp_path)


def test_a_dtype_column_that_understates_the_writer_fails_the_contract(monkeypatch, tmp_path):
    contract = _contract_against(monkeypatch, "understated", dtypes=registry.get("safetensors").dtypes - {"int8"})
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        contract.test_writer_refuses_every_dtype_it_does_not_declare(tmp_path)


def _careless_writer(ckpt: Checkpoint, ctx: WriteContext) -> None:
    """Writes straight to the destination, not to the staging path: a failure leaves a partial file."""
    with open(ctx.output.path, "wb") as out:
        for name in ckpt.names():
            out.write(np.ascontiguousarray(ckpt.read_tensor(name)).tobytes())


def test_a_writer_that_skips_staging_fails_the_contract(monkeypatch, tmp_path):
    contract = _contract_against(monkeypatch, "careless", write=_careless_writer)
    with pytest.raises(AssertionError, match=r"failed midway changed the folder: \['out.careless'\] appeared"):
        contract.test_failed_write_leaves_nothing(tmp_path)
