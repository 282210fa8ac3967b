"""The copy path: CRC-32 without decoding, kernel copies that keep their checksum, byte comparison of copies."""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptkit import api, registry
from ckptkit.core.dtypes import by_name
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.io import checksum, extents, streaming
from ckptkit.io.streaming import TensorCopier
from ckptkit.io.workers import ThreadExecutor

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.mark.parametrize("len1, len2", [(0, 0), (1, 0), (0, 7), (13, 1), (4096, 65537), (1 << 20, 12345)])
def test_crc32_combine_joins_two_checksums_as_one(len1: int, len2: int) -> None:
    rng = np.random.default_rng(len1 + len2)
    a, b = rng.bytes(len1), rng.bytes(len2)
    want = zlib.crc32(a + b)
    assert checksum.crc32_combine(zlib.crc32(a), zlib.crc32(b), len2) == want
    assert checksum._crc32_combine(zlib.crc32(a), zlib.crc32(b), len2) == want  # the fallback without zlib-ng


def test_crc32_is_zlibs_with_or_without_zlib_ng(monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.random.default_rng(0).bytes(100_003)
    assert checksum.crc32(data) == zlib.crc32(data) and checksum.crc32(data, 77) == zlib.crc32(data, 77)
    monkeypatch.setattr(checksum, "_zlib_ng", None)  # as without the "fast" extra
    assert checksum.implementation() == "zlib"
    assert checksum.crc32(data, 77) == zlib.crc32(data, 77)


class _OneExtent(Checkpoint):
    """A checkpoint of one uint8 tensor lying as-is at ``offset`` in ``path``."""

    def __init__(self, path: Path, offset: int, nbytes: int) -> None:
        super().__init__(path)
        self._extent = RawExtent(path, offset, nbytes)
        self._info = TensorInfo("t", by_name("uint8"), (nbytes,))

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return [self._info]

    def read_tensor(self, name: str) -> np.ndarray:
        with open(self._extent.path, "rb") as f:
            f.seek(self._extent.offset)
            return np.frombuffer(f.read(self._extent.nbytes), np.uint8)

    def raw_extent(self, name: str) -> RawExtent | None:
        return self._extent


@pytest.mark.parametrize("dst_offset", [64, 64 + 4096, 100])  # page-aligned with the source or not
@pytest.mark.parametrize("threads", ["one", "workers", "no kernel copy"])
def test_copies_keep_their_crc_whether_in_the_kernel_or_through_the_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dst_offset: int, threads: str
) -> None:
    if threads == "workers":  # every chunk of the tensor dealt to the worker threads
        monkeypatch.setattr(streaming, "PARALLEL_BYTES", 0)
    if threads == "no kernel copy":

        def refuse(*args: object) -> int:
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    payload = np.random.default_rng(1).bytes(3 * 1024 * 1024 + 5)
    src = tmp_path / "src.bin"
    src.write_bytes(b"h" * 64 + payload + b"tail")
    out_path = tmp_path / "out.bin"
    with open(out_path, "wb") as out, TensorCopier(chunk_bytes=1 << 20) as copier:
        out.write(b"x" * dst_offset)
        written, crc = copier.copy(_OneExtent(src, 64, len(payload)), "t", out, want_crc=True)
        out.write(b"end")
    assert written == len(payload) and crc == zlib.crc32(payload)
    assert out_path.read_bytes() == b"x" * dst_offset + payload + b"end"


def _extent_pairs(tmp_path: Path, a: bytes, b: bytes) -> list[tuple[RawExtent, RawExtent]]:
    (tmp_path / "a").write_bytes(b"AAAA" + a)
    (tmp_path / "b").write_bytes(b"BB" + b)
    return [(RawExtent(tmp_path / "a", 4, len(a)), RawExtent(tmp_path / "b", 2, len(b)))]


@pytest.mark.parametrize("small", [True, False], ids=["read as bytes", "mapped"])
def test_identical_extents_compares_every_piece(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: bool) -> None:
    monkeypatch.setattr(extents, "PIECE_BYTES", 4096)  # many pieces over both threads
    if not small:
        monkeypatch.setattr(extents, "SMALL_BYTES", 0)
    data = np.random.default_rng(2).bytes(40_000 + 3)
    assert extents.identical_extents(_extent_pairs(tmp_path, data, data), ThreadExecutor(2)) == [True]
    for pos in (0, 4095, 4096, 20_001, len(data) - 1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        assert extents.identical_extents(_extent_pairs(tmp_path, data, bytes(flipped)), ThreadExecutor(2)) == [False]
    assert extents.identical_extents(_extent_pairs(tmp_path, data, data[:-1])) == [False]
    assert extents.identical_extents(_extent_pairs(tmp_path, b"", b"")) == [True]


def test_verify_after_write_compares_copied_tensors_as_bytes_and_finds_a_changed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = FIXTURES / "tied_lm_fp16.safetensors"
    dst = tmp_path / "out.pt"
    compared: list[int] = []
    real = extents.identical_extents

    def spy(pairs: Sequence[tuple[RawExtent, RawExtent]], *args: object, **kwargs: object) -> list[bool]:
        compared.append(len(pairs))
        return real(pairs, *args, **kwargs)  # type: ignore[arg-type]

    early: list[RawExtent] = []
    real_same = extents._same_bytes

    def same_spy(source_map: Any, a: RawExtent, b: RawExtent) -> bool:
        early.append(b)
        return real_same(source_map, a, b)

    monkeypatch.setattr(api, "identical_extents", spy)
    monkeypatch.setattr(extents, "_same_bytes", same_spy)
    receipt = api.convert(src, dst)
    assert receipt.verified
    with registry.open_checkpoint(src) as source:
        # Every tensor was copied as-is, so every one was compared as bytes while the write ran,
        # and none was left to compare afterwards.
        assert len(early) == len(source) and compared == [0]
        name = max(source.names(), key=lambda n: source.info(n).nbytes)
        with registry.open_checkpoint(dst) as written:
            extent = written.raw_extent(name)
        assert extent is not None
        with open(dst, "r+b") as f:
            f.seek(extent.offset + extent.nbytes // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 1]))
        with registry.open_checkpoint(dst) as written, pytest.raises(CorruptCheckpointError, match=repr(name)):
            api.compare_checkpoints(source, written, dst)


def test_verify_after_a_cast_decodes_the_cast_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[int] = []
    real = extents.identical_extents
    monkeypatch.setattr(api, "identical_extents", lambda pairs, **kw: compared.append(len(pairs)) or real(pairs, **kw))
    receipt = api.convert(FIXTURES / "mlp_fp32.safetensors", tmp_path / "out.pt", dtype="float16")
    assert receipt.verified and receipt.cast
    assert compared == [0]


def test_verify_compares_again_what_the_early_check_did_not_vouch_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = FIXTURES / "tied_lm_fp16.safetensors"
    compared: list[int] = []
    real = extents.identical_extents
    monkeypatch.setattr(api, "identical_extents", lambda pairs, **kw: compared.append(len(pairs)) or real(pairs, **kw))
    monkeypatch.setattr(extents, "_same_bytes", lambda m, a, b: False)  # as if every early comparison failed
    receipt = api.convert(src, tmp_path / "out.pt")
    with registry.open_checkpoint(src) as source:
        assert receipt.verified and compared == [len(source)]  # all compared again, and found equal


def test_an_early_comparison_counts_only_for_the_extents_it_compared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = FIXTURES / "tied_lm_fp16.safetensors"
    dst = tmp_path / "out.pt"
    seen: list[Mapping[Any, bool]] = []
    real = api.compare_checkpoints

    def spy(*args: Any) -> None:
        seen.append(args[4])
        real(*args)

    monkeypatch.setattr(api, "compare_checkpoints", spy)
    api.convert(src, dst)
    monkeypatch.undo()
    # Compared in the staging file; the written file is the same file renamed.
    vouched = {(s, (os.path.realpath(dst), *o[1:])): same for (s, o), same in seen[0].items()}
    with registry.open_checkpoint(src) as source:
        assert len(vouched) == len(source) and all(vouched.values())
        name = max(source.names(), key=lambda n: source.info(n).nbytes)
        with registry.open_checkpoint(dst) as written:
            extent = written.raw_extent(name)
        assert extent is not None
        with open(dst, "r+b") as f:  # changed after the early comparison
            f.seek(extent.offset)
            byte = f.read(1)
            f.seek(extent.offset)
            f.write(bytes([byte[0] ^ 1]))
        with registry.open_checkpoint(dst) as written:
            api.compare_checkpoints(source, written, dst, compared=vouched)  # vouched for: not read again
            other = {(s, (o[0], o[1] + 1, o[2])): True for s, o in vouched}  # each one byte off
            with pytest.raises(CorruptCheckpointError, match=repr(name)):
                api.compare_checkpoints(source, written, dst, compared=other)
