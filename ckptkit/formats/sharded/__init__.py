"""Checkpoints split over several files, and folders that hold a checkpoint, read as one.

A shard index (Hugging Face ``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``,
Keras 3 ``model.weights.json``; see :mod:`ckptkit.io.shards.index`) says which file holds what. Each
shard is opened with whichever format reads it (so shards of any readable format work) and its
tensors are served from there; nothing is read until asked for. The index is checked first: shard
names may not leave the index's folder, every shard must exist, and every tensor must be in
exactly one shard, the one the index names.

A folder is accepted wherever a file is: ckptkit reads the shard index or checkpoint file in it,
preferring what ``transformers`` would load (``model.safetensors``, then its index, then
``pytorch_model.bin``, then its index). Formats that are folders themselves (torch.distributed.checkpoint) are
registered before this one and claim theirs first; this format does not claim such a folder.

Reading only: a format writes shards by wrapping its single-file writer with
:func:`ckptkit.io.shards.write.shardable`. Index parsing lives in :mod:`ckptkit.io.shards.index`
and the index checks of ``ckptkit verify`` in :mod:`ckptkit.verify.shards`. The dtype column is
every dtype: an index holds whatever its shards' formats hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptkit import registry
from ckptkit.core.dtypes import dtype_names
from ckptkit.core.errors import READ_ERRORS, CkptkitError, CorruptCheckpointError, NoSuchFileError
from ckptkit.core.format import Format
from ckptkit.core.metadata import ALIASES_KEY, EXTRAS_KEY
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.io.paths import is_inside_url_name
from ckptkit.io.shards.index import KERAS_INDEX_SUFFIX, ShardIndex, read_index, read_remote_index
from ckptkit.io.source import Source, open_source

if TYPE_CHECKING:
    import numpy as np

FORMAT_NAME = "sharded"
_INDEX_SIZE_KEYS = ("total_size", "total_parameters")
# transformers loads these names first.
_PREFERRED_STEMS = ("model", "pytorch_model")


def is_index(head: bytes, path: Path) -> bool:
    """A JSON object file named like an index, or one whose start names a ``weight_map``."""
    if not path.name.endswith(".json") or not head.lstrip().startswith(b"{"):
        return False
    return path.name.endswith((registry.INDEX_SUFFIX, KERAS_INDEX_SUFFIX)) or b'"weight_map"' in head


def sniff(head: bytes, path: Path) -> bool:
    """An index file, or a folder that is not itself a checkpoint of another format (a DCP folder)."""
    if path.is_dir():
        return not any(_claims(fmt, path) for fmt in registry.formats() if fmt.name != FORMAT_NAME and fmt.can_read)
    return is_index(head, path)


def _claims(fmt: Format, folder: Path) -> bool:
    try:
        return fmt.sniff(b"", folder)
    except READ_ERRORS:  # a sniffer that chokes on a folder has not recognised it
        return False


class ShardedCheckpoint(Checkpoint):
    """The checkpoint an index describes; each shard is a checkpoint of its own, opened at once
    (headers only) and closed with this one."""

    format_name = FORMAT_NAME

    def __init__(self, index_path: Path) -> None:
        super().__init__(index_path)
        index = read_index(index_path)
        index.check_shards()
        self._assemble(index, lambda name: _open_shard(index_path.parent / name))

    def _assemble(self, index: ShardIndex, open_shard: Callable[[str], Checkpoint]) -> None:
        """Open every shard (headers only) and check them against the index: local or remote alike."""
        self.keras = index.keras
        self.shard_files = sorted(index.shard_names)
        self.shards: dict[str, Checkpoint] = {}
        try:
            for name in self.shard_files:
                self.shards[name] = open_shard(name)
            opened = list(self.shards.values())
            for name in self.shard_files:  # a shard that needs what its siblings state reopens itself
                self.shards[name] = self.shards[name].among_shards(opened)
            self._collect(index)
            self._read_metadata(index)
        except BaseException:
            self.close()
            raise
        self.concurrent_reads = all(s.concurrent_reads for s in self.shards.values())
        formats = sorted({s.format_name for s in self.shards.values()})
        self.shard_format = formats[0] if len(formats) == 1 else "mixed"

    def _collect(self, index: ShardIndex) -> None:
        # Tied names (torch.save stores them once, as aliases) and tensors ckptkit cannot read are
        # held by their shard like any tensor.
        index.check_placement(
            {f: [*(ti.name for ti in s.tensor_infos()), *s.aliases, *s.unsupported] for f, s in self.shards.items()}
        )
        index.check_aliases({f: s.names() for f, s in self.shards.items()})
        self._infos: list[TensorInfo] = []
        self._owner: dict[str, str] = {}
        for file_name, shard in self.shards.items():
            for ti in shard.tensor_infos():
                self._owner[ti.name] = file_name
                self._infos.append(TensorInfo(ti.name, ti.dtype, ti.shape, f"{file_name}: {ti.location}".rstrip(": ")))
            self.unsupported.update(shard.unsupported)

    def _read_metadata(self, index: ShardIndex) -> None:
        index_meta = index.metadata
        shards = list(self.shards.values())
        common = dict(shards[0].metadata) if shards else {}
        for s in shards[1:]:
            common = {k: v for k, v in common.items() if s.metadata.get(k) == v}
        for key, value in index_meta.items():
            if key in (ALIASES_KEY, EXTRAS_KEY, *_INDEX_SIZE_KEYS):
                continue
            common[key] = value if isinstance(value, str) else json.dumps(value)
        self.metadata = common
        for s in shards:
            self.aliases.update(s.aliases)
            self.extras.update(s.extras)
        self.aliases.update(index.aliases)  # parsed and checked against the shards by the index
        extras = index_meta.get(EXTRAS_KEY) or {}
        if isinstance(extras, dict):
            self.extras.update(extras)

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def shard_of(self, name: str) -> Checkpoint:
        """The open shard that holds tensor ``name``."""
        return self.shards[self._owner[name]]

    def read_tensor(self, name: str) -> np.ndarray:
        return self.shard_of(name).read_tensor(name)

    def raw_extent(self, name: str) -> RawExtent | None:
        return self.shard_of(name).raw_extent(name)

    def close(self) -> None:
        for s in self.shards.values():
            s.close()


class RemoteShardedCheckpoint(ShardedCheckpoint):
    """A shard index at a URL: its shards are the files of the names it lists beside it (sibling
    URLs), each opened by range requests with its own format's reader. The same index checks as
    for a local index: names that leave the folder, missing shards, misplaced tensors."""

    def __init__(self, source: Source) -> None:
        Checkpoint.__init__(self, None)
        self.source = source
        self.url = source.name
        index = read_remote_index(source)
        for name in index.shard_names:
            if not is_inside_url_name(name):
                fault = index.fault(name)
                assert fault is not None
                raise CorruptCheckpointError(fault.message, source.name)
        try:
            self._assemble(index, lambda name: _open_remote_shard(index.shard_location(name), name, source.name))
        except CkptkitError as err:
            if err.path is None:
                err.path = source.name
            raise

    @property
    def sources(self) -> list[Source]:
        """The index's file and each shard's, in shard order: the files a manifest lists."""
        shard_sources = [getattr(self.shards[name], "source", None) for name in self.shard_files]
        return [self.source, *(s for s in shard_sources if isinstance(s, Source))]


def _open_remote_shard(url: str, name: str, index_url: str) -> Checkpoint:
    try:
        source = open_source(url)
    except NoSuchFileError:
        raise CorruptCheckpointError(
            f"shard {name!r} listed in the index is missing beside it; upload it or fix the index", index_url
        ) from None
    fmt = registry.detect_remote(source, registry.check_remote_input(source))
    if fmt.name == FORMAT_NAME:
        raise CorruptCheckpointError(f"the index lists {name}, which is a shard index itself, as a shard")
    return registry.open_remote_as(fmt, source)


def open_remote_sharded(source: Source, options: Mapping[str, Any]) -> Checkpoint:
    """Open a shard index at a URL, its shards beside it, for lazy reading by range requests."""
    return RemoteShardedCheckpoint(source)


def _open_shard(path: Path) -> Checkpoint:
    fmt = registry.detect(path)
    if fmt.name == FORMAT_NAME:  # an index listing an index (itself, even) would never end
        raise CorruptCheckpointError(f"the index lists {path.name}, which is a shard index itself, as a shard")
    return registry.open_as(fmt, path)


def resolve_folder(folder: Path) -> tuple[Path, Format]:
    """The file in ``folder`` that ckptkit reads for it, a shard index or a checkpoint file, and its format.

    Among several, the one ``transformers`` loads wins: Hugging Face names (``model.*``,
    ``pytorch_model.*``) first, then the format detected first (safetensors before PyTorch), then
    a single file before an index; a tie is an error that lists the candidates.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    fmts = registry.formats()
    order = {f.name: i for i, f in enumerate(fmts)}
    ranks: dict[Path, tuple[int, int, int]] = {}
    found: dict[Path, Format] = {}
    for p in files:
        if is_index(registry.read_head(p), p):
            base = p.name.removesuffix(registry.INDEX_SUFFIX)
            by_ext = [i for i, f in enumerate(fmts) if f.extensions and base.endswith(f.extensions)]
            ranks[p] = (_stem_rank(base), min(by_ext, default=len(fmts)), 1)
            found[p] = FORMAT
            continue
        try:
            fmt = registry.detect(p)
        except CkptkitError:
            continue
        ranks[p] = (_stem_rank(p.name), order[fmt.name], 0)
        found[p] = fmt
    if not ranks:
        shown = ", ".join(p.name for p in files[:8]) or "nothing"
        raise CorruptCheckpointError(
            f"no checkpoint ckptkit can read in this folder (it holds {shown}); name a checkpoint file"
        )
    ranked = sorted(ranks, key=lambda p: ranks[p])
    if len(ranked) > 1 and ranks[ranked[0]] == ranks[ranked[1]]:
        shown = ", ".join(p.name for p in ranked[:8])
        raise CorruptCheckpointError(f"this folder holds several checkpoints ({shown}); name the one to read")
    return ranked[0], found[ranked[0]]


def _stem_rank(file_name: str) -> int:
    stem = file_name.split(".", 1)[0]
    return 0 if stem in _PREFERRED_STEMS else 1


def open_sharded(path: Path, options: Mapping[str, Any]) -> Checkpoint:
    if path.is_dir():
        target, fmt = resolve_folder(path)
        if fmt is not FORMAT:
            return registry.open_as(fmt, target, options)
        path = target
    try:
        return ShardedCheckpoint(path)
    except CkptkitError as err:
        if err.path is None:  # an error in the index itself: name the index, not the folder
            err.path = str(path)
        raise


FORMAT = Format(
    name=FORMAT_NAME,
    description="shards with a JSON index (Hugging Face, Keras 3), or a folder holding a checkpoint",
    extensions=(registry.INDEX_SUFFIX, KERAS_INDEX_SUFFIX),
    sniff=sniff,
    open=open_sharded,
    open_remote=open_remote_sharded,
    dtypes=frozenset(dtype_names()),  # whatever its shards hold, in whichever formats ckptkit reads them
)
