"""Writing a TensorFlow checkpoint: ``PREFIX.index`` and one data file, as TensorFlow's BundleWriter does.

The output is name-based (each tensor keyed by its name, as a TF1 ``Saver`` or
``tf.train.load_checkpoint`` sees it) unless the object graph is known, when it is object-based
(``tf.train.Checkpoint(...).restore`` finds each variable through the graph):

- from a TF2 object-based checkpoint read by ckptkit, whose graph and keys travel in the metadata
  (``tensorflow:object_graph``, ``tensorflow:keys``); graph entries for tensors left out are
  removed, so TensorFlow restores what is there and leaves the rest as it was;
- with ``--template``, an object-based checkpoint of the same model (any TensorFlow wrote for it):
  its graph and keys are used, and the checkpoint's tensors are matched to its variables by name,
  every shape and dtype checked.

Data is copied tensor by tensor. Where a tensor's bytes lie in a file, they are copied in the kernel,
the output padded (TensorFlow's reader follows offsets and ignores the gaps) so that source and
destination offsets agree modulo the page size, while the CRC-32C is computed from the source's
bytes on another thread; a check of the copy (verify-after-write) compares the copy's CRC-32C with
that one. The index is written byte for byte as TensorFlow writes it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ckptkit.core.dtypes import DType, by_name
from ckptkit.core.errors import CorruptCheckpointError, UnsupportedError, UsageError
from ckptkit.core.format import WriteContext
from ckptkit.core.model import Checkpoint, ProgressFn, RawExtent
from ckptkit.core.names import utf8_text
from ckptkit.io import crc32c
from ckptkit.io.streaming import TensorCopier
from ckptkit.io.workers import default_executor

from . import dtypes
from .names import VARIABLE_VALUE
from .paths import INDEX_SUFFIX, data_path, existing_data_files, index_path
from .protos import Entry, Header, Node, encode_object_graph, parse_object_graph
from .read import EXTRAS_META, GRAPH_META, KEYS_META, OBJECT_GRAPH_KEY
from .table import TableBuilder

if TYPE_CHECKING:
    import numpy as np

_PAGE = 4096
_ALIGN_FROM = 64 * 1024  # tensors this large are placed to copy in the kernel; smaller ones are packed


@dataclass
class _Item:
    key: str
    name: str | None  # tensor of the checkpoint, or None for a value given directly
    code: int  # TensorFlow DataType
    shape: tuple[int, ...]
    value: np.ndarray | bytes | None = None


def output_prefix(path: Path) -> Path:
    """The prefix to write: DST itself, or DST without ``.index``."""
    return path.with_name(path.name[: -len(INDEX_SUFFIX)]) if path.name.endswith(INDEX_SUFFIX) else path


def write_bundle(ckpt: Checkpoint, ctx: WriteContext) -> None:
    prefix = output_prefix(ctx.output.path)
    if not prefix.name:
        raise UsageError("name the checkpoint's prefix (such as ckpt-1)")
    template = ctx.options.get("template")
    graph, keys = _from_template(ckpt, Path(template), ctx.notes) if template else _from_metadata(ckpt)
    items = _items(ckpt, keys, ctx.notes)
    if graph is not None:
        written = {i.key for i in items}
        items += _extras(ckpt, written, ctx.notes)
        nodes = _prune(graph, {i.key for i in items}, ctx.notes)
        blob = encode_object_graph(nodes)
        items.append(_Item(OBJECT_GRAPH_KEY, None, dtypes.DT_STRING, (), blob))
    elif ckpt.extras:
        ctx.notes.append(f"{len(ckpt.extras)} non-tensor extras not stored: TensorFlow checkpoints hold tensors only")
    _check_keys(items)
    data_final = data_path(prefix, 0, 1)
    ctx.output.set_main(index_path(prefix))
    ctx.output.replaces([p for p in existing_data_files(prefix) if p != data_final])
    entries = _write_data(ckpt, items, ctx.output.temp_for(data_final), ctx.progress)
    with open(ctx.output.temp_for(), "wb") as f:
        builder = TableBuilder(f)
        builder.add(b"", Header().encode())
        for key in sorted(entries, key=lambda k: k.encode("utf-8", "surrogateescape")):
            builder.add(key.encode("utf-8"), entries[key].encode())
        builder.finish()
    kind = "object-based" if graph is not None else "name-based"
    ctx.notes.append(f"{kind} TensorFlow checkpoint, prefix {prefix.name}")


def _from_metadata(ckpt: Checkpoint) -> tuple[list[Node] | None, dict[str, str]]:
    """The object graph and name -> key map a TF2 checkpoint read by ckptkit carries in its metadata."""
    text = ckpt.metadata.get(GRAPH_META)
    if not text:
        return None, {}
    try:
        graph = parse_object_graph(base64.b64decode(text.encode("ascii"), validate=True))
    except (binascii.Error, UnicodeEncodeError):
        raise CorruptCheckpointError(f"metadata {GRAPH_META} is not base64 text") from None
    keys = _json_map(ckpt.metadata.get(KEYS_META, "{}"), KEYS_META)
    return graph, keys


def _json_map(text: str, what: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise CorruptCheckpointError(f"metadata {what} is not JSON") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise CorruptCheckpointError(f"metadata {what} is not a map of names to keys")
    return value


def _from_template(ckpt: Checkpoint, template: Path, notes: list[str]) -> tuple[list[Node], dict[str, str]]:
    """The template's graph and keys; every template variable must have a tensor of its name and shape."""
    from ckptkit import registry

    from .read import TensorFlowCheckpoint

    located = registry.locate(template)
    if not located.exists():
        raise UsageError("the --template checkpoint does not exist", template)
    kind = registry.detect(located).name
    if kind != "tensorflow":
        raise UsageError(
            f"the --template is a {kind} file, not a TensorFlow checkpoint; a TensorFlow checkpoint of the model "
            "gives the object graph to write (tf.train.Checkpoint(model=model).write(PREFIX) writes one)",
            template,
        )
    with registry.open_checkpoint(located) as tpl:
        if not isinstance(tpl, TensorFlowCheckpoint) or GRAPH_META not in tpl.metadata:
            raise UsageError(
                "the --template is a name-based TensorFlow checkpoint, with no object graph to write; give an "
                "object-based one (tf.train.Checkpoint(model=model).write(PREFIX) writes one)",
                template,
            )
        graph, keys = _from_metadata(tpl)
        wanted = {ti.name: ti for ti in tpl.tensor_infos()}
        optimizer = tpl.optimizer_names
    have = {ti.name: ti for ti in ckpt.tensor_infos()}
    missing = [n for n in wanted if n not in have and n not in optimizer]
    if missing:
        raise UsageError(
            f"the template's variables {_few(missing)} have no tensor of that name in the checkpoint; rename the "
            "checkpoint's tensors to the template's names (ckptkit inspect shows both)"
        )
    extra = [n for n in have if n not in wanted]
    if extra:
        raise UsageError(
            f"the checkpoint has tensors the template has no variable for: {_few(extra)}; leave them out with --exclude"
        )
    for name, want in wanted.items():
        got = have.get(name)
        if got is not None and (got.shape != want.shape or got.dtype != want.dtype):
            raise UsageError(
                f"template variable {name!r} is {want.dtype.name} {list(want.shape)}, but the checkpoint's tensor is "
                f"{got.dtype.name} {list(got.shape)}"
            )
    skipped = [n for n in wanted if n in optimizer and n not in have]
    if skipped:
        notes.append(f"{len(skipped)} optimizer variables of the template not in the checkpoint: left out")
    assert graph is not None
    return graph, keys


def _code(dtype: DType, name: str) -> int:
    code = dtypes.to_tensorflow(dtype)
    if code is None:
        raise UnsupportedError(
            f"tensor {name!r} is {dtype.name}, which TensorFlow checkpoints cannot hold; convert with --dtype to "
            f"cast it, leave it out with --exclude '{name}', or choose another format"
        )
    return code


def _items(ckpt: Checkpoint, keys: dict[str, str], notes: list[str]) -> list[_Item]:
    items = [
        _Item(keys.get(ti.name, ti.name), ti.name, _code(ti.dtype, ti.name), ti.shape) for ti in ckpt.tensor_infos()
    ]
    for alias, target in ckpt.aliases.items():
        ti = ckpt.info(target)
        items.append(_Item(keys.get(alias, alias), target, _code(ti.dtype, alias), ti.shape))
    if ckpt.aliases:
        notes.append(f"{len(ckpt.aliases)} tied tensor(s) stored once per name: TensorFlow checkpoints have no aliases")
    return items


def _extras(ckpt: Checkpoint, written: set[str], notes: list[str]) -> list[_Item]:
    """The scalar variables (save_counter, step) a TF2 checkpoint had, written back from the extras."""
    import numpy as np

    known = json.loads(ckpt.metadata.get(EXTRAS_META, "{}") or "{}")
    out = []
    for name, value in ckpt.extras.items():
        spec = known.get(name) if isinstance(known, dict) else None
        if not (isinstance(spec, list) and len(spec) == 2 and all(isinstance(s, str) for s in spec)):
            continue
        key, dtype_name = spec
        if key in written or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        dtype = by_name(dtype_name)
        out.append(_Item(key, None, _code(dtype, name), (), np.array(value, dtype.numpy)))
    dropped = len(ckpt.extras) - len(out)
    if dropped:
        notes.append(f"{dropped} non-tensor extras not stored: TensorFlow checkpoints hold tensors only")
    return out


def _prune(nodes: list[Node], keys: set[str], notes: list[str]) -> list[Node]:
    """The graph with attributes whose tensor is not written removed (TensorFlow would fail to find them)."""
    removed = 0
    out = []
    for node in nodes:
        kept = [a for a in node.attributes if a.checkpoint_key in keys]
        removed += len(node.attributes) - len(kept)
        slots = [
            s
            for s in node.slot_variables
            if any(a.checkpoint_key in keys for a in nodes[s.slot_variable_node_id].attributes)
        ]
        out.append(Node(list(node.children), kept, slots, node.other))
    if removed:
        notes.append(
            f"{removed} variables of the object graph are not in the checkpoint: TensorFlow leaves them as they are"
        )
    unreached = sorted(keys - {a.checkpoint_key for n in out for a in n.attributes if a.name == VARIABLE_VALUE})
    unreached = [k for k in unreached if k != OBJECT_GRAPH_KEY]
    if unreached:
        notes.append(
            f"{len(unreached)} tensors are not in the object graph ({_few(unreached)}): tf.train.Checkpoint does not "
            "restore them, tf.train.load_checkpoint reads them"
        )
    return out


def _check_keys(items: list[_Item]) -> None:
    seen: set[str] = set()
    for item in items:
        utf8_text(item.key, "TensorFlow")
        if not item.key or item.key.startswith("\0"):
            raise UnsupportedError(f"tensor name {item.key!r} cannot be a TensorFlow checkpoint key; rename it")
        if item.key in seen:
            raise UnsupportedError(f"two tensors would be stored under the key {item.key!r}")
        seen.add(item.key)


class _SourceChecksums:
    """Tensor bytes in source files, read by position: whole for small tensors, as a CRC-32C
    (:func:`ckptkit.io.crc32c.of_file`) for large ones."""

    def __init__(self) -> None:
        self._files: dict[Path, int] = {}
        self._lock = threading.Lock()

    def _fd(self, path: Path) -> int:
        with self._lock:
            fd = self._files.get(path)
            if fd is None:
                fd = self._files[path] = os.open(path, os.O_RDONLY)
            return fd

    def read(self, extent: RawExtent, start: int, n: int) -> bytes:
        data = os.pread(self._fd(extent.path), n, extent.offset + start)
        if len(data) < n:
            raise CorruptCheckpointError(f"{extent.path} ends before the tensor at byte {extent.offset} does")
        return data

    def crc(self, extent: RawExtent) -> int:
        try:
            return crc32c.of_file(self._fd(extent.path), extent.offset, extent.nbytes)
        except EOFError:
            raise CorruptCheckpointError(f"{extent.path} ends before the tensor at byte {extent.offset} does") from None

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()


def _write_data(ckpt: Checkpoint, items: list[_Item], path: Path, progress: ProgressFn | None) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    pending: list[tuple[str, Entry, Future[int]]] = []
    # The CRC of a tensor copied in the kernel is computed from the source file on a worker thread
    # meanwhile; leaving the stream waits for every checksum (before the source files close).
    with (
        contextlib.closing(_SourceChecksums()) as sources,
        open(path, "wb") as out,
        TensorCopier() as copier,
        default_executor().stream() as checksums,
    ):
        for item in items:
            if item.value is not None:
                offset, size, crc = _write_value(item, out)
                entries[item.key] = Entry(item.code, item.shape, 0, offset, size, crc32c.mask(crc))
                continue
            assert item.name is not None
            extent = ckpt.raw_extent(item.name)
            if extent is not None and extent.nbytes < _ALIGN_FROM:  # small: packed, its bytes read as they are
                offset = out.tell()
                raw_bytes = sources.read(extent, 0, extent.nbytes)
                out.write(raw_bytes)
                entries[item.key] = Entry(
                    item.code, item.shape, 0, offset, extent.nbytes, crc32c.mask(crc32c.value(raw_bytes))
                )
                if progress:
                    progress(extent.nbytes)
                continue
            if extent is None:
                import numpy as np  # only a tensor that has to be decoded needs it

                offset = out.tell()
                data = np.ascontiguousarray(ckpt.read_tensor(item.name))
                raw = data.reshape(-1).view(np.uint8) if data.size else np.zeros(0, np.uint8)
                out.write(raw.data)
                entries[item.key] = Entry(item.code, item.shape, 0, offset, raw.size, crc32c.mask(crc32c.value(raw)))
                if progress:
                    progress(raw.size)
                continue
            offset = out.tell()
            pad = (extent.offset - offset) % _PAGE
            if pad:
                out.write(bytes(pad))
                offset += pad
            checksum = checksums.submit(sources.crc, extent)
            copier.copy_extent(extent, out, progress, checksum)
            pending.append((item.key, Entry(item.code, item.shape, 0, offset, extent.nbytes), checksum))
    for key, entry, fut in pending:
        entries[key] = Entry(entry.dtype, entry.shape, 0, entry.offset, entry.size, crc32c.mask(fut.result()))
    return entries


def _write_value(item: _Item, out: BinaryIO) -> tuple[int, int, int]:
    """A value given directly (an extra, or the object graph as a string scalar); returns offset, size, CRC."""
    import numpy as np

    offset = out.tell()
    if isinstance(item.value, np.ndarray):
        raw = np.ascontiguousarray(item.value).tobytes()
        out.write(raw)
        return offset, len(raw), crc32c.value(raw)
    # A string scalar (WriteStringTensor): varint length, the masked CRC-32C of the length (as
    # uint32), then the bytes; the entry's CRC covers the length, that checksum and the bytes.
    assert item.value is not None
    blob = item.value
    length = len(blob)
    varint = bytearray()
    n = length
    while n >= 0x80:
        varint.append((n & 0x7F) | 0x80)
        n >>= 7
    varint.append(n)
    crc = crc32c.value(length.to_bytes(4 if length < 1 << 32 else 8, "little"))
    length_crc = crc32c.mask(crc).to_bytes(4, "little")
    crc = crc32c.extend(crc32c.extend(crc, length_crc), blob)
    out.write(bytes(varint) + length_crc + blob)
    return offset, len(varint) + 4 + length, crc


def _few(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")
