"""Hugging Face shard indexes: ``model.safetensors.index.json``, ``pytorch_model.bin.index.json``.

An index is ``{"metadata": {"total_size": N}, "weight_map": {tensor name: shard file}}``, the shard
files lying beside it (a relative path may name a subfolder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptkit.errors import CorruptCheckpointError, UsageError
from ckptkit.jsonfile import loads_noting_repeats
from ckptkit.paths import is_inside_name

INDEX_SUFFIX = ".index.json"


@dataclass(frozen=True)
class ShardIndex:
    """A parsed index; shard names are kept as written, resolve them with :meth:`shard_path`."""

    path: Path
    weight_map: dict[str, str]
    metadata: dict[str, Any]
    repeated: tuple[str, ...] = ()  # keys written twice in one JSON object (JSON keeps the last)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def shard_names(self) -> list[str]:
        """Every shard the index names, in order of first mention."""
        return list(dict.fromkeys(self.weight_map.values()))

    def shard_path(self, name: str) -> Path:
        return self.folder / name

    def escapes(self, name: str) -> bool:
        """Whether a shard name, as written, leaves the index's folder (a symlink to elsewhere is fine)."""
        return not is_inside_name(name)


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


def read_index(path: Path) -> ShardIndex:
    """Parse an index, refusing one whose structure is wrong (the file and the fault named)."""
    try:
        data, repeated = loads_noting_repeats(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"the shard index is not valid JSON: {err}", path) from None
    if not isinstance(data, dict):
        raise CorruptCheckpointError("the shard index is not a JSON object", path)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptCheckpointError('the shard index has no "weight_map" object naming tensors and shards', path)
    bad = [k for k, v in weight_map.items() if not isinstance(v, str) or not v]
    if bad:
        raise CorruptCheckpointError(f"weight_map entry {bad[0]!r} does not name a shard file", path)
    metadata = data.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise CorruptCheckpointError('the shard index "metadata" is not a JSON object', path)
    return ShardIndex(path, weight_map, metadata, tuple(repeated))
