"""Shard indexes: the JSON file that says which file holds what, parsed and checked in one place.

- Hugging Face (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``):
  ``{"metadata": {"total_size": N}, "weight_map": {tensor name: shard file}}``.
- Keras 3 sharded weights (``model.weights.json``, written by ``save_weights(...,
  max_shard_size=...)``): ``weight_map`` maps a layer's variable path to a shard file, or to a list
  of them when the layer's variables span shards.

Shard names are relative to the index's folder and judged as written
(:func:`ckptkit.io.paths.is_inside_name`); a shard may be a symbolic link, as every file of a Hugging
Face cache snapshot is. The reader, ``verify`` and ``hash`` all read indexes through
:func:`read_index`, ask :meth:`ShardIndex.fault` about each shard, and give what the shards hold
to :meth:`ShardIndex.placement_faults`: the reader and ``hash`` stop at the first fault, ``verify``
reports them all. The tied-weight aliases ckptkit keeps in the index (metadata ``ckptkit:aliases``)
are parsed here too, into :attr:`ShardIndex.aliases`, and judged against the shards by
:meth:`ShardIndex.alias_faults`, so that the reader, ``hash`` and ``verify`` list a tied name alike.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptkit.core import limits
from ckptkit.core.errors import CorruptCheckpointError, UsageError
from ckptkit.core.metadata import ALIASES_KEY
from ckptkit.io.jsonfile import loads_noting_repeats
from ckptkit.io.paths import is_inside_name, is_inside_url_name
from ckptkit.io.source import Source, list_siblings, open_source, sibling_exists

INDEX_SUFFIX = ".index.json"  # model.safetensors.index.json names the index of model.safetensors
KERAS_INDEX_SUFFIX = ".weights.json"

__all__ = ["INDEX_SUFFIX", "KERAS_INDEX_SUFFIX", "ShardFault", "ShardIndex", "read_index", "single_index"]


_MISMATCH = "the index and the shards do not match, download them again"


@dataclass(frozen=True)
class ShardFault:
    """What is wrong between an index and its shards, as one line.

    ``kind`` is ``path-escape`` or ``shard-missing`` (a shard that cannot be opened),
    ``tensor-missing`` (not in the shard the index names), ``tensor-duplicate`` (in several shards,
    or listed twice), ``tensor-unlisted`` (in a shard, not in the index), ``alias-target`` (a tied
    name whose tensor no shard holds) or ``alias-name`` (a tied name that is a tensor of its own);
    ``tensor`` names the tensor (or tied name) where there is one.
    """

    kind: str
    message: str
    tensor: str = ""


@dataclass(frozen=True)
class ShardIndex:
    """A parsed index; shard names are kept as written, resolve them with :meth:`shard_path`."""

    path: Path
    weight_map: dict[str, str]  # tensor name -> shard; empty for Keras, whose index maps layers, not tensors
    shard_names: tuple[str, ...]  # every shard named, in order of first mention
    metadata: dict[str, Any]
    repeated: tuple[str, ...] = ()  # keys written twice in one JSON object (JSON keeps the last)
    aliases: dict[str, str] = field(default_factory=dict)  # tied name -> tensor, from metadata ckptkit:aliases
    url: str | None = None  # an index read at a URL (``path`` is then its file name): shards are siblings

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def where(self) -> str | Path:
        """The index, for messages and findings: its path or URL."""
        return self.url or self.path

    def shard_location(self, name: str) -> str:
        """Where shard ``name`` is: a path, or the URL beside a remote index."""
        return f"{self.url.rsplit('/', 1)[0]}/{name}" if self.url else str(self.shard_path(name))

    def sibling_names(self) -> list[str]:
        """The names of the files beside the index (its folder, or its URL's)."""
        if self.url:
            return list_siblings(self.url)
        return [p.name for p in self.folder.iterdir()]

    def _exists(self, name: str) -> bool:
        if self.url:
            return sibling_exists(self.shard_location(name))
        return self.shard_path(name).is_file()

    @property
    def keras(self) -> bool:
        return self.path.name.endswith(KERAS_INDEX_SUFFIX)

    def shard_path(self, name: str) -> Path:
        return self.folder / name

    def fault(self, name: str) -> ShardFault | None:
        """What keeps shard ``name`` from being opened, ``None`` when it can be."""
        if not (is_inside_url_name(name) if self.url else is_inside_name(name)):
            kinds = "an absolute path, a drive, '..' or a backslash"
            if self.url:
                kinds += ", or a percent escape, '?' or '#' in a URL"
            return ShardFault(
                "path-escape",
                f"the index names the shard {name!r}, which is not a file inside the index's folder ({kinds}); "
                "it was not opened",
            )
        if not self._exists(name):
            listed = sum(1 for s in self.weight_map.values() if s == name)
            count = f" ({listed} tensors)" if listed else ""
            folder = self.url.rsplit("/", 1)[0] if self.url else self.folder
            fix = "upload it" if self.url else "download it"
            return ShardFault(
                "shard-missing",
                f"shard {name!r}{count} listed in the index is missing from {folder}; {fix} or fix the index",
            )
        return None

    def shard_bytes(self) -> int:
        """The size of the shard files that can be opened: what reading every shard reads."""
        if self.url:
            return sum(open_source(self.shard_location(s)).size for s in self.shard_names if self.fault(s) is None)
        return sum(self.shard_path(s).stat().st_size for s in self.shard_names if self.fault(s) is None)

    def check_shards(self) -> None:
        """Raise the first :meth:`fault` of any shard."""
        for name in self.shard_names:
            fault = self.fault(name)
            if fault is not None:
                raise CorruptCheckpointError(fault.message, self.where)

    def repeat_faults(self) -> list[ShardFault]:
        """Tensors the index lists twice (JSON keeps only the last of the two)."""
        return [
            ShardFault("tensor-duplicate", f"the index lists {key!r} twice; JSON keeps only the last", key)
            for key in self.repeated
        ]

    def placement_faults(self, contents: Mapping[str, Collection[str]]) -> list[ShardFault]:
        """Every tensor in the shard the index names and in no other, and none the index leaves out.

        ``contents`` maps each shard that could be opened to every name it holds (tensors, tied
        aliases, tensors ckptkit cannot read); index entries for shards not in it are not judged,
        since those shards have their own :meth:`fault`. A Keras index maps layers rather than
        tensors, so only tensors found in two shards are faults there. The faults come in the
        order: in several shards, not where the index puts them, not in the index.
        """
        held = {shard: set(names) for shard, names in contents.items()}
        where: dict[str, list[str]] = {}
        for shard, names in contents.items():
            for name in dict.fromkeys(names):
                where.setdefault(name, []).append(shard)
        faults = [
            ShardFault(
                "tensor-duplicate",
                f"tensor {name!r} is in {_count(len(shards))} shards, {_listing(shards)}; "
                "the shards are from different saves, download them again",
                name,
            )
            for name, shards in where.items()
            if len(shards) > 1
        ]
        if self.keras:
            return faults
        for name, shard in self.weight_map.items():
            if shard in held and name not in held[shard]:
                found = f"it is in {_listing(where[name])}" if name in where else "no shard holds it"
                message = f"the index puts tensor {name!r} in {shard!r}, but {found}; {_MISMATCH}"
                faults.append(ShardFault("tensor-missing", message, name))
        faults.extend(
            ShardFault(
                "tensor-unlisted",
                f"shard {shards[0]!r} holds tensor {name!r}, which the index does not list; {_MISMATCH}",
                name,
            )
            for name, shards in where.items()
            if len(shards) == 1 and name not in self.weight_map
        )
        return faults

    def check_placement(self, contents: Mapping[str, Collection[str]]) -> None:
        """Raise the first of :meth:`placement_faults`."""
        for fault in self.placement_faults(contents):
            raise CorruptCheckpointError(fault.message, self.where)

    def alias_faults(self, tensors: Mapping[str, Collection[str]]) -> list[ShardFault]:
        """Every tied name of :attr:`aliases` shares a tensor some shard holds, and is no tensor itself.

        ``tensors`` maps each shard that could be opened to the tensors it holds that ckptkit reads
        (not its own aliases). A tie to a tensor the index puts in a shard not in ``tensors`` is
        not judged, nor a tie to an unlisted tensor while any shard is missing.
        """
        held = {name for names in tensors.values() for name in names}
        complete = all(s in tensors for s in self.shard_names)
        faults: list[ShardFault] = []
        for alias, target in self.aliases.items():
            tie = f"the index ties {alias!r} to {target!r} (metadata {ALIASES_KEY})"
            if alias in held:
                message = f"{tie}, but a shard holds {alias!r} as a tensor of its own; {_MISMATCH}"
                faults.append(ShardFault("alias-name", message, alias))
                continue
            shard = self.weight_map.get(target)
            judged = shard in tensors if shard is not None else complete
            if judged and target not in held:
                message = f"{tie}, but no shard holds a tensor {target!r} that ckptkit reads; {_MISMATCH}"
                faults.append(ShardFault("alias-target", message, alias))
        return faults

    def check_aliases(self, tensors: Mapping[str, Collection[str]]) -> None:
        """Raise the first of :meth:`alias_faults`."""
        for fault in self.alias_faults(tensors):
            raise CorruptCheckpointError(fault.message, self.where)


def _count(n: int) -> str:
    return "two" if n == 2 else str(n)


def _listing(names: Sequence[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def read_index(path: Path) -> ShardIndex:
    """Parse an index, refusing one whose structure is wrong (the file and the fault named)."""
    check_index_size(path.stat().st_size, path)
    return parse_index(path.read_bytes(), path)


def check_index_size(size: int, path: object) -> None:
    """Refuse an index over the header limit before reading it."""
    if size > limits.current().header_bytes:
        raise CorruptCheckpointError(limits.exceeded("the shard index", size, "header_bytes").message, path)


def read_remote_index(source: Source) -> ShardIndex:
    """:func:`read_index` of an index at a URL: its shards are the files beside it."""
    check_index_size(source.size, source.name)
    try:
        return parse_index(source.read_at(0, source.size), Path(source.basename), source.name)
    except CorruptCheckpointError as err:
        err.path = source.name
        raise


def parse_index(raw: bytes, path: Path, url: str | None = None) -> ShardIndex:
    """:func:`read_index` of an index's bytes (read from ``path``, or from a URL whose file ``path`` names)."""
    try:
        data, repeated = loads_noting_repeats(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"the shard index is not valid JSON: {err}", path) from None
    except RecursionError:
        raise CorruptCheckpointError("the shard index nests JSON too deeply to be an index", path) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CorruptCheckpointError('not a shard index: no "weight_map" object mapping tensors to files', path)
    if not weight_map:
        raise CorruptCheckpointError("the shard index lists no tensors", path)
    keras = path.name.endswith(KERAS_INDEX_SUFFIX)
    shards: dict[str, None] = {}
    for key, value in weight_map.items():
        values = value if keras and isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise CorruptCheckpointError(f"the index maps {key!r} to {value!r:.80}, not to a shard file name", path)
        shards.update(dict.fromkeys(values))
    metadata = data.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise CorruptCheckpointError('the shard index "metadata" is not a JSON object', path)
    aliases = metadata.get(ALIASES_KEY) or {}
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise CorruptCheckpointError(f"index metadata {ALIASES_KEY} must map names to names", path)
    return ShardIndex(path, {} if keras else weight_map, tuple(shards), metadata, tuple(repeated), aliases, url)


def is_index(path: Path) -> bool:
    return path.name.endswith(INDEX_SUFFIX)


def find_indexes(path: Path) -> list[Path]:
    """The index ``path`` is, or the indexes in the folder ``path``; empty when there is none."""
    if path.is_file():
        return [path] if is_index(path) else []
    if path.is_dir():
        return sorted(p for p in path.iterdir() if is_index(p) and p.is_file())
    return []


def single_index(path: Path) -> Path | None:
    """The one index ``path`` stands for, ``None`` if none; a folder with several must be narrowed."""
    found = find_indexes(path)
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise UsageError(f"{path} holds several shard indexes ({names}); name the one to use")
    return found[0] if found else None
