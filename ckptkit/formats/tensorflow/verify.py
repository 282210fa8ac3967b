"""Structure checks of a TensorFlow checkpoint, reporting every fault rather than the first.

The index is read block by block (a damaged block is one finding; the others are still checked);
then each entry against its data file: the file exists, holds the bytes the entry names, and they
match the entry's CRC-32C, as TensorFlow checks when it restores a tensor. Partitioned variables
must have every slice, stored as their entry says, covering the variable once; the object graph
must name only tensors the index holds.
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path

import numpy as np

from ckptkit.core import limits
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError
from ckptkit.core.findings import Finding, error, relocated, warning
from ckptkit.io import crc32c
from ckptkit.io.source import Source, list_siblings, open_source, sibling_exists

from . import dtypes
from .paths import INDEX_SUFFIX, Location, data_path, locate
from .protos import Entry, Header, parse_entry, parse_header, parse_object_graph
from .read import OBJECT_GRAPH_KEY, check_header, entry_problem, plan_slices, read_strings
from .table import Table

_VARIANT = 21


def check_structure(path: Path | Source) -> list[Finding]:
    """Every structural fault of the TensorFlow checkpoint ``path`` names.

    A checkpoint at a URL (its index) is checked on a temporary local copy of the index and the data
    files beside it (the checks read every data file's CRC-32C): the same findings, of its URLs."""
    if isinstance(path, Source):
        if path.local_path is not None:
            return check_structure(path.local_path)
        return _remote(path)
    try:
        location = locate(path)
        limits.check("the checkpoint index", location.index.stat().st_size, "header_bytes")
        table = Table(location.index.read_bytes())
    except CkptkitError as err:
        return [error("tensorflow.index", err.message, path)]
    return _Checker(location, table, path).run()


def _remote(source: Source) -> list[Finding]:
    folder_url = source.name.rsplit("/", 1)[0]
    prefix = source.basename.removesuffix(INDEX_SUFFIX)
    with source.local_copy() as copy:
        for name in list_siblings(source.name) or _named_data_files(copy, prefix):
            if name.startswith(prefix + ".data-") and sibling_exists(f"{folder_url}/{name}"):
                open_source(f"{folder_url}/{name}").download(copy.parent / name)
        findings = check_structure(copy)
        return relocated(relocated(findings, copy, source.name), copy.parent, folder_url)


def _named_data_files(index: Path, prefix: str) -> list[str]:
    """The data files the index's header calls for (where the store cannot list a folder)."""
    try:
        header = parse_header(next(Table(index.read_bytes()).items())[1])
    except (CkptkitError, StopIteration):
        return []
    return [data_path(Path(prefix), i, header.num_shards).name for i in range(max(0, min(header.num_shards, 4096)))]


class _Checker:
    def __init__(self, location: Location, table: Table, path: Path) -> None:
        self.location = location
        self.table = table
        self.file = str(path)  # as verify was given it, so its report groups the findings
        self.findings: list[Finding] = []
        self.maps: dict[int, mmap.mmap | None] = {}
        self.sizes: dict[int, int | None] = {}

    def add(self, check: str, message: str, key: bytes = b"") -> None:
        self.findings.append(error(check, message, self.file, key.decode("utf-8", "surrogateescape")))

    def run(self) -> list[Finding]:
        entries = self._entries()
        header = self._header(entries.pop(b"", None))
        if header is None:
            return self.findings
        for i in range(header.num_shards):
            p = data_path(self.location.prefix, i, header.num_shards)
            self.sizes[i] = p.stat().st_size if p.is_file() else None
            if self.sizes[i] is None:
                self.add("tensorflow.shard-missing", f"data file {p.name} is missing")
        referenced: set[bytes] = set()
        for key, value in entries.items():
            if key.startswith(b"\x00"):
                continue
            try:
                entry = parse_entry(value)
            except CorruptCheckpointError as err:
                self.add("tensorflow.entry", f"the entry of {_show(key)} does not parse: {err.message}", key)
                continue
            if entry.slices:
                self._sliced(key, entry, entries, header, referenced)
            else:
                self._whole(key, entry, header)
        orphans = [k for k in entries if k.startswith(b"\x00") and k not in referenced]
        if orphans:
            self.findings.append(
                warning(
                    "tensorflow.orphan-slice",
                    f"{len(orphans)} slice entries belong to no variable of the index",
                    self.file,
                )
            )
        self._graph(entries, header)
        self.maps.clear()
        return self.findings

    def _entries(self) -> dict[bytes, bytes]:
        entries: dict[bytes, bytes] = {}
        last: bytes | None = None
        for number in range(len(self.table.blocks)):
            try:
                for key, value in self.table.block_items(number):
                    if last is not None and key <= last:
                        self.add("tensorflow.index", f"data block {number}: key {_show(key)} is out of order", key)
                    last = key
                    entries.setdefault(key, value)
            except CorruptCheckpointError as err:
                self.add("tensorflow.index", err.message)
        return entries

    def _header(self, raw: bytes | None) -> Header | None:
        if raw is None:
            self.add("tensorflow.index", "the index has no bundle header (the entry with the empty key)")
            return None
        try:
            header = parse_header(raw)
            check_header(header)
        except CkptkitError as err:
            self.add("tensorflow.index", f"the bundle header: {err.message}")
            return None
        return header

    def _view(self, entry: Entry) -> np.ndarray | None:
        if entry.shard_id not in self.maps:
            path = data_path(self.location.prefix, entry.shard_id, len(self.sizes))
            with open(path, "rb") as f:
                self.maps[entry.shard_id] = (
                    mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.sizes[entry.shard_id] else None
                )
        data = self.maps[entry.shard_id]
        if data is None or entry.size == 0:
            return np.zeros(0, np.uint8)
        return np.frombuffer(data, np.uint8, entry.size, entry.offset)

    def _whole(self, key: bytes, entry: Entry, header: Header, what: str = "") -> None:
        what = what or f"tensor {_show(key)}"
        dtype = dtypes.to_ckptkit(entry.dtype)
        if dtype is None and entry.dtype not in dtypes.UNREAD:
            self.add("tensorflow.entry", f"{what} has TensorFlow DataType {entry.dtype}, which does not exist", key)
            return
        if entry.unknown_rank or any(d < 0 for d in entry.shape):
            self.add("tensorflow.entry", f"{what} has no definite shape ({list(entry.shape)})", key)
            return
        nbytes = math.prod(entry.shape) * dtype.itemsize if dtype is not None else None
        problem = entry_problem(what, entry, nbytes, header.num_shards, self.sizes)
        if problem is not None:
            if problem[0] != "tensorflow.shard-missing":  # reported once per file
                self.add(*problem, key)
            return
        if entry.dtype == _VARIANT:
            return  # its checksum covers decoded variant objects
        view = self._view(entry)
        assert view is not None
        if entry.dtype == dtypes.DT_STRING:
            try:
                actual = read_strings(view, 0, entry.size, math.prod(entry.shape))[1]
            except CorruptCheckpointError as err:
                self.add("tensorflow.crc", f"{what}: {err.message}", key)
                return
        else:
            actual = crc32c.value(view)
        if actual != crc32c.unmask(entry.crc32c):
            self.add(
                "tensorflow.crc",
                f"{what} does not match its CRC-32C (stored {crc32c.unmask(entry.crc32c):08x}, computed {actual:08x}): "
                "its bytes changed",
                key,
            )

    def _sliced(
        self, key: bytes, entry: Entry, entries: dict[bytes, bytes], header: Header, referenced: set[bytes]
    ) -> None:
        from .read import slice_key

        what = f"tensor {_show(key)}"
        for piece in entry.slices:
            referenced.add(slice_key(key, piece))
        pieces, problems = plan_slices(what, key, entry, entries)
        for message in problems:
            self.add("tensorflow.slice", message, key)
        for piece, stored in pieces:
            bounds = ",".join(f"{a}:{b}" for a, b in piece.bounds(entry.shape))
            self._whole(key, stored, header, f"{what} slice {bounds}")

    def _graph(self, entries: dict[bytes, bytes], header: Header) -> None:
        raw = entries.get(OBJECT_GRAPH_KEY.encode())
        if raw is None:
            return
        try:
            entry = parse_entry(raw)
            if (
                entry.dtype != dtypes.DT_STRING
                or entry.shape
                or entry_problem("", entry, None, header.num_shards, self.sizes)
            ):
                return  # the entry checks above report it
            view = self._view(entry)
            assert view is not None
            graph = read_strings(view, 0, entry.size, 1)[0][0]
            nodes = parse_object_graph(graph)
        except CorruptCheckpointError as err:
            self.add("tensorflow.object-graph", f"the object graph cannot be read: {err.message}")
            return
        missing = sorted(
            {a.checkpoint_key for n in nodes for a in n.attributes} - {k.decode("utf-8", "replace") for k in entries}
        )
        if missing:
            shown = ", ".join(repr(k) for k in missing[:5])
            self.add("tensorflow.object-graph", f"the object graph names {len(missing)} keys the index lacks: {shown}")


def _show(key: bytes) -> str:
    return repr(key.decode("utf-8", "surrogateescape"))
