"""Checkpoint metadata every format stores the same way: tied-weight aliases and non-tensor extras.

Formats whose metadata is a map of strings (safetensors, ONNX ``metadata_props``, HDF5 attributes)
fold the alias map and the extras in as JSON under these keys, so a conversion through any of them
keeps ties and training state; shard indexes keep them as JSON objects in ``metadata``.
"""

from __future__ import annotations

import json
from collections.abc import Container
from typing import Any

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.core.model import Checkpoint

ALIASES_KEY = "ckptkit:aliases"
EXTRAS_KEY = "ckptkit:extras"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CorruptCheckpointError(f"the header lists {key!r} twice")
        out[key] = value
    return out


def parse_json(text: str | bytes, what: str) -> Any:
    """JSON from a file's header: a key given twice, bad UTF-8 or nesting past Python's stack is a corrupt file."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"{what} is not valid JSON: {err}") from None
    except RecursionError:
        raise CorruptCheckpointError(f"{what} nests JSON too deeply to be a checkpoint header") from None


def checkpoint_metadata(ckpt: Checkpoint) -> dict[str, str]:
    """String metadata to store, with aliases and extras folded in as JSON."""
    meta = {k: str(v) for k, v in ckpt.metadata.items()}
    if ckpt.aliases:
        meta[ALIASES_KEY] = json.dumps(ckpt.aliases, sort_keys=True)
    if ckpt.extras:
        meta[EXTRAS_KEY] = json.dumps(ckpt.extras, default=str)
    return meta


def unfold_metadata(meta: dict[str, str], names: Container[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """Take the alias map and extras :func:`checkpoint_metadata` folded in out of ``meta``, checked.

    ``names`` are the tensors the file holds, which every alias must point at.
    """
    aliases: dict[str, str] = {}
    extras: dict[str, Any] = {}
    if ALIASES_KEY in meta:
        aliases = parse_json(meta.pop(ALIASES_KEY), f"metadata {ALIASES_KEY}")
        if not (isinstance(aliases, dict) and all(isinstance(t, str) for t in aliases.values())):
            raise CorruptCheckpointError(f"metadata {ALIASES_KEY} is not a map of names to names")
        missing = {t for t in aliases.values() if t not in names}
        if missing:
            raise CorruptCheckpointError(f"{ALIASES_KEY} points at tensors not in the file: {sorted(missing)[:5]}")
    if EXTRAS_KEY in meta:
        extras = parse_json(meta.pop(EXTRAS_KEY), f"metadata {EXTRAS_KEY}")
        if not isinstance(extras, dict):
            raise CorruptCheckpointError(f"metadata {EXTRAS_KEY} is not a JSON object")
    return aliases, extras
