"""safetensors: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.

Spec: https://github.com/huggingface/safetensors#format. The reader parses the header itself and
memory-maps the data, so it is lazy and accepts files other tools write (headers not padded to 8
bytes, ``"__metadata__": null``, data in another order than the keys). The writer streams tensor
by tensor in the layout the safetensors library produces (tensors ordered by dtype alignment, then
name; header padded with spaces to 8 bytes), because the library's own serializer needs every
tensor's bytes in memory at once.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ckptkit.core import dtypes, limits
from ckptkit.core.errors import CorruptCheckpointError, UnsupportedError
from ckptkit.core.format import Format, WriteContext
from ckptkit.core.metadata import ALIASES_KEY, checkpoint_metadata, parse_json, unfold_metadata
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.core.names import utf8_text
from ckptkit.io.shards.write import SHARD_SIZE_OPTION, shardable
from ckptkit.io.streaming import TensorCopier

_SNIFF_MAX_HEADER = 1 << 40  # only a plausibility bound: opening checks ckptkit's limits

# The library orders tensors by this dtype rank, largest first (its Dtype enum order).
_DTYPE_RANK = [
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
    "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64",
]  # fmt: skip


def sniff(head: bytes, path: Path) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= _SNIFF_MAX_HEADER and head[8:9] == b"{"


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
        raw = self._file.read(8)
        if len(raw) < 8:
            raise CorruptCheckpointError("too short for a safetensors file (no 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise CorruptCheckpointError(
                f"the header length says {n:,} bytes, but the file holds only {size:,} bytes: truncated, or not "
                "a safetensors file"
            )
        limits.check("the JSON header", n, "header_bytes")
        header = parse_json(self._file.read(n), "the header")
        if not isinstance(header, dict):
            raise CorruptCheckpointError("the header is not a JSON object")
        limits.check("the tensor count", len(header) - ("__metadata__" in header), "tensors", "tensors")
        self.data_start = 8 + n
        data_len = size - self.data_start
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise CorruptCheckpointError("__metadata__ must map strings to strings")
        self._infos: list[TensorInfo] = []
        self._offsets: dict[str, tuple[int, int]] = {}
        for name, entry in header.items():
            packed = packed_entry(name, entry, data_len)
            if packed is not None:
                self.unsupported[name] = packed[0]
                continue
            ti, begin, end = parse_entry(name, entry, data_len)
            self._infos.append(ti)
            self._offsets[name] = (begin, end)
        self.aliases, self.extras = unfold_metadata(meta, self._offsets)
        self.metadata = meta
        self._map: mmap.mmap | None = None
        if size > 0:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
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


# safetensors dtypes that pack several elements into a byte; ckptkit holds sub-byte values one per
# byte, and which bits hold which element is up to the producer, so it does not guess.
PACKED_BITS = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


def packed_entry(name: str, entry: object, data_len: int) -> tuple[str, int, int] | None:
    """For a well-formed entry of a packed dtype: why ckptkit cannot read it, and its data span.

    ``None`` for any other entry (which :func:`parse_entry` then judges).
    """
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or entry["dtype"] not in PACKED_BITS:
        return None
    code, shape, offsets = entry["dtype"], entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        return None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        return None
    begin, end = offsets
    numel = 1
    for d in shape:
        numel *= d
    if not 0 <= begin <= end <= data_len or end - begin != (numel * PACKED_BITS[code] + 7) // 8:
        return None
    why = (
        f"a safetensors {code} tensor (packed {PACKED_BITS[code]}-bit floats) of shape {shape}, which ckptkit "
        "cannot read; unpack it to float16 or bfloat16 in the library that made it and save again"
    )
    return why, begin, end


def parse_entry(name: str, entry: object, data_len: int) -> tuple[TensorInfo, int, int]:
    """One header entry as (info, begin, end) within the data; raises if it is malformed or out of range."""
    if not isinstance(entry, dict) or {"dtype", "shape", "data_offsets"} - set(entry):
        raise CorruptCheckpointError(f"tensor {name!r}: header entry needs dtype, shape and data_offsets")
    code = entry["dtype"]
    dtype = dtypes.by_safetensors(code) if isinstance(code, str) else None
    if dtype is None:
        raise UnsupportedError(f"tensor {name!r} has dtype {code!r}, which ckptkit does not know")
    shape = entry["shape"]
    offsets = entry["data_offsets"]
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise CorruptCheckpointError(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise CorruptCheckpointError(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    ti = TensorInfo(name, dtype, tuple(shape), f"offset {begin}")
    if not 0 <= begin <= end or end - begin != ti.nbytes:
        raise CorruptCheckpointError(
            f"tensor {name!r}: data_offsets {offsets} hold {end - begin} bytes, "
            f"but {dtype.name} {list(shape)} needs {ti.nbytes}"
        )
    if end > data_len:
        raise CorruptCheckpointError(
            f"tensor {name!r} ends at byte {end} of the data, but the file holds only {data_len}: truncated?"
        )
    return ti, begin, end


def open_safetensors(path: Path, options: Mapping[str, Any]) -> Checkpoint:
    return SafetensorsCheckpoint(path)


def build_header(infos: Sequence[TensorInfo], metadata: Mapping[str, str]) -> tuple[bytes, list[TensorInfo]]:
    """The padded header bytes and the tensors in the order their data must follow."""
    for ti in infos:
        if ti.dtype.safetensors is None:
            cast = "--dtype complex64" if ti.dtype.kind == "c" else "--dtype (float16, bfloat16, float32)"
            raise UnsupportedError(
                f"tensor {ti.name!r} is {ti.dtype.name}, which safetensors cannot hold; convert with {cast} to "
                f"cast such tensors, leave it out with --exclude '{ti.name}', or choose another format"
            )
    ordered = sorted(infos, key=lambda t: (-_DTYPE_RANK.index(t.dtype.safetensors or ""), t.name))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for ti in ordered:
        header[ti.name] = {
            "dtype": ti.dtype.safetensors,
            "shape": list(ti.shape),
            "data_offsets": [offset, offset + ti.nbytes],
        }
        offset += ti.nbytes
    for name in header:
        utf8_text(name, "safetensors")
    for key, value in metadata.items():
        utf8_text(f"{key}={value}", "safetensors", "metadata entry")
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, ordered


def write_safetensors(ckpt: Checkpoint, ctx: WriteContext) -> None:
    header, ordered = build_header(ckpt.tensor_infos(), checkpoint_metadata(ckpt))
    if ckpt.aliases:
        ctx.notes.append(f"{len(ckpt.aliases)} tied tensor(s) stored once, alias map kept in metadata {ALIASES_KEY}")
    with open(ctx.output.temp_for(), "wb") as out, TensorCopier() as copier:
        out.write(header)
        for ti in ordered:
            copier.copy(ckpt, ti.name, out, progress=ctx.progress)


FORMAT = Format(
    name="safetensors",
    description="safetensors (Hugging Face): header + raw tensors, memory-mapped",
    extensions=(".safetensors",),
    sniff=sniff,
    open=open_safetensors,
    write=shardable(write_safetensors),
    write_options=(SHARD_SIZE_OPTION,),
    default_extension=".safetensors",
    verify="ckptkit.formats.safetensors.verify:check_structure",
)
