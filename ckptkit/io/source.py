"""Where a checkpoint's bytes come from: a local file, or a URL read through fsspec.

:func:`open_source` turns what the user named (``model.safetensors``, ``file:///...``,
``s3://bucket/model.safetensors``, ``gs://``, ``az://``, ``hf://``, ``https://``) into a
:class:`Source`: its ``size``, :meth:`Source.read_at` (one range request for a remote file), and
:meth:`Source.open` (a seekable file object that ``zipfile`` and ``h5py`` accept; remote reads
through it fetch :data:`READAHEAD` bytes at a time, so a header costs little more than its own
size). A local source keeps its ``local_path``: readers map it as before, nothing changes for it.

Credentials and endpoints come from fsspec's usual configuration and the environment
(``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``HF_TOKEN``, ...), plus the options given with
``--storage-option KEY=VALUE`` (:func:`use_storage_options`), passed to the filesystem as they are
(``endpoint_url`` and ``region_name`` are lifted into s3fs's ``client_kwargs``).
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any, cast, overload

from ckptkit.core.errors import CorruptCheckpointError, MissingDependencyError, NoSuchFileError, UsageError

READAHEAD = 64 * 1024  # what a remote file object fetches beyond a read: headers are small
HEAD_KEPT = 64 * 1024  # a first read up to this size is kept for the next reads of the same bytes
# Small reads of structure are kept (per source, at most KEPT_BYTES) for parsers that read it twice
# (a zip's end record and directory, HDF5 metadata); tensor data is read with keep=False.
KEPT_BYTES = 2 * 1024 * 1024
KEPT_READ = 1024 * 1024
RANGE_CHUNK = 32 * 1024 * 1024  # tensor data: large range reads, few round trips
BUFFER_BLOCK = 16 * 1024  # RemoteBuffer: structure is read in blocks this large
BUFFER_BLOCKS_KEPT = 256
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_S3_CLIENT_KEYS = ("endpoint_url", "region_name")

_storage_options: ContextVar[dict[str, Any] | None] = ContextVar("ckptkit_storage_options", default=None)


def is_url(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` is a URL (``scheme://...``) rather than a local path."""
    return isinstance(name, str) and bool(_URL.match(name))


def parse_storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as fsspec options; values that read as JSON (numbers, true, objects) are
    taken as such, anything else as text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--storage-option {pair!r} is not KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


@contextmanager
def use_storage_options(options: Mapping[str, Any] | None) -> Iterator[None]:
    """Within the block, URLs are opened with these fsspec options."""
    token = _storage_options.set(dict(options) if options else None)
    try:
        yield
    finally:
        _storage_options.reset(token)


def current_storage_options() -> dict[str, Any]:
    """The fsspec options :func:`use_storage_options` set for this context (empty if none)."""
    return dict(_storage_options.get() or {})


def _filesystem(url: str, extra: Mapping[str, Any] | None) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError:
        raise MissingDependencyError("reading URLs needs fsspec: pip install 'ckptkit[remote]'") from None
    protocol = url.split("://", 1)[0].lower()
    options = {**(_storage_options.get() or {}), **(extra or {})}
    if protocol in ("s3", "s3a"):
        client = dict(options.pop("client_kwargs", None) or {})
        client.update({k: options.pop(k) for k in _S3_CLIENT_KEYS if k in options})
        if client:
            options["client_kwargs"] = client
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as err:
        raise MissingDependencyError(f"reading {protocol}:// URLs needs another package: {err}") from None
    except ValueError as err:
        raise UsageError(f"cannot read {url}: {err}") from None
    return fs, path


class Source:
    """One input file, local or remote (see the module's description)."""

    def __init__(self, name: str, local_path: Path | None, fs: Any = None, fs_path: str = "", size: int = 0) -> None:
        self.name = name
        self.local_path = local_path
        self._fs = fs
        self._fs_path = fs_path
        self.size = size
        self.bytes_read = 0  # bytes fetched from a remote source, for the curious and the tests
        self._lock = threading.Lock()
        self._head = b""  # the first bytes fetched, kept: detection and the header ask for them again
        self._kept: list[tuple[int, bytes]] = []  # other small reads, newest last (see KEPT_BYTES)

    @property
    def remote(self) -> bool:
        return self.local_path is None

    @property
    def basename(self) -> str:
        return self.name.rstrip("/").rsplit("/", 1)[-1]

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n

    def read_at(self, offset: int, n: int, keep: bool = True) -> bytes:
        """``n`` bytes from ``offset`` (fewer at the end of the file), in one request if remote.

        ``keep=False`` for data read once (tensors): a small read is otherwise kept in memory."""
        if n <= 0:
            return b""
        if self.local_path is not None:
            with open(self.local_path, "rb") as f:
                f.seek(offset)
                return f.read(n)
        end = min(offset + n, self.size)
        if end <= offset:
            return b""
        if end <= len(self._head):
            return self._head[offset:end]
        head = self._head
        if offset == 0 and head and end <= HEAD_KEPT:
            # a parser asking for more of the start than detection read: only the rest is fetched
            longer = head + self.read_at(len(head), end - len(head))
            with self._lock:
                if len(longer) > len(self._head):
                    self._head = longer
            return longer[:end]
        with self._lock:
            for at, piece in reversed(self._kept):
                if at <= offset and end <= at + len(piece):
                    return piece[offset - at : end - at]
        try:
            data: bytes = self._fs.cat_file(self._fs_path, start=offset, end=end)
        except Exception as err:
            if type(err).__name__ != "ClientPayloadError":  # aiohttp: a body shorter than its Content-Length
                raise
            raise self._short(offset, end) from None
        self._count(len(data))
        if offset == 0 and not self._head and len(data) <= HEAD_KEPT:
            self._head = data
        elif keep and len(data) <= KEPT_READ:
            with self._lock:
                self._kept.append((offset, data))
                while sum(len(p) for _, p in self._kept) > KEPT_BYTES:
                    self._kept.pop(0)
        return data

    def forget(self) -> None:
        """Drop the small reads kept so far (a reader has parsed what it needed of them)."""
        with self._lock:
            self._kept.clear()

    def read_into(self, offset: int, out: memoryview) -> None:
        """Fill ``out`` from ``offset``, in ranges of :data:`RANGE_CHUNK`; a short file is an error."""
        done = 0
        while done < len(out):
            chunk = self.read_at(offset + done, min(RANGE_CHUNK, len(out) - done), keep=False)
            if not chunk:
                raise self._short(offset + done, offset + len(out))
            out[done : done + len(chunk)] = chunk
            done += len(chunk)

    def chunks(self) -> Iterator[bytes]:
        """The whole file, in order, in pieces of at most :data:`RANGE_CHUNK` bytes; a file that
        ends before its ``size`` is an error rather than fewer bytes."""
        done = 0
        while done < self.size:
            chunk = self.read_at(done, min(RANGE_CHUNK, self.size - done), keep=False)
            if not chunk:
                raise self._short(done, self.size)
            yield chunk
            done += len(chunk)

    def _short(self, at: int, wanted: int) -> CorruptCheckpointError:
        # a remote object shorter than announced (cut, or replaced while being read)
        return CorruptCheckpointError(
            f"the file ends at byte {at}, before byte {wanted} that was to be read "
            f"(truncated, or changed while being read; {self.size} bytes announced)",
            path=self.name,
        )

    def ranges(self) -> IO[bytes]:
        """A seekable file object whose every read is one :meth:`read_at`: for a parser that knows
        how much it wants (a length, then that many bytes), nothing is fetched beyond it."""
        if self.local_path is not None:
            return open(self.local_path, "rb")
        return cast(IO[bytes], _RangeReader(self))

    def open(self, readahead: int = READAHEAD) -> IO[bytes]:
        """A seekable binary file object over the source (closed by the caller); a remote one
        fetches ``readahead`` bytes beyond each read."""
        if self.local_path is not None:
            return open(self.local_path, "rb")
        f = self._fs.open(self._fs_path, "rb", block_size=readahead, cache_type="readahead")
        return cast(IO[bytes], _CountingFile(f, self))

    @contextmanager
    def local_copy(self) -> Iterator[Path]:
        """The file as a local path: its own for a local source; for a remote one, a temporary copy
        named like the URL's file (fetched in :data:`RANGE_CHUNK` ranges, removed on leaving), for a
        check that reads every byte of a mapped file (a zip's local headers and CRC-32s)."""
        if self.local_path is not None:
            yield self.local_path
            return
        with tempfile.TemporaryDirectory(prefix="ckptkit-") as folder:
            copy = Path(folder, self.basename or "file")
            self.download(copy)
            yield copy

    def download(self, target: Path) -> None:
        """Write the file's bytes to ``target``, :data:`RANGE_CHUNK` at a time."""
        with open(target, "wb") as out:
            for chunk in self.chunks():
                out.write(chunk)


class RemoteBuffer:
    """The bytes of a remote source as a read-only sequence (``len``, ``buf[i]``, ``buf[a:b]``),
    fetched in :data:`BUFFER_BLOCK` blocks as they are indexed: a parser that walks a structure by
    offsets (a protobuf) reads the parts it visits, and the data it skips is never fetched."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._blocks: dict[int, bytes] = {}

    def __len__(self) -> int:
        return self.source.size

    def _block(self, n: int) -> bytes:
        block = self._blocks.get(n)
        if block is None:
            if len(self._blocks) >= BUFFER_BLOCKS_KEPT:
                self._blocks.pop(next(iter(self._blocks)))
            block = self._blocks[n] = self.source.read_at(n * BUFFER_BLOCK, BUFFER_BLOCK, keep=False)
        return block

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        at = self[start : self.source.size if end is None else end].find(sub)
        return at if at < 0 else start + at

    @overload
    def __getitem__(self, key: int) -> int: ...
    @overload
    def __getitem__(self, key: slice) -> bytes: ...
    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.source.size)
            if step != 1:
                raise ValueError("a RemoteBuffer is sliced with step 1 only")
            if stop <= start:
                return b""
            if stop - start > BUFFER_BLOCK:  # a payload, not structure: one read, not kept
                return self.source.read_at(start, stop - start, keep=False)
            first, last = start // BUFFER_BLOCK, (stop - 1) // BUFFER_BLOCK
            data = b"".join(self._block(n) for n in range(first, last + 1))
            return data[start - first * BUFFER_BLOCK : stop - first * BUFFER_BLOCK]
        if key < 0:
            key += self.source.size
        if not 0 <= key < self.source.size:
            raise IndexError("RemoteBuffer index out of range")
        return self._block(key // BUFFER_BLOCK)[key % BUFFER_BLOCK]


class _RangeReader(io.RawIOBase):
    def __init__(self, source: Source) -> None:
        self._source = source
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._source.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        data = self._source.read_at(self._pos, len(buffer))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


class _CountingFile:
    """A remote file object that fetches through its source's :meth:`Source.read_at`."""

    def __init__(self, f: Any, source: Source) -> None:
        self._f = f
        self._source = source
        # Through read_at: counted, and small reads another parser made already come from memory.
        f.cache.fetcher = lambda start, end: source.read_at(start, end - start)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._f.read(n)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer).cast("B")))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def readline(self, limit: int = -1) -> bytes:
        # fsspec's readline takes no limit; a pickle reader passes one (a bound on what it accepts)
        if limit is None or limit < 0:
            line: bytes = self._f.readline()
            return line
        start = self._f.tell()
        data: bytes = self._f.read(limit)
        cut = data.find(b"\n")
        if cut >= 0:
            data = data[: cut + 1]
            self._f.seek(start + len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        pos: int = self._f.seek(offset, whence)
        return pos

    def tell(self) -> int:
        pos: int = self._f.tell()
        return pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def open_source(name: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Source:
    """The source ``name`` names: a local path (or ``file://`` URL) or a remote URL, which must exist
    and be a file (:class:`NoSuchFileError` otherwise)."""
    text = os.fspath(name)
    if not is_url(text):
        return Source(text, Path(text))
    if text.lower().startswith("file://"):
        return Source(text, Path(text[len("file://") :]))
    fs, path = _filesystem(text, storage_options)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise NoSuchFileError("no such file", text) from None
    except OSError as err:
        raise UsageError(f"cannot reach {text}: {err}") from None
    if info.get("type") == "directory":
        raise UsageError("this URL names a folder; name the checkpoint file (or its .index.json) in it", text)
    return Source(text, None, fs, path, int(info.get("size") or 0))


def sibling_exists(url: str) -> bool:
    """Whether the file at ``url`` exists (a shard beside a remote index)."""
    try:
        open_source(url)
    except NoSuchFileError:
        return False
    return True


def list_siblings(url: str) -> list[str]:
    """The names of the files beside ``url``; empty where the store cannot list (a plain HTTP server)."""
    folder = url.rsplit("/", 1)[0]
    fs, path = _filesystem(folder, None)
    try:
        entries = fs.ls(path, detail=False)
    except (OSError, ValueError, NotImplementedError):
        return []
    return [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]
