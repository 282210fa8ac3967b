"""Structure checks of a safetensors file, reporting every fault rather than the first.

What the safetensors library itself demands (``safetensors/src/tensor.rs``: ``validate``): a
header length within the file and its limit, a UTF-8 JSON object starting with ``{``, string
metadata, and tensor data that tiles the data section exactly: no overlap, no gap, nothing after
the last tensor. Duplicate keys are refused because JSON readers disagree on which one wins.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

from ckptkit.core import limits
from ckptkit.core.errors import CorruptCheckpointError, UnsupportedError
from ckptkit.core.findings import Finding, error
from ckptkit.formats.safetensors import packed_entry, parse_entry
from ckptkit.io.jsonfile import loads_noting_repeats


def check_structure(path: Path) -> list[Finding]:
    """Every structural fault of the safetensors file at ``path``."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return [
                error(
                    "safetensors.header-length",
                    f"the file has {size} bytes, fewer than the 8 of the header length",
                    path,
                )
            ]
        (n,) = struct.unpack("<Q", raw)
        max_header_bytes = limits.current().header_bytes
        if n > max_header_bytes or 8 + n > size:
            return [
                error(
                    "safetensors.header-length",
                    f"header length {n} is past the end of the file ({size} bytes) or the {max_header_bytes}-byte "
                    "limit; the file is truncated or not safetensors",
                    path,
                )
            ]
        text = f.read(n)
    findings: list[Finding] = []
    header = _parse_header(path, text, findings)
    if header is None:
        return findings
    meta = header.pop("__metadata__", None)
    if meta is not None and not isinstance(meta, dict):
        findings.append(error("safetensors.metadata", "__metadata__ is not an object of strings", path))
    elif meta:
        for key, value in meta.items():
            if not isinstance(value, str):
                findings.append(
                    error(
                        "safetensors.metadata",
                        f"metadata {key!r} is a {type(value).__name__}; safetensors metadata values must be strings",
                        path,
                    )
                )
    data_len = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        packed = packed_entry(name, entry, data_len)
        if packed is not None:  # well-formed; the content check reports it as a tensor ckptkit cannot read
            spans.append((packed[1], packed[2], name))
            continue
        try:
            _ti, begin, end = parse_entry(name, entry, sys.maxsize)
        except (CorruptCheckpointError, UnsupportedError) as err:
            findings.append(error("safetensors.entry", err.message, path, name))
            span = _raw_offsets(entry)
            if span is not None:  # still place it, so the tiling check does not report a false hole
                spans.append((*span, name))
            continue
        if end > data_len:
            findings.append(
                error(
                    "safetensors.truncated",
                    f"tensor {name!r} ends at byte {end} of the data, but the file holds only {data_len} bytes "
                    "of data: the file is truncated",
                    path,
                    name,
                )
            )
        spans.append((begin, end, name))
    findings.extend(_tiling(path, spans, data_len))
    return findings


def _parse_header(path: Path, text: bytes, findings: list[Finding]) -> dict[str, Any] | None:
    try:
        header, repeated = loads_noting_repeats(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        findings.append(error("safetensors.header-json", f"the header is not valid UTF-8 JSON: {err}", path))
        return None
    if not isinstance(header, dict) or not text.startswith(b"{"):
        findings.append(error("safetensors.header-json", "the header is not a JSON object starting with '{'", path))
        return None
    for key in repeated:
        findings.append(
            error(
                "safetensors.duplicate-key",
                f"the header lists {key!r} twice; readers disagree on which one wins",
                path,
                key,
            )
        )
    return header


def _raw_offsets(entry: object) -> tuple[int, int] | None:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets):
        begin, end = offsets
        if 0 <= begin <= end:
            return begin, end
    return None


def _tiling(path: Path, spans: list[tuple[int, int, str]], data_len: int) -> list[Finding]:
    """Overlaps and gaps between tensor data, and bytes after the last tensor."""
    findings: list[Finding] = []
    reached, last = 0, ""
    for begin, end, name in sorted(spans):
        if begin < reached:
            findings.append(
                error(
                    "safetensors.overlap",
                    f"tensor {name!r} (bytes {begin}..{end}) overlaps tensor {last!r}, which ends at {reached}",
                    path,
                    name,
                )
            )
        elif begin > reached:
            findings.append(
                error(
                    "safetensors.hole",
                    f"{begin - reached} bytes before tensor {name!r} (at {reached}..{begin}) belong to no tensor",
                    path,
                    name,
                )
            )
        if end >= reached:
            reached, last = end, name
    if reached < data_len:
        findings.append(
            error("safetensors.hole", f"{data_len - reached} bytes after the last tensor belong to no tensor", path)
        )
    return findings
