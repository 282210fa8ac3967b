"""Tensor manifests: every tensor's content hash, every file's SHA-256, and the root hash.

``ckptkit hash`` writes one; ``ckptkit verify --manifest`` checks a checkpoint against it. Tensor
hashes do not depend on the file format (see :mod:`ckptkit.hashing.tensors`), so a manifest made from a
PyTorch file also holds for its safetensors, Keras or ONNX conversion. Tied weights (aliases) are
listed under each of their names with the hash of the tensor they share, so a conversion that
stores them twice or once hashes alike.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptkit import registry
from ckptkit.core.errors import CorruptCheckpointError, UsageError
from ckptkit.core.model import Checkpoint, ProgressFn, refuse_unsupported
from ckptkit.core.views import name_matches, transform
from ckptkit.hashing.scan import ScanResult, scan
from ckptkit.hashing.tensors import ROOT_ENCODING, TENSOR_ENCODING, file_sha256, root_hash
from ckptkit.io.jsonfile import read_user_json
from ckptkit.io.shards.index import ShardIndex, read_index, single_index
from ckptkit.io.source import Source, is_url, open_source
from ckptkit.io.workers import shard_executor

SCHEMA = "ckptkit.hashing.manifest/1"


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    sha256: str
    alias_of: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": self.dtype, "shape": list(self.shape), "sha256": self.sha256}
        if self.alias_of is not None:
            out["alias_of"] = self.alias_of
        return out


@dataclass
class Manifest:
    """What ``ckptkit hash`` records about a checkpoint (JSON schema ``ckptkit.hashing.manifest/1``)."""

    path: str
    format: str
    tensors: dict[str, TensorEntry]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name relative to the checkpoint's folder
    index: str | None = None  # the shard index's file name, for sharded checkpoints
    excluded: list[str] = field(default_factory=list)  # --exclude patterns: those tensors are not described

    @property
    def root(self) -> str:
        return root_hash(e.sha256 for e in self.tensors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "encoding": {"tensor": TENSOR_ENCODING, "root": ROOT_ENCODING},
            "path": self.path,
            "format": self.format,
            "index": self.index,
            "root": self.root,
            "tensor_count": len(self.tensors),
            "files": self.files,
            "tensors": {name: e.to_dict() for name, e in self.tensors.items()},
            "excluded": list(self.excluded),
        }

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read a manifest file; a file that is not one is a usage error (exit 2)."""
        data = read_user_json(path, "manifest", "ckptkit hash -o")
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise UsageError(f"not a ckptkit manifest (schema {SCHEMA}); make one with ckptkit hash -o", path)
        encoding = data.get("encoding") or {}
        if encoding.get("tensor") != TENSOR_ENCODING:
            raise UsageError(
                f"the manifest uses tensor encoding {encoding.get('tensor')!r}, not {TENSOR_ENCODING}", path
            )
        try:
            tensors = {
                str(name): TensorEntry(
                    str(e["dtype"]), tuple(int(d) for d in e["shape"]), str(e["sha256"]), e.get("alias_of")
                )
                for name, e in data["tensors"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UsageError("the manifest's tensors need dtype, shape and sha256 each", path) from None
        return cls(
            str(data.get("path", "")),
            str(data.get("format", "")),
            tensors,
            dict(data.get("files") or {}),
            data.get("index"),
            [str(p) for p in data.get("excluded") or []],
        )


def entries_from_scan(ckpt: Checkpoint, result: ScanResult) -> dict[str, TensorEntry]:
    """Manifest entries of one checkpoint's scan, aliases included; a tensor that could not be read raises."""
    entries: dict[str, TensorEntry] = {}
    for name, r in result.tensors.items():
        if r.error is not None or r.sha256 is None:
            raise CorruptCheckpointError(
                f"tensor {name!r} cannot be read: {r.error}; run ckptkit verify for a full report", ckpt.path
            )
        entries[name] = TensorEntry(r.dtype.name, r.shape, r.sha256)
    for alias, target in ckpt.aliases.items():
        e = entries[target]
        entries[alias] = TensorEntry(e.dtype, e.shape, e.sha256, alias_of=target)
    return entries


def files_of(ckpt: Checkpoint) -> list[Path]:
    """The files a checkpoint's tensors come from: its own path, the data files its format names
    (a TensorFlow data file may hold only slices of partitioned variables, which no tensor lies in
    as-is) and any other file a tensor lies in."""
    found: dict[Path, None] = {}
    if ckpt.path is not None and Path(ckpt.path).is_file():
        found[Path(ckpt.path)] = None
    for path in ckpt.data_files():
        if Path(path).is_file():  # a missing one is verify's to report
            found.setdefault(Path(path), None)
    for ti in ckpt.tensor_infos():
        extent = ckpt.raw_extent(ti.name)
        if extent is not None:
            found.setdefault(Path(extent.path), None)
    return list(found)


def _file_records(base: Path, hashes: Mapping[Path, str | None]) -> dict[str, dict[str, Any]]:
    """Name relative to ``base`` -> size, and SHA-256 where the file was hashed."""
    records: dict[str, dict[str, Any]] = {}
    for p, digest in hashes.items():
        record: dict[str, Any] = {"sha256": digest} if digest is not None else {}
        records[Path(os.path.relpath(p, base)).as_posix()] = {**record, "bytes": p.stat().st_size}
    return records


class HashJob:
    """``ckptkit hash`` of one path, prepared: the shard index the path stands for (a file, an
    index, or a folder holding one) is read here, once, so that :attr:`nbytes` is known before
    :meth:`run` reads anything."""

    def __init__(self, path: str | Path, format: str | None = None) -> None:
        self.url = str(path) if is_url(path) else None
        self.path = Path(path) if self.url is not None else registry.locate(Path(path))
        self.format = format
        if self.url is not None:
            self.source: Source | None = open_source(self.url)
            self.index: ShardIndex | None = None
            return
        self.source = None
        index_path = None if format else single_index(self.path)
        self.index = read_index(index_path) if index_path is not None else None

    @property
    def nbytes(self) -> int:
        """Bytes of the files the manifest describes: the checkpoint file, or the shards."""
        if self.index is not None:
            return self.index.shard_bytes()
        if self.source is not None:
            return self.source.size
        return self.path.stat().st_size if self.path.is_file() else 0

    def run(
        self,
        *,
        workers: int | None = None,
        progress: ProgressFn | None = None,
        file_hashes: bool = True,
        exclude: Sequence[str] = (),
    ) -> Manifest:
        """The manifest (see :func:`build_manifest`)."""
        if self.index is not None:
            return _sharded_manifest(self.index, workers, progress, file_hashes, exclude)
        if self.url is not None and self.source is not None and self.source.remote:
            return self._remote(self.url, self.source, workers, progress, file_hashes, exclude)
        with registry.open_checkpoint(self.path, self.format) as opened:
            ckpt = _excluding(opened, exclude)
            files = files_of(ckpt)
            result = scan(ckpt, hashes=True, files=files if file_hashes else (), workers=workers, progress=progress)
            base = self.path if self.path.is_dir() else self.path.parent
            records = _file_records(base, {f: result.files.get(f) for f in files})
            return Manifest(
                str(self.path), ckpt.format_name, entries_from_scan(ckpt, result), records, excluded=list(exclude)
            )

    def _remote(
        self,
        url: str,
        source: Source,
        workers: int | None,
        progress: ProgressFn | None,
        file_hashes: bool,
        exclude: Sequence[str],
    ) -> Manifest:
        """A file at a URL: the same manifest as for a local copy, but for its ``path``. A shard
        index lists its own file and its shards', an ONNX model its external data files, named
        relative to its folder as for a local copy (the checkpoint's ``sources``)."""
        with registry.open_checkpoint(url, self.format) as opened:
            ckpt = _excluding(opened, exclude)
            result = scan(ckpt, hashes=True, workers=workers, progress=progress)
            sources: list[Source] = getattr(opened, "sources", None) or [source]
            folder = url.rsplit("/", 1)[0] + "/"
            records: dict[str, dict[str, Any]] = {}
            for s in sources:
                record: dict[str, Any] = {"sha256": _remote_file_sha256(s, progress)} if file_hashes else {}
                records[s.name.removeprefix(folder)] = {**record, "bytes": s.size}
            shard_format = getattr(opened, "shard_format", None)
            sharded = shard_format is not None
            fmt = shard_format or ckpt.format_name
            index = source.basename if sharded else None
            return Manifest(url, fmt, entries_from_scan(ckpt, result), records, index=index, excluded=list(exclude))


def _remote_file_sha256(source: Source, progress: ProgressFn | None) -> str:
    digest = hashlib.sha256()
    for chunk in source.chunks():
        digest.update(chunk)
        if progress is not None:
            progress(len(chunk))
    return digest.hexdigest()


def build_manifest(
    path: str | Path,
    format: str | None = None,
    *,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    file_hashes: bool = True,
    exclude: Sequence[str] = (),
) -> Manifest:
    """Hash a checkpoint (a file, or a shard index or the folder holding one).

    With ``file_hashes=False`` the files are listed with their sizes but not hashed whole: every
    byte is then hashed once (for its tensor) instead of twice, and tensor hashes and the root are
    the same. ``exclude`` (``--exclude`` patterns) leaves tensors out, as ``convert --exclude``
    does; a tensor ckptkit cannot read must be left out, or the manifest is refused
    (:class:`~ckptkit.core.errors.UnsupportedError`): a root hash never silently skips a tensor.
    ``workers`` is an explicit request for threads (:func:`ckptkit.io.workers.worker_count`).
    """
    return HashJob(path, format).run(workers=workers, progress=progress, file_hashes=file_hashes, exclude=exclude)


def _excluding(ckpt: Checkpoint, exclude: Sequence[str]) -> Checkpoint:
    """``ckpt`` without the tensors ``exclude`` names, refused if one ckptkit cannot read is left."""
    view = transform(ckpt, exclude=exclude) if any(name_matches(n, exclude) for n in _all_names(ckpt)) else ckpt
    refuse_unsupported(view)
    return view


def _all_names(ckpt: Checkpoint) -> list[str]:
    return [*ckpt.names(), *ckpt.aliases, *ckpt.unsupported]


@dataclass(frozen=True)
class _ShardHash:
    """Hashing one shard: a plain record, so that it can run on another process."""

    ckpt: Checkpoint
    exclude: tuple[str, ...]
    file_hashes: bool
    workers: int | None
    progress: ProgressFn | None
    ties: Mapping[str, str] = field(default_factory=dict)  # the index's aliases of this shard's tensors


def hash_shard(task: _ShardHash) -> tuple[dict[str, TensorEntry], str, dict[Path, str | None]]:
    """One shard's manifest entries, format name and file digests."""
    # The shard is this task's own (reopened from its recipe on a remote worker): a tie the index
    # records becomes its alias and is hashed as a single file's alias is, --exclude included.
    task.ckpt.aliases.update(task.ties)
    ckpt = _excluding(task.ckpt, task.exclude)
    files = files_of(ckpt)
    result = scan(
        ckpt, hashes=True, files=files if task.file_hashes else (), workers=task.workers, progress=task.progress
    )
    return entries_from_scan(ckpt, result), ckpt.format_name, {f: result.files.get(f) for f in files}


def _ties(index: ShardIndex, shards: Mapping[str, Checkpoint]) -> dict[str, dict[str, str]]:
    """Each shard's part of the index's aliases: the ties to the tensors it holds."""
    ties: dict[str, dict[str, str]] = {}
    for shard, opened in shards.items():
        held = set(opened.names())
        ties[shard] = {alias: target for alias, target in index.aliases.items() if target in held}
    return ties


def _sharded_manifest(
    index: ShardIndex, workers: int | None, progress: ProgressFn | None, file_hashes: bool, exclude: Sequence[str]
) -> Manifest:
    for fault in index.repeat_faults():
        raise CorruptCheckpointError(fault.message, index.path)
    index.check_shards()
    tensors: dict[str, TensorEntry] = {}
    hashes: dict[Path, str | None] = {}
    formats: list[str] = []
    with ExitStack() as stack:
        # Every shard is opened (headers only) before any is hashed, so a misplaced tensor stops
        # the command before it reads gigabytes.
        shards = {s: stack.enter_context(registry.open_checkpoint(index.shard_path(s))) for s in index.shard_names}
        index.check_placement({shard: _all_names(opened) for shard, opened in shards.items()})
        index.check_aliases({shard: opened.names() for shard, opened in shards.items()})
        ties = _ties(index, shards)
        todo = [
            (opened, ties[shard])
            for shard, opened in shards.items()
            if not (exclude and all(name_matches(n, exclude) for n in [*_all_names(opened), *ties[shard]]))
        ]
        # Locally, one shard after another, each on all threads; on a cluster, a shard per task.
        runner = shard_executor(concurrent=False, workers=1)
        here = not runner.remote
        tasks = [_ShardHash(o, tuple(exclude), file_hashes, workers if here else None, progress if here else None, t)
                 for o, t in todo]  # fmt: skip
        for entries, format_name, file_digests in runner.map(hash_shard, tasks):
            tensors.update(entries)
            formats.append(format_name)
            hashes.update(file_digests)
    hashes = {index.path: file_sha256(index.path) if file_hashes else None, **hashes}
    fmt = formats[0] if len(set(formats)) == 1 else "mixed"
    records = _file_records(index.folder, hashes)
    return Manifest(str(index.path), fmt, tensors, records, index.path.name, list(exclude))
