"""Copies checked by CRC-32C: to and from TensorFlow checkpoints, verify-after-write reads the output
alone where a tensor's checksum is known, and still catches a copy that went wrong."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptkit
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.core.model import RawExtent
from ckptkit.io import crc32c, extents
from ckptkit.verify import verify

pytestmark = pytest.mark.skipif(not crc32c.accelerated(), reason="google-crc32c is not installed")

DIRECTIONS = ["safetensors -> tensorflow", "tensorflow -> safetensors"]


def _sources(tmp_path: Path) -> dict[str, np.ndarray]:
    """src.safetensors and the TensorFlow checkpoint ckpt-1 ckptkit writes from it."""
    rng = np.random.default_rng(5)
    arrays = {f"block_{i}/w": rng.standard_normal((300 + i, 257)).astype(np.float32) for i in range(4)}
    arrays["tiny"] = np.arange(5, dtype=np.int16)
    ckptkit.save(arrays, tmp_path / "src.safetensors")
    ckptkit.convert(tmp_path / "src.safetensors", tmp_path / "ckpt-1.index")
    return arrays


def _paths(tmp_path: Path, direction: str) -> tuple[Path, Path]:
    if direction == "safetensors -> tensorflow":
        return tmp_path / "src.safetensors", tmp_path / "out" / "ckpt-2.index"
    return tmp_path / "ckpt-1.index", tmp_path / "out" / "back.safetensors"


class _Spy:
    """Counts byte comparisons during the write and CRC-32C passes over the output."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, out_folder: Path) -> None:
        self.compared: list[RawExtent] = []
        self.checksummed: list[int] = []  # bytes of the output checksummed
        real_same, real_crc = extents._same_bytes, crc32c.of_file

        def same(source_map: Any, a: RawExtent, b: RawExtent) -> bool:
            self.compared.append(b)
            return real_same(source_map, a, b)

        def of_file(fd: int, offset: int, nbytes: int) -> int:
            if out_folder in Path(os.readlink(f"/proc/self/fd/{fd}")).parents:  # staged beside the output
                self.checksummed.append(nbytes)
            return real_crc(fd, offset, nbytes)

        monkeypatch.setattr(extents, "_same_bytes", same)
        monkeypatch.setattr(crc32c, "of_file", of_file)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell the files apart")
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_copies_to_and_from_tensorflow_are_checked_by_their_crc32c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    arrays = _sources(tmp_path)
    src, dst = _paths(tmp_path, direction)
    dst.parent.mkdir()
    spy = _Spy(monkeypatch, tmp_path / "out")
    receipt = ckptkit.convert(src, dst)
    assert receipt.verified
    # Every tensor copied as-is was checked by the CRC-32C of the output's bytes against the
    # source's (the TensorFlow writer packs small tensors without copying them: those are compared
    # after the write), and none needed its bytes compared with the source's.
    copied = [a.nbytes for a in arrays.values() if a.nbytes >= 64 * 1024 or direction.startswith("tensorflow")]
    assert sorted(spy.checksummed) == sorted(copied) and spy.compared == []
    with ckptkit.load(dst) as out:
        assert {n: out.read_tensor(n).tobytes() for n in arrays} == {n: a.tobytes() for n, a in arrays.items()}


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_copy_that_went_wrong_fails_the_check_and_leaves_no_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    _sources(tmp_path)
    src, dst = _paths(tmp_path, direction)
    dst.parent.mkdir()
    real = os.copy_file_range
    damaged: list[int] = []

    def copy_and_damage(src_fd: int, dst_fd: int, count: int, offset_src: int, offset_dst: int) -> int:
        n = real(src_fd, dst_fd, count, offset_src, offset_dst)
        if n > 100 and not damaged:  # one bit of the first large piece copied
            byte = os.pread(src_fd, 1, offset_src + 100)
            os.pwrite(dst_fd, bytes([byte[0] ^ 0x04]), offset_dst + 100)
            damaged.append(offset_dst + 100)
        return n

    monkeypatch.setattr(os, "copy_file_range", copy_and_damage)
    with pytest.raises(CorruptCheckpointError, match=r"verification failed: tensor .* differs from the source"):
        ckptkit.convert(src, dst)
    assert damaged and list(dst.parent.iterdir()) == []  # nothing published, nothing staged left


def test_a_tensorflow_source_whose_checksum_is_wrong_converts_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = _sources(tmp_path)
    name = "block_2/w"
    with ckptkit.load(tmp_path / "ckpt-1") as tf:
        extent = tf.raw_extent(name)
    assert extent is not None and extent.crc32c is not None
    with open(extent.path, "r+b") as f:  # the data changed after TensorFlow checksummed it
        f.seek(extent.offset + 8)
        byte = f.read(1)
        f.seek(extent.offset + 8)
        f.write(bytes([byte[0] ^ 0x01]))
    assert any(f.check == "tensorflow.crc" for f in verify([tmp_path / "ckpt-1"]).findings)
    compared: list[RawExtent] = []
    real_same = extents._same_bytes

    def same(source_map: Any, a: RawExtent, b: RawExtent) -> bool:
        compared.append(a)
        return real_same(source_map, a, b)

    monkeypatch.setattr(extents, "_same_bytes", same)
    # Reading does not check checksums, and the copy holds what the source holds: the checksums
    # differ, so that tensor's bytes were compared instead, and found equal.
    receipt = ckptkit.convert(tmp_path / "ckpt-1", tmp_path / "back.safetensors")
    assert receipt.verified and [(a.offset, a.nbytes) for a in compared] == [(extent.offset, extent.nbytes)]
    with ckptkit.load(tmp_path / "back.safetensors") as back:
        changed = bytearray(arrays[name].tobytes())
        changed[8] ^= 0x01
        assert back.read_tensor(name).tobytes() == bytes(changed)


def test_without_hardware_crc32c_copies_are_compared_as_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _sources(tmp_path)
    monkeypatch.setattr(crc32c, "_HAVE_HW", False)
    compared: list[RawExtent] = []
    real_same = extents._same_bytes
    monkeypatch.setattr(extents, "_same_bytes", lambda m, a, b: compared.append(b) or real_same(m, a, b))
    assert ckptkit.convert(tmp_path / "ckpt-1", tmp_path / "back.safetensors").verified
    assert len(compared) == 5  # every tensor


def test_crc32c_of_a_file_range(tmp_path: Path) -> None:
    data = np.random.default_rng(6).bytes(3 * 1024 * 1024 + 11)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert crc32c.of_file(fd, 0, len(data)) == crc32c.value(data)
        assert crc32c.of_file(fd, 1000, 2 * 1024 * 1024 + 5) == crc32c.value(data[1000 : 1000 + 2 * 1024 * 1024 + 5])
        assert crc32c.of_file(fd, 7, 0) == 0
        with pytest.raises(EOFError):
            crc32c.of_file(fd, 1000, len(data))
    finally:
        os.close(fd)
