"""The safetensors header, parsed and checked in one place for reading and for ``verify``.

A file is an 8-byte little-endian length, that many bytes of UTF-8 JSON, then the tensor data.
The JSON object maps each tensor name to its ``dtype``, ``shape`` and ``data_offsets`` (begin and
end within the data), plus an optional ``"__metadata__"`` object of strings. Spec:
https://github.com/huggingface/safetensors#format; what the library itself demands is in
``safetensors/src/tensor.rs`` (``validate``): a header length within the file, a JSON object
starting with ``{``, string metadata, and data that tiles the data section exactly.

:func:`parse` reports each problem once to a :class:`~ckptkit.core.findings.ProblemSink`, with
the finding id ``verify`` shows: reading stops at the first, ``verify`` collects them all. Readers
accept what other tools write (``"__metadata__": null``, headers not padded to 8 bytes, data in
another order than the keys); what they accept but the library would not (white space before the
``{``, an empty ``"__metadata__"`` that is not an object, overlapping tensors, bytes that belong to
no tensor) ``verify`` reports as tolerated problems. Duplicate keys are refused, because JSON
readers disagree on which one wins.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ckptkit.core import dtypes, limits
from ckptkit.core.errors import CorruptCheckpointError, UnsupportedError
from ckptkit.core.findings import ProblemSink
from ckptkit.core.model import TensorInfo
from ckptkit.io.jsonfile import loads_noting_repeats

METADATA_KEY = "__metadata__"

# Finding ids, documented in README's table of verify checks.
LENGTH = "safetensors.header-length"
JSON = "safetensors.header-json"
DUPLICATE = "safetensors.duplicate-key"
METADATA = "safetensors.metadata"
ENTRY = "safetensors.entry"
TRUNCATED = "safetensors.truncated"
OVERLAP = "safetensors.overlap"
HOLE = "safetensors.hole"

_SNIFF_MAX_HEADER = 1 << 40  # only a plausibility bound: parsing checks ckptkit's limits
_NOT_AN_OBJECT = "the header is not a JSON object starting with '{'"

# safetensors dtypes that pack several elements into a byte; ckptkit holds sub-byte values one per
# byte, and which bits hold which element is up to the producer, so it does not guess.
PACKED_BITS = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


def sniff(head: bytes, path: Path) -> bool:
    """Whether ``head`` starts like a safetensors file: a plausible length, then ``{``."""
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= _SNIFF_MAX_HEADER and head[8:9] == b"{"


@dataclass
class Header:
    """What a checked header says: where the data lies, the metadata, and every tensor."""

    data_start: int  # absolute offset of the data section
    data_len: int
    metadata: dict[str, str]
    tensors: list[tuple[TensorInfo, int, int]] = field(default_factory=list)  # (info, begin, end) in the data
    unsupported: dict[str, str] = field(default_factory=dict)  # name -> why ckptkit cannot read it


def parse(f: BinaryIO, size: int, sink: ProblemSink) -> Header | None:
    """The header of the safetensors file open as ``f``, ``size`` bytes long, checked.

    Problems go to ``sink``; ``None`` when one stops the parse (which only a collecting sink lets
    return). Tensors with a problem are left out of the result.
    """
    f.seek(0)
    raw = f.read(8)
    if len(raw) < 8:
        sink.error(
            LENGTH,
            f"the file ends after {size} of the 8 bytes of the header length: truncated, or not a safetensors file",
        )
        return None
    (n,) = struct.unpack("<Q", raw)
    if n > size - 8:
        sink.error(
            LENGTH,
            f"the header length says {n:,} bytes, but the file holds only {size:,} bytes: truncated, or not "
            "a safetensors file",
        )
        return None
    if n > limits.current().header_bytes:
        sink.error(LENGTH, limits.exceeded("the JSON header", n, "header_bytes").message)
        return None
    header = _json_object(f.read(n), sink)
    if header is None:
        return None
    count = len(header) - (METADATA_KEY in header)
    if count > limits.current().tensors:
        sink.error(LENGTH, limits.exceeded("the tensor count", count, "tensors", "tensors").message)
        return None
    data_len = size - 8 - n
    parsed = Header(8 + n, data_len, _metadata(header.pop(METADATA_KEY, None), sink))
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        packed = _packed(entry, data_len)
        if packed is not None:
            why, begin, end = packed
            parsed.unsupported[name] = why
            spans.append((begin, end, name))
            continue
        tensor = _entry(name, entry, sink)
        if tensor is None:
            span = _raw_offsets(entry)
            if span is not None:  # still place it, so the tiling check does not report a false hole
                spans.append((*span, name))
            continue
        _ti, begin, end = tensor
        spans.append((begin, end, name))
        if end > data_len:
            sink.error(
                TRUNCATED,
                f"tensor {name!r} ends at byte {end} of the data, but the file holds only {data_len}: truncated?",
                name,
            )
            continue
        parsed.tensors.append(tensor)
    if not sink.strict:  # readers accept any placement; only verify looks at it
        _tiling(spans, data_len, sink)
    return parsed


def _json_object(text: bytes, sink: ProblemSink) -> dict[str, Any] | None:
    try:
        header, repeated = loads_noting_repeats(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        sink.error(JSON, f"the header is not valid JSON: {err}")
        return None
    except RecursionError:
        sink.error(JSON, "the header nests JSON too deeply to be a checkpoint header")
        return None
    if not isinstance(header, dict):
        sink.error(JSON, _NOT_AN_OBJECT)
        return None
    if not text.startswith(b"{"):  # leading white space: JSON allows it, the library does not
        sink.tolerated(JSON, _NOT_AN_OBJECT)
    for key in repeated:
        sink.error(DUPLICATE, f"the header lists {key!r} twice; readers disagree on which one wins", key)
    return header


def _metadata(meta: object, sink: ProblemSink) -> dict[str, str]:
    """The string metadata; ``null`` is none (other tools write it), and so for readers is any empty value."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        message = f"__metadata__ must map strings to strings, but it is {_json_kind(meta)}"
        if meta:
            sink.error(METADATA, message)
        else:
            sink.tolerated(METADATA, message)
        return {}
    for key, value in meta.items():
        if not isinstance(value, str):
            sink.error(METADATA, f"__metadata__ must map strings to strings, but {key!r} is {_json_kind(value)}")
    return {k: v for k, v in meta.items() if isinstance(v, str)}


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _packed(entry: object, data_len: int) -> tuple[str, int, int] | None:
    """For a well-formed entry of a packed dtype: why ckptkit cannot read it, and its data span.

    ``None`` for any other entry (which :func:`_entry` then judges).
    """
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or entry["dtype"] not in PACKED_BITS:
        return None
    code, shape, offsets = entry["dtype"], entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        return None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        return None
    begin, end = offsets
    numel = 1
    for d in shape:
        numel *= d
    if not 0 <= begin <= end <= data_len or end - begin != (numel * PACKED_BITS[code] + 7) // 8:
        return None
    why = (
        f"a safetensors {code} tensor (packed {PACKED_BITS[code]}-bit floats) of shape {shape}, which ckptkit "
        "cannot read; unpack it to float16 or bfloat16 in the library that made it and save again"
    )
    return why, begin, end


def _entry(name: str, entry: object, sink: ProblemSink) -> tuple[TensorInfo, int, int] | None:
    """One header entry as (info, begin, end) within the data; ``None`` after reporting what is wrong."""
    if not isinstance(entry, dict) or {"dtype", "shape", "data_offsets"} - set(entry):
        sink.error(ENTRY, f"tensor {name!r}: header entry needs dtype, shape and data_offsets", name)
        return None
    code = entry["dtype"]
    dtype = dtypes.by_safetensors(code) if isinstance(code, str) else None
    if dtype is None:
        sink.error(ENTRY, f"tensor {name!r} has dtype {code!r}, which ckptkit does not know", name, UnsupportedError)
        return None
    shape = entry["shape"]
    offsets = entry["data_offsets"]
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        sink.error(ENTRY, f"tensor {name!r}: shape {shape!r} is not a list of sizes", name)
        return None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        sink.error(ENTRY, f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]", name)
        return None
    begin, end = offsets
    try:
        ti = TensorInfo(name, dtype, tuple(shape), f"offset {begin}")
    except CorruptCheckpointError as err:
        sink.error(ENTRY, err.message, name)
        return None
    if not 0 <= begin <= end or end - begin != ti.nbytes:
        sink.error(
            ENTRY,
            f"tensor {name!r}: data_offsets {offsets} hold {end - begin} bytes, "
            f"but {dtype.name} {list(shape)} needs {ti.nbytes}",
            name,
        )
        return None
    return ti, begin, end


def _raw_offsets(entry: object) -> tuple[int, int] | None:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets):
        begin, end = offsets
        if 0 <= begin <= end:
            return begin, end
    return None


def _tiling(spans: list[tuple[int, int, str]], data_len: int, sink: ProblemSink) -> None:
    """Overlaps and gaps between tensor data, and bytes after the last tensor."""
    reached, last = 0, ""
    for begin, end, name in sorted(spans):
        if begin < reached:
            sink.tolerated(
                OVERLAP,
                f"tensor {name!r} (bytes {begin}..{end}) overlaps tensor {last!r}, which ends at {reached}",
                name,
            )
        elif begin > reached:
            sink.tolerated(
                HOLE,
                f"{begin - reached} bytes before tensor {name!r} (at {reached}..{begin}) belong to no tensor",
                name,
            )
        if end >= reached:
            reached, last = end, name
    if reached < data_len:
        sink.tolerated(HOLE, f"{data_len - reached} bytes after the last tensor belong to no tensor")
