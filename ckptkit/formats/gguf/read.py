"""Reading a GGUF file lazily: the header parsed and checked, the data memory-mapped.

Plain tensors (F32, F16, BF16, F64, I8-I64) are views into the map. Quantized tensors are listed as
float32 with their logical shape and dequantized when read, a band of rows at a time into one
float32 array: memory stays near one float32 copy of the tensor rather than the several
temporaries a whole-tensor call makes. The common block types (Q4_0..Q8_0, the K-quants, IQ4_NL,
IQ4_XS) go through ckptkit's own kernels in :mod:`.dequant`, the others through gguf-py's
``gguf.quants.dequantize``; both give gguf-py's values bit for bit.
"""

from __future__ import annotations

import itertools
import json
import mmap
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptkit.core.errors import CorruptCheckpointError, MissingDependencyError, UnsupportedError
from ckptkit.core.findings import ProblemSink
from ckptkit.core.metadata import unfold_metadata
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.formats.gguf import header
from ckptkit.formats.gguf.header import ARRAY, STRING, VALUE_TYPES, Field, GGMLType, TensorEntry
from ckptkit.io.source import Source
from ckptkit.io.workers import SerialExecutor, default_executor

if TYPE_CHECKING:
    import numpy as np

PREFIX = "gguf:"
TYPES_KEY = "gguf:types"  # JSON: tensor name -> ggml type, for tensors not stored as their dtype
VERSION_KEY = "gguf:version"
INSTALL_HINT = "install it with: pip install 'ckptkit[gguf]' (or pip install gguf)"
_SHOWN_ITEMS = 8  # arrays up to this long are shown in full; longer ones are summarised
_PARALLEL_BANDS = 16  # tensors of this many bands or more are dequantized on the worker threads
# Dequantize this many elements at a time: 1 MB of float32 stays in cache (bands of 16 MB ran 3-4x slower here).
_BAND_ELEMENTS = 1 << 18


def gguf_module(what: str) -> Any:
    """gguf-py, imported on first use, or a one-line error saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise MissingDependencyError(f"{what} needs the gguf package (gguf-py); {INSTALL_HINT}") from None
    return gguf


def is_quantized(ggml: GGMLType) -> bool:
    return ggml.dtype is None


class GGUFCheckpoint(Checkpoint):
    """A GGUF file, memory-mapped; plain tensors are views into the map, quantized ones dequantized on read."""

    format_name = "gguf"
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
        assert self.path is not None
        size = self.path.stat().st_size
        self._map: mmap.mmap | None = None
        buf: Any = b""
        if size > 0:
            buf = self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        parsed = header.parse(buf, size, ProblemSink(self.path, strict=True))
        assert parsed is not None  # a strict sink raises instead
        self._take(parsed)

    def _take(self, parsed: header.Header) -> None:
        """Index the parsed header (one code path for local and remote files)."""
        self.header = parsed
        self._entries: dict[str, TensorEntry] = {e.info.name: e for e in parsed.tensors}
        self._infos: list[TensorInfo] = [e.info for e in parsed.tensors]
        meta = describe_fields(parsed.fields)
        meta[VERSION_KEY] = str(parsed.version)
        types = {e.info.name: e.ggml.name for e in parsed.tensors if is_quantized(e.ggml)}
        if types:
            meta[TYPES_KEY] = json.dumps(types)
        self.aliases, self.extras = unfold_metadata(meta, self._entries)
        self.metadata = meta

    @property
    def fields(self) -> list[Field]:
        """The metadata entries with their GGUF value types, as stored."""
        return self.header.fields

    @property
    def gguf_fields(self) -> list[Field]:
        """What a GGUF writer keeps of this file's metadata: every field, typed."""
        return self.header.fields

    def entry(self, name: str) -> TensorEntry:
        """The header's record of a tensor: ggml type, stored sizes and offset."""
        return self._entries[name]

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def stored_bytes(self, name: str) -> int:
        return self._entries[name].nbytes

    def stored_type(self, name: str) -> str:
        e = self._entries[name]
        return e.ggml.name if is_quantized(e.ggml) else e.info.dtype.name

    def stored_extent(self, name: str) -> RawExtent:
        """Where the tensor's stored bytes (quantized blocks included) lie in the file."""
        e = self._entries[name]
        assert self.path is not None
        return RawExtent(self.path, self.header.data_start + e.offset, e.nbytes)

    def raw_bytes(self, name: str) -> memoryview:
        """The tensor's bytes exactly as stored (quantized blocks included)."""
        e = self._entries[name]
        if self._map is None or e.nbytes == 0:
            return memoryview(b"")
        start = self.header.data_start + e.offset
        return memoryview(self._map)[start : start + e.nbytes]

    def read_tensor(self, name: str) -> np.ndarray:
        import numpy as np

        e = self._entries[name]
        ti = e.info
        if ti.numel == 0 or self._map is None:
            return np.zeros(ti.shape, ti.dtype.numpy)
        if not is_quantized(e.ggml):
            arr = np.frombuffer(
                self._map, dtype=ti.dtype.numpy, count=ti.numel, offset=self.header.data_start + e.offset
            )
            return arr.reshape(ti.shape)
        return dequantize(np.frombuffer(self.raw_bytes(name), np.uint8), e, str(self.path))

    def span_reader(self, name: str) -> Callable[[int, int], np.ndarray] | None:
        """Flat elements ``start:stop`` of a quantized tensor, decoded from the blocks that hold them
        into a buffer reused by the calling thread (plain tensors are views already: ``None``)."""
        e = self._entries[name]
        if not is_quantized(e.ggml) or self._map is None or e.info.numel == 0:
            return None
        import numpy as np

        from ckptkit.formats.gguf import dequant as kernels

        raw = np.frombuffer(self._map, np.uint8, count=e.nbytes, offset=self.header.data_start + e.offset)
        gguf = None if kernels.supported(e.ggml.id) else gguf_module(f"reading {e.ggml.name} tensor {name!r}")
        where = str(self.path)
        buffers = threading.local()  # this reader's own per thread: the other side of a diff may be GGUF too
        return lambda start, stop: _decode_span(gguf, raw, e, where, start, stop, buffers)

    def raw_extent(self, name: str) -> RawExtent | None:
        e = self._entries[name]
        if is_quantized(e.ggml):
            return None
        assert self.path is not None
        return RawExtent(self.path, self.header.data_start + e.offset, e.nbytes)

    def close(self) -> None:
        # Arrays handed out may still view the map; leave it to the garbage collector then.
        self._map = None
        self._file.close()


class RemoteGGUFCheckpoint(GGUFCheckpoint):
    """A GGUF file at a URL: the header fetched as it is parsed (its first bytes, then on demand), each
    tensor by range reads of its stored bytes. The same header checks and limits as a local file."""

    def __init__(self, source: Source) -> None:
        Checkpoint.__init__(self, None)
        self.source = source
        self.url = source.name
        self._map = None
        first = source.read_at(0, header.FIRST_READ)
        parsed = header.parse(first, source.size, ProblemSink(source.name, strict=True), more=source.read_at)
        assert parsed is not None  # a strict sink raises instead
        self._take(parsed)

    def stored_extent(self, name: str) -> RawExtent:
        raise UnsupportedError(
            f"tensor {name!r} is {self._entries[name].ggml.name}: its blocks are copied as they are from a local "
            "GGUF file only; download the file first"
        )

    def raw_bytes(self, name: str) -> memoryview:
        import numpy as np

        e = self._entries[name]
        out = np.empty(e.nbytes, np.uint8)
        if e.nbytes:
            self.source.read_into(self.header.data_start + e.offset, out.data)
        return out.data

    def read_tensor(self, name: str) -> np.ndarray:
        import numpy as np

        e = self._entries[name]
        raw = np.frombuffer(self.raw_bytes(name), np.uint8)
        if not is_quantized(e.ggml):
            if e.info.numel == 0:
                return np.zeros(e.info.shape, e.info.dtype.numpy)
            return raw.view(e.info.dtype.numpy).reshape(e.info.shape)
        return dequantize(raw, e, self.source.name)

    def raw_extent(self, name: str) -> RawExtent | None:
        return None

    def close(self) -> None:
        pass


def open_remote_gguf(source: Source, options: Mapping[str, Any]) -> Checkpoint:
    """Open a GGUF file at a URL for lazy reading by range requests."""
    return RemoteGGUFCheckpoint(source)


def dequantize(raw: np.ndarray, entry: TensorEntry, where: str = "") -> np.ndarray:
    """``raw`` (the stored bytes of ``entry``) as float32 in the tensor's shape, as gguf-py dequantizes it."""
    import numpy as np

    from ckptkit.formats.gguf import dequant as kernels

    own = kernels.supported(entry.ggml.id)
    gguf = None if own else gguf_module(f"reading {entry.ggml.name} tensor {entry.info.name!r}")
    row_len = entry.dims[0] if entry.dims else 1
    rows = entry.info.numel // row_len
    row_bytes = entry.nbytes // rows
    out = np.empty((rows, row_len), np.float32)
    blocks = raw.reshape(rows, row_bytes)
    band = max(1, _BAND_ELEMENTS // max(row_len, 1))
    starts = range(0, rows, band)
    executor = default_executor() if len(starts) >= _PARALLEL_BANDS else SerialExecutor()
    # numpy releases the GIL in the kernels: a large tensor's bands split between the workers use every core.
    parts = max(1, min(executor.workers, len(starts)))
    edges = [starts[len(starts) * k // parts] for k in range(parts)] + [rows]
    executor.map(lambda span: _bands(gguf, blocks, out, entry, where, span[0], span[1], band),
                 list(itertools.pairwise(edges)))  # fmt: skip
    return out.reshape(entry.info.shape)


def _bands(
    gguf: Any, blocks: np.ndarray, out: np.ndarray, entry: TensorEntry, where: str, start: int, stop: int, band: int
) -> None:
    """Rows ``start:stop`` of ``out`` decoded from ``blocks``, ``band`` rows at a time; ``gguf`` is
    gguf-py for a type without a kernel of ckptkit's own, else None."""
    from ckptkit.formats.gguf import dequant as kernels

    qtype = None if gguf is None else gguf.GGMLQuantizationType(entry.ggml.id)
    for lo in range(start, stop, band):
        hi = min(lo + band, stop)
        if gguf is None:
            kernels.dequantize_into(blocks[lo:hi].reshape(-1), entry.ggml.id, out[lo:hi].reshape(-1))
            continue
        try:
            out[lo:hi] = gguf.quants.dequantize(blocks[lo:hi], qtype)
        except NotImplementedError:
            raise UnsupportedError(
                f"tensor {entry.info.name!r} is {entry.ggml.name}, which the installed gguf package cannot dequantize; "
                "upgrade it with: pip install -U gguf",
                where or None,
            ) from None
        except (ValueError, IndexError) as err:
            raise CorruptCheckpointError(
                f"tensor {entry.info.name!r}: its {entry.ggml.name} blocks do not decode ({err})", where or None
            ) from None


def _decode_span(
    gguf: Any, raw: np.ndarray, entry: TensorEntry, where: str, start: int, stop: int, buffers: threading.local
) -> np.ndarray:
    """Elements ``start:stop`` of the tensor whose stored blocks are ``raw``, in this thread's buffer of ``buffers``."""
    import numpy as np

    from ckptkit.formats.gguf import dequant as kernels

    block, size = entry.ggml.block, entry.ggml.size
    first, last = start // block, -(-stop // block)
    count = (last - first) * block
    buf = getattr(buffers, "f32", None)
    if buf is None or buf.size < count:
        buf = buffers.f32 = np.empty(count, np.float32)
    out = buf[:count]
    blocks = raw[first * size : last * size]
    if gguf is None:
        kernels.dequantize_into(blocks, entry.ggml.id, out)
    else:
        _bands(gguf, blocks.reshape(last - first, size), out.reshape(last - first, block), entry, where, 0,
               last - first, last - first)  # fmt: skip
    return out[start - first * block : stop - first * block]


def describe_fields(fields: Sequence[Field]) -> dict[str, str]:
    """The metadata as strings for ``inspect``: ``gguf:KEY`` -> value, long arrays summarised.

    String fields named ``ckptkit:*`` (aliases, extras a conversion folded in) keep their own key.
    """
    meta: dict[str, str] = {}
    for f in fields:
        if f.key.startswith("ckptkit:") and f.type == STRING:
            meta[f.key] = f.value
            continue
        meta[PREFIX + f.key] = _describe(f.type, f.value, f.item_type)
    return meta


def _describe(vtype: int, value: Any, item_type: int | None = None) -> str:
    import numpy as np

    if vtype != ARRAY:
        return str(value)
    assert item_type is not None
    n = len(value)
    kind = (
        "strings" if item_type == STRING else "arrays" if item_type == ARRAY else f"{VALUE_TYPES[item_type][0]} values"
    )
    if n > _SHOWN_ITEMS or item_type == ARRAY:
        return f"{n} {kind}"
    items = list(value) if item_type == STRING else np.asarray(value).tolist()
    return json.dumps(items, ensure_ascii=False)


def open_gguf(path: Path, options: Mapping[str, Any]) -> Checkpoint:
    """Open a GGUF file for lazy reading."""
    return GGUFCheckpoint(path)
