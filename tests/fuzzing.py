"""The fuzzing harness: mutate valid checkpoints, read the result, accept only two outcomes.

An input passes when ckptkit reads it completely (open, list, describe, read every tensor, and
convert it) or refuses it with a :class:`ckptkit.CkptkitError`. Anything else is a failure: another
exception, a ckptkit error caused by a ``MemoryError`` (a size taken on trust), an input that runs
past its deadline (a hang), or a conversion that leaves files behind. Reading runs under an
address-space cap, so an allocation of what a forged header claims fails instead of succeeding
lazily.

Mutations are drawn with hypothesis: byte flips, cuts, insertions, deletions and little-endian
integers written over the bytes, plus edits that know each format's structure (safetensors header
fields, pickle integers, strings and globals re-zipped with valid CRCs, ONNX tensor fields).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import pickletools
import resource
import shutil
import signal
import struct
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

import ckptkit
from ckptkit.api import describe
from ckptkit.core.errors import CkptkitError
from ckptkit.core.model import Checkpoint
from ckptkit.io.atomic import STAGING_PREFIX

DEADLINE_SECONDS = float(os.environ.get("CKPTKIT_FUZZ_DEADLINE", "10"))
MEMORY_HEADROOM = 1 << 30  # address space a single input may add while it is read

INTERESTING_INTS = [0, 1, -1, 2, 7, 8, 255, 256, 4096, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40,
                    2**53, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**12, -(2**31), -(2**63)]  # fmt: skip


class InputTimeout(BaseException):  # a BaseException, so no reader can swallow it
    """An input ran past its deadline: a hang."""


class HarnessFailure(AssertionError):
    """An outcome the harness does not accept, with the input kept for the report."""


@dataclass
class Tally:
    """What happened to the inputs of one fuzz target."""

    inputs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    generic: Counter[str] = field(default_factory=Counter)  # ckptkit errors wrapping another error, by its type
    examples: dict[str, str] = field(default_factory=dict)  # one message per wrapped type

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "outcomes": dict(self.outcomes), "wrapped": dict(self.generic),
                "wrapped_examples": self.examples}  # fmt: skip


TALLIES: dict[str, Tally] = {}


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise InputTimeout(f"input still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _address_space() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def memory_cap(headroom: int = MEMORY_HEADROOM) -> Iterator[None]:
    """Cap this process's address space at its current size plus ``headroom`` (Linux)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = _address_space()
    if not used:
        yield
        return
    cap = used + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def exercise(
    path: Path, out_dir: Path, open_fn: Callable[[Path], Checkpoint] = ckptkit.load, convert: bool = True
) -> tuple[str, CkptkitError | None]:
    """Read ``path`` every way a user would and convert it: the outcome and ckptkit's error, if any.

    The outcome is ``"converted"`` when everything worked, ``"read"`` when reading worked and the
    conversion was refused, ``"refused"`` when reading was. Unaccepted outcomes raise.
    """
    outcome = "opened"
    try:
        with memory_cap(), deadline(DEADLINE_SECONDS):
            with open_fn(path) as ckpt:
                describe(ckpt)
                for info in ckpt.tensor_infos():
                    arr = ckpt.read_tensor(info.name)
                    assert arr.shape == info.shape, (info.name, arr.shape, info.shape)
                    np.ascontiguousarray(arr).view(np.uint8).sum()  # touch every byte
                    ckpt.raw_extent(info.name)
            outcome = "read"
            if convert:
                ckptkit.convert(path, out_dir / "out.safetensors", force=True)
                outcome = "converted"
    except CkptkitError as err:
        if isinstance(err.__cause__, MemoryError):
            raise HarnessFailure(f"a size was taken on trust: {err}") from err
        leftovers = [p.name for p in out_dir.iterdir()]
        if leftovers:
            raise HarnessFailure(f"a refused conversion left {leftovers} behind") from err
        return ("refused" if outcome == "opened" else outcome), err
    leftovers = [p.name for p in out_dir.iterdir() if p.name.startswith(STAGING_PREFIX)]
    if leftovers:
        raise HarnessFailure(f"staging folders left behind: {leftovers}")
    return outcome, None


def run_input(target: str, data: bytes, work: Path, side_files: dict[str, bytes] | None = None) -> str:
    """Write ``data`` as ``work``'s input (plus side files), exercise it, count the outcome."""
    tally = TALLIES.setdefault(target, Tally())
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    path = work / f"input{SUFFIXES[target]}"
    path.write_bytes(data)
    for name, content in (side_files or {}).items():
        (work / name).write_bytes(content)
    out = work / "out"
    out.mkdir()
    outcome, err = exercise(path, out)
    tally.inputs += 1
    tally.outcomes[outcome] += 1
    if err is not None and err.__cause__ is not None:
        kind = type(err.__cause__).__name__
        tally.generic[kind] += 1
        tally.examples.setdefault(kind, str(err))
    return outcome


SUFFIXES = {"safetensors": ".safetensors", "torch_zip": ".pt", "torch_legacy": ".pt", "onnx": ".onnx",
            "keras_h5": ".weights.h5", "keras_zip": ".keras", "tensorflow": ".index", "gguf": ".gguf"}  # fmt: skip


# --- Mutations that know nothing of the format ---------------------------------------------------


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one to six random edits."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not buf:
            buf += draw(st.binary(min_size=1, max_size=16))
            continue
        pos = draw(st.integers(0, len(buf) - 1))
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "integer", "duplicate"]))
        if kind == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            buf[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del buf[pos : pos + draw(st.integers(1, 64))]
        elif kind == "integer":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(INTERESTING_INTS)) % (1 << (8 * width))
            buf[pos : pos + width] = value.to_bytes(width, "little")
        else:
            end = min(len(buf), pos + draw(st.integers(1, 256)))
            buf[end:end] = buf[pos:end]
    return bytes(buf)


# --- safetensors: header fields ------------------------------------------------------------------


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.sampled_from(INTERESTING_INTS), st.none(), st.booleans(), st.text(max_size=8),
                        st.floats(allow_nan=False), st.sampled_from(["F32", "BF16", "I64", "BOOL", "F8_E4M3", "C64",
                                                                     "F4", "??"]))  # fmt: skip
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6),
                                                                                           inner, max_size=3),
                        max_leaves=8)  # fmt: skip


@st.composite
def safetensors_header_edits(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with fields of its JSON header replaced, the header length kept consistent."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    names = list(header)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names)) if names else "x"
        entry = header.get(name)
        kind = draw(st.sampled_from(["field", "dim", "offset", "entry", "delete", "metadata"]))
        if kind in ("field", "dim", "offset") and isinstance(entry, dict) and name != "__metadata__":
            if kind == "field":
                entry[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(_json_values())
            elif kind == "dim" and isinstance(entry.get("shape"), list) and entry["shape"]:
                entry["shape"][draw(st.integers(0, len(entry["shape"]) - 1))] = draw(st.sampled_from(INTERESTING_INTS))
            elif kind == "offset" and isinstance(entry.get("data_offsets"), list) and entry["data_offsets"]:
                entry["data_offsets"][draw(st.integers(0, len(entry["data_offsets"]) - 1))] = draw(
                    st.sampled_from(INTERESTING_INTS)
                )
        elif kind == "entry":
            header[name] = draw(_json_values())
        elif kind == "delete":
            header.pop(name, None)
        else:
            meta = header.setdefault("__metadata__", {})
            if isinstance(meta, dict):
                key = draw(st.sampled_from(["ckptkit:aliases", "ckptkit:extras", "format", "x"]))
                value = draw(_json_values())
                meta[key] = value if draw(st.booleans()) else json.dumps(value)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


# --- PyTorch: pickle opcodes, re-zipped with valid CRCs ------------------------------------------

_GLOBALS = [("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor_v3"), ("torch", "FloatStorage"),
            ("torch", "HalfStorage"), ("torch", "BoolStorage"), ("torch.storage", "UntypedStorage"),
            ("torch", "bfloat16"), ("torch", "float8_e4m3fn"), ("collections", "OrderedDict"),
            ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_qtensor"), ("builtins", "set"),
            ("builtins", "bytearray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
            ("copyreg", "_reconstructor"), ("__main__", "Anything"), ("os", "system"), ("builtins", "getattr"),
            ("torch", "Size"), ("torch._tensor", "_rebuild_from_type_v2"), ("_codecs", "encode")]  # fmt: skip


def _encode_int(value: int) -> bytes:
    if 0 <= value < 256:
        return pickle.BININT1 + bytes([value])
    if -(2**31) <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    encoded = pickle.encode_long(value)
    return pickle.LONG1 + bytes([len(encoded)]) + encoded


@st.composite
def pickle_edits(draw: st.DrawFn, pkl: bytes) -> bytes:
    """``pkl`` with integers, strings or globals replaced, or a byte-level edit."""
    try:
        ops = list(pickletools.genops(io.BytesIO(pkl)))
    except Exception:  # an already-broken pickle gets byte edits only
        ops = []
    ints = [pos for op, _arg, pos in ops if op.name in ("BININT", "BININT1", "BININT2", "LONG1")]
    texts = [pos for op, _arg, pos in ops if op.name in ("BINUNICODE", "SHORT_BINUNICODE")]
    globs = [pos for op, _arg, pos in ops if op.name == "GLOBAL"]
    kind = draw(st.sampled_from(["int", "int", "text", "global", "bytes"]))
    sites = {"int": ints, "text": texts, "global": globs}.get(kind)
    if not sites:
        return draw(byte_mutations(pkl))
    pos = draw(st.sampled_from(sites))
    if kind == "int":
        new = _encode_int(draw(st.sampled_from(INTERESTING_INTS)))
    elif kind == "text":
        raw = draw(st.sampled_from(["storage", "0", "1", "cpu", "", "\x00", "a.b", "x" * 300])).encode()
        new = pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw
    else:
        module, name = draw(st.sampled_from(_GLOBALS))
        new = pickle.GLOBAL + f"{module}\n{name}\n".encode()
    out = pkl[:pos] + new + pkl[_op_end(pkl, pos) :]
    return draw(byte_mutations(out)) if draw(st.integers(0, 3)) == 0 else out


def _op_end(pkl: bytes, pos: int) -> int:
    """Where the opcode at ``pos`` ends (its argument included)."""
    stream = io.BytesIO(pkl)
    stream.seek(pos)
    ops = pickletools.genops(stream)
    next(ops)
    after = next(ops, None)
    return len(pkl) if after is None or after[2] is None else after[2]


def zip_members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def rezip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, content in members:
            zf.writestr(name, content)
    return buf.getvalue()


@st.composite
def torch_zip_edits(draw: st.DrawFn, data: bytes) -> bytes:
    """A torch zip with its pickle edited, or a record shortened or dropped; CRCs stay valid."""
    members = zip_members(data)
    kind = draw(st.sampled_from(["pickle", "pickle", "pickle", "record"]))
    index = next(i for i, (name, _c) in enumerate(members) if name.endswith("/data.pkl"))
    if kind == "pickle":
        members[index] = (members[index][0], draw(pickle_edits(members[index][1])))
    else:
        i = draw(st.integers(0, len(members) - 1))
        name, content = members[i]
        if draw(st.booleans()):
            del members[i]
        else:
            members[i] = (name, content[: draw(st.integers(0, max(0, len(content) - 1)))])
    return rezip(members)


def legacy_pickle_spans(data: bytes) -> list[tuple[int, int]]:
    spans, stream = [], io.BytesIO(data)
    for _ in range(5):
        start = stream.tell()
        for op, _arg, pos in pickletools.genops(stream):
            if op.name == "STOP":
                spans.append((start, pos + 1))
    return spans


@st.composite
def torch_legacy_edits(draw: st.DrawFn, data: bytes) -> bytes:
    """A legacy torch file with one of its five pickles edited, storages left as they were."""
    spans = legacy_pickle_spans(data)
    start, end = spans[draw(st.sampled_from([2, 3, 3, 3, 4]))]
    return data[:start] + draw(pickle_edits(data[start:end])) + data[end:]


# --- ONNX: tensor fields, through the onnx package ------------------------------------------------


@st.composite
def onnx_edits(draw: st.DrawFn, data: bytes) -> bytes:
    """An ONNX model with an initializer's dims, type, data or external-data fields changed."""
    import onnx

    model = onnx.load_from_string(data)
    inits = list(model.graph.initializer)
    if not inits:
        return draw(byte_mutations(data))
    t = draw(st.sampled_from(inits))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["dims", "type", "raw", "external", "location"]))
        if kind == "dims":
            values = draw(st.lists(st.sampled_from([v for v in INTERESTING_INTS if -(2**63) <= v < 2**63]), max_size=5))
            del t.dims[:]
            t.dims.extend(values)
        elif kind == "type":
            t.data_type = draw(st.integers(0, 30))
        elif kind == "raw":
            raw = t.raw_data
            t.raw_data = raw[: draw(st.integers(0, len(raw)))] + draw(st.binary(max_size=8))
        elif kind == "external":
            entry = t.external_data.add()
            entry.key = draw(st.sampled_from(["location", "offset", "length", "checksum"]))
            entry.value = draw(st.sampled_from(["0", "-1", "18446744073709551616", "abc", "", "../x.data",
                                                "/etc/passwd", "model.onnx.data", "input.onnx.data"]))  # fmt: skip
        else:
            t.data_location = draw(st.sampled_from([0, 1]))
    return model.SerializeToString()


# --- Keras: HDF5 objects and attributes through h5py, and the .keras zip's members -----------------


def _h5_edit(h5: Any, draw: st.DrawFn) -> None:
    import h5py

    datasets: list[str] = []
    groups: list[str] = []
    h5.visititems(lambda name, obj: (datasets if isinstance(obj, h5py.Dataset) else groups).append(name))
    kind = draw(st.sampled_from(["dtype_attr", "dataset", "hard_link", "other_link", "delete", "attr"]))
    group = h5[draw(st.sampled_from(groups))] if groups else h5
    if kind == "dtype_attr" and datasets:
        h5[draw(st.sampled_from(datasets))].attrs["dtype"] = draw(
            st.sampled_from(["bfloat16", "float8_e4m3fn", "float64", "nope", "", "int4"])
        )
    elif kind == "dataset":
        name = draw(st.sampled_from(["0", "1", "7", "x", "vars"]))
        if name in group:
            del group[name]
        shape = tuple(draw(st.lists(st.sampled_from([0, 1, 3, 2**20, 2**31]), min_size=0, max_size=3)))
        dtype = draw(st.sampled_from(["<f4", "<f2", ">f8", "<i8", "u1", "|b1", "S4", "<c8"]))
        big = math.prod(shape) > 2**16
        chunks = True if big or draw(st.booleans()) else None
        if not shape:
            chunks = None
        compression = "gzip" if chunks and draw(st.booleans()) else None
        ds = group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, compression=compression)
        if not big and math.prod(shape):
            ds[...] = np.ones(shape, dtype=dtype) if dtype != "S4" else b"ab"
    elif kind == "hard_link":
        target = h5[draw(st.sampled_from(groups + datasets))] if groups or datasets else h5
        name = draw(st.sampled_from(["loop", "2", "vars"]))
        if name in group:
            del group[name]
        group[name] = target
    elif kind == "other_link":
        name = draw(st.sampled_from(["2", "loop"]))
        if name not in group:
            group[name] = draw(st.sampled_from([h5py.SoftLink("/nowhere"), h5py.SoftLink("/"),
                                                h5py.ExternalLink("other.h5", "/")]))  # fmt: skip
    elif kind == "delete" and (groups or datasets):
        victim = draw(st.sampled_from(groups + datasets))
        if victim in h5:
            del h5[victim]
    else:
        target = h5[draw(st.sampled_from(datasets))] if datasets and draw(st.booleans()) else group
        key = draw(st.sampled_from(["ckptkit_metadata", "layer_names", "weight_names", "name", "keras_version"]))
        target.attrs[key] = draw(st.sampled_from(["{}", "[1]", "not json", '{"keras:classes": "[]"}', "dense",
                                                  "x" * 1000]))  # fmt: skip


@st.composite
def keras_h5_edits(draw: st.DrawFn, data: bytes) -> bytes:
    """A Keras HDF5 file with datasets, links or attributes added, changed or removed by h5py."""
    import h5py

    buf = io.BytesIO(data)
    with h5py.File(buf, "r+") as h5:
        for _ in range(draw(st.integers(1, 3))):
            _h5_edit(h5, draw)
    out = buf.getvalue()
    return draw(byte_mutations(out)) if draw(st.integers(0, 4)) == 0 else out


@st.composite
def keras_zip_edits(draw: st.DrawFn, data: bytes) -> bytes:
    """A .keras archive with a member edited (JSON, or the weights through h5py), dropped or deflated."""
    members = zip_members(data)
    i = draw(st.integers(0, len(members) - 1))
    name, content = members[i]
    kind = draw(st.sampled_from(["edit", "edit", "drop", "deflate"]))
    if kind == "drop":
        del members[i]
        return rezip(members)
    if kind == "deflate":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for n, c in members:
                zf.writestr(n, c, compress_type=zipfile.ZIP_DEFLATED if n == name else zipfile.ZIP_STORED)
        return buf.getvalue()
    if name.endswith(".h5"):
        content = draw(keras_h5_edits(content))
    elif draw(st.booleans()):
        content = json.dumps(draw(_json_values())).encode()
    else:
        content = draw(byte_mutations(content))
    members[i] = (name, content)
    return rezip(members)


# --- TensorFlow checkpoint indexes: tables of protobuf entries -------------------------------------


def _table_entries(data: bytes) -> list[tuple[bytes, bytes]]:
    from ckptkit.formats.tensorflow.table import Table

    return list(Table(data).items())


def _build_table(entries: list[tuple[bytes, bytes]], block_size: int) -> bytes:
    from ckptkit.formats.tensorflow.table import TableBuilder

    buf = io.BytesIO()
    builder = TableBuilder(buf, block_size=block_size)
    for key, value in sorted(dict(entries).items()):
        builder.add(key, value)
    builder.finish()
    return buf.getvalue()


_TF_INTS = st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(-4, 64))


@st.composite
def _entry_edit(draw: st.DrawFn, value: bytes) -> bytes:
    """A BundleEntryProto with a field set to an edge value (sizes, offsets, shapes, slices, dtype)."""
    from dataclasses import replace

    from ckptkit.formats.tensorflow.protos import Slice, parse_entry

    try:
        entry = parse_entry(value)
    except CkptkitError:
        return value
    field_name = draw(st.sampled_from(["dtype", "shape", "shard_id", "offset", "size", "crc32c", "slices"]))
    if field_name == "shape":
        new: Any = tuple(draw(st.lists(_TF_INTS, max_size=4)))
    elif field_name == "slices":
        extents = st.lists(st.tuples(_TF_INTS, _TF_INTS), max_size=3).map(tuple).map(Slice)
        new = tuple(draw(st.lists(extents, max_size=3)))
    elif field_name == "crc32c":
        new = draw(st.integers(0, 2**32 - 1))
    else:
        new = draw(_TF_INTS)
    entry = replace(entry, **{field_name: new})
    try:
        return entry.encode()
    except (ValueError, OverflowError, struct.error):
        return value


@st.composite
def tensorflow_edits(draw: st.DrawFn, data: bytes) -> bytes:
    """A TensorFlow index with an entry's fields changed (re-tabled with valid checksums), a block's
    restart array or entry lengths forged (its checksum rewritten), or the footer's handles forged."""
    from ckptkit.formats.tensorflow.table import BLOCK_TRAILER, FOOTER_SIZE, Table, _varint

    kind = draw(st.sampled_from(["entry", "entry", "key", "block", "footer"]))
    try:
        table = Table(data)
    except CkptkitError:
        return draw(byte_mutations(data))
    if kind in ("entry", "key"):
        entries = _table_entries(data)
        i = draw(st.integers(0, len(entries) - 1))
        key, value = entries[i]
        if kind == "entry":
            entries[i] = (key, draw(_entry_edit(value)))
        else:
            entries[i] = (draw(st.sampled_from([b"", b"\x00", key + b"\x00\x01\x01\x02\x80\x84", key[:-1]])), value)
        return _build_table(entries, draw(st.sampled_from([64, 256, 262144])))
    buf = bytearray(data)
    if kind == "footer":
        offset, size = draw(_TF_INTS.map(abs)), draw(_TF_INTS.map(abs))
        handles = (_varint(offset) + _varint(size) + _varint(offset) + _varint(size))[:40]
        start = len(buf) - FOOTER_SIZE + draw(st.sampled_from([0, 20]))
        buf[start : start + len(handles) // 2] = handles[: len(handles) // 2]
        return bytes(buf)
    handles = [h for _k, h in table.blocks] + [table.footer.index, table.footer.metaindex]
    handle = draw(st.sampled_from(handles))
    if handle.size < 4:
        return bytes(buf)
    end = handle.offset + handle.size
    edit = draw(st.sampled_from(["restart_count", "restart", "varint_bomb", "byte"]))
    if edit == "restart_count":
        buf[end - 4 : end] = struct.pack("<I", draw(_TF_INTS.map(lambda v: v % 2**32)))
    elif edit == "restart":
        (count,) = struct.unpack_from("<I", buf, end - 4)
        slot = end - 4 - 4 * draw(st.integers(1, max(1, min(count, (handle.size - 4) // 4))))
        buf[slot : slot + 4] = struct.pack("<I", draw(_TF_INTS.map(lambda v: v % 2**32)))
    else:
        pos = handle.offset + draw(st.integers(0, handle.size - 1))
        run = draw(st.integers(1, 12)) if edit == "varint_bomb" else 1
        buf[pos : min(pos + run, end)] = (
            b"\xff" if edit == "varint_bomb" else bytes([draw(st.integers(0, 255))])
        ) * min(run, end - pos)
    from tests.tf_bundles import rewrite_block_crc

    if end + BLOCK_TRAILER <= len(buf):
        rewrite_block_crc(buf, handle.offset, handle.size)
    return bytes(buf)


# --- GGUF: the integer fields of the header (counts, lengths, value and ggml types, dims, offsets) --

_GGUF_FIELDS: dict[bytes, list[tuple[int, int]]] = {}


def gguf_int_fields(data: bytes) -> list[tuple[int, int]]:
    """``(position, width)`` of every integer field gguf-py's reader finds in the header of ``data``."""
    key = hashlib.sha256(data).digest()
    if key not in _GGUF_FIELDS:
        import tempfile

        import gguf

        with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
            f.write(data)
            f.flush()
            reader = gguf.GGUFReader(f.name)
            found: set[tuple[int, int]] = set()
            for record in [*reader.fields.values(), *(t.field for t in reader.tensors)]:
                pos = record.offset
                for part in record.parts:
                    if part.size == 1 and part.dtype.itemsize in (4, 8) and part.dtype.kind in "iu":
                        found.add((pos, part.dtype.itemsize))
                    pos += part.nbytes
        _GGUF_FIELDS[key] = sorted(found)
    return _GGUF_FIELDS[key]


@st.composite
def gguf_header_edits(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one to three integer fields of its GGUF header overwritten with an interesting value."""
    buf = bytearray(data)
    fields = gguf_int_fields(data)
    for _ in range(draw(st.integers(1, 3))):
        pos, width = draw(st.sampled_from(fields))
        value = draw(st.sampled_from([*INTERESTING_INTS, 3, 9, 12, 13, 30, 41, 99]))
        buf[pos : pos + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    return bytes(buf)


Mutator = Callable[[bytes], st.SearchStrategy[bytes]]
