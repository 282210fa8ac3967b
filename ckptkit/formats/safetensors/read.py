"""Reading a safetensors file lazily: the header parsed and checked, the data memory-mapped.

The reader accepts files other tools write (headers not padded to 8 bytes, ``"__metadata__":
null``, data in another order than the keys); what it refuses, :mod:`.header` decides.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from ckptkit.core.findings import ProblemSink
from ckptkit.core.metadata import unfold_metadata
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.formats.safetensors import header
from ckptkit.io.source import Source

if TYPE_CHECKING:
    import numpy as np


class RemoteSafetensorsCheckpoint(Checkpoint):
    """A safetensors file at a URL: the header from range reads (its length and, past the first
    bytes already fetched, the JSON), each tensor by large range reads into its array.
    The same header checks and limits as a local file."""

    format_name = "safetensors"
    concurrent_reads = True  # every read is a request of its own

    def __init__(self, source: Source) -> None:
        super().__init__(None)
        self.source = source
        self.url = source.name
        with source.ranges() as f:
            parsed = header.parse(cast(BinaryIO, f), source.size, ProblemSink(source.name, strict=True))
        assert parsed is not None  # a strict sink raises instead
        self.data_start = parsed.data_start
        self._infos: list[TensorInfo] = [ti for ti, _begin, _end in parsed.tensors]
        self._offsets: dict[str, tuple[int, int]] = {ti.name: (begin, end) for ti, begin, end in parsed.tensors}
        self.unsupported.update(parsed.unsupported)
        self.aliases, self.extras = unfold_metadata(parsed.metadata, self._offsets)
        self.metadata = parsed.metadata

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        import numpy as np

        ti = self.info(name)
        begin, _end = self._offsets[name]
        out = np.empty(ti.shape, ti.dtype.numpy)
        if ti.numel:
            self.source.read_into(self.data_start + begin, out.reshape(-1).view(np.uint8).data)
        return out


def open_remote_safetensors(source: Source, options: Mapping[str, Any]) -> Checkpoint:
    """Open a safetensors file at a URL for lazy reading by range requests."""
    return RemoteSafetensorsCheckpoint(source)


class SafetensorsCheckpoint(Checkpoint):
    """A safetensors file, memory-mapped; tensors are views into the map."""

    format_name = "safetensors"
    concurrent_reads = True

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._file = open(path, "rb")  # noqa: SIM115 - owned by the checkpoint until close()
        try:
            self._parse()
        except BaseException:
            self._file.close()
            raise

    def _parse(self) -> None:
        size = self.path.stat().st_size if self.path else 0
        parsed = header.parse(self._file, size, ProblemSink(self.path or "", strict=True))
        assert parsed is not None  # a strict sink raises instead
        self.data_start = parsed.data_start
        self._infos: list[TensorInfo] = [ti for ti, _begin, _end in parsed.tensors]
        self._offsets: dict[str, tuple[int, int]] = {ti.name: (begin, end) for ti, begin, end in parsed.tensors}
        self.unsupported.update(parsed.unsupported)
        meta = parsed.metadata
        self.aliases, self.extras = unfold_metadata(meta, self._offsets)
        self.metadata = meta
        self._map: mmap.mmap | None = None
        if size > 0:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        import numpy as np

        ti = self.info(name)
        begin, _end = self._offsets[name]
        if ti.numel == 0 or self._map is None:
            return np.zeros(ti.shape, ti.dtype.numpy)
        arr = np.frombuffer(self._map, dtype=ti.dtype.numpy, count=ti.numel, offset=self.data_start + begin)
        return arr.reshape(ti.shape)

    def raw_extent(self, name: str) -> RawExtent | None:
        begin, end = self._offsets[name]
        assert self.path is not None
        return RawExtent(self.path, self.data_start + begin, end - begin)

    def close(self) -> None:
        # Arrays handed out may still view the map; leave it to the garbage collector then.
        self._map = None
        self._file.close()


def open_safetensors(path: Path, options: Mapping[str, Any]) -> Checkpoint:
    """Open a safetensors file for lazy reading."""
    return SafetensorsCheckpoint(path)
