"""The protobuf messages of a TensorFlow checkpoint, read and written with ckptkit's wire reader.

From ``tensorflow/core/protobuf/tensor_bundle.proto``, ``framework/tensor_shape.proto``,
``framework/tensor_slice.proto``, ``framework/versions.proto`` and
``protobuf/trackable_object_graph.proto``. Only the fields a checkpoint uses are kept; writing
emits fields in number order with proto3 defaults left out, as TensorFlow's C++ serializer does,
so an index ckptkit writes is byte for byte the one TensorFlow would write.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ckptkit.core import limits
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.io.protowire import (
    I32,
    LEN,
    VARINT,
    Buffer,
    Field,
    bytes_field,
    expect,
    fields,
    key,
    signed,
    string_field,
    text,
    varint_field,
)

LITTLE, BIG = 0, 1
# tensor_bundle.cc: kTensorBundleVersion, kTensorBundleMinConsumer.
BUNDLE_VERSION = 1
BUNDLE_MIN_CONSUMER = 0


def _int(f: Field, what: str) -> int:
    return signed(expect(f, VARINT, what).value)


def _str(buf: Buffer, f: Field, what: str) -> str:
    return text(buf, f, what)


def _sub(f: Field, what: str) -> tuple[int, int]:
    expect(f, LEN, what)
    return f.start, f.end


@dataclass(frozen=True)
class Header:
    """BundleHeaderProto: how many data files there are and in which byte order tensors are stored."""

    num_shards: int = 1
    endianness: int = LITTLE
    producer: int = BUNDLE_VERSION
    min_consumer: int = BUNDLE_MIN_CONSUMER
    bad_consumers: tuple[int, ...] = ()

    def encode(self) -> bytes:
        version = b""
        if self.producer:
            version += varint_field(1, self.producer)
        if self.min_consumer:
            version += varint_field(2, self.min_consumer)
        for bad in self.bad_consumers:
            version += varint_field(3, bad)
        out = varint_field(1, self.num_shards) if self.num_shards else b""
        if self.endianness:
            out += varint_field(2, self.endianness)
        return out + bytes_field(3, version)


def parse_header(buf: bytes) -> Header:
    num_shards, endianness = 0, LITTLE
    producer = min_consumer = 0
    bad: list[int] = []
    for f in fields(buf, 0, len(buf)):
        if f.number == 1:
            num_shards = _int(f, "num_shards")
        elif f.number == 2:
            endianness = _int(f, "endianness")
        elif f.number == 3:
            start, end = _sub(f, "version")
            for v in fields(buf, start, end):
                if v.number == 1:
                    producer = _int(v, "version.producer")
                elif v.number == 2:
                    min_consumer = _int(v, "version.min_consumer")
                elif v.number == 3:
                    bad.append(_int(v, "version.bad_consumers"))
    return Header(num_shards, endianness, producer, min_consumer, tuple(bad))


@dataclass(frozen=True)
class Slice:
    """TensorSliceProto: per dimension, ``(start, length)``; a length of -1 takes the whole dimension."""

    extents: tuple[tuple[int, int], ...]

    def bounds(self, shape: tuple[int, ...]) -> list[tuple[int, int]]:
        """``(start, stop)`` per dimension of a tensor of ``shape``; raises if the slice does not fit it."""
        if len(self.extents) != len(shape):
            raise CorruptCheckpointError(
                f"a slice has {len(self.extents)} dimensions, the tensor {len(shape)} ({list(shape)})"
            )
        out = []
        for (start, length), dim in zip(self.extents, shape, strict=True):
            stop = dim if length == -1 else start + length
            if length == -1 and start != 0:
                raise CorruptCheckpointError(f"a slice takes a whole dimension from {start}, not 0")
            if start < 0 or length < -1 or stop > dim:
                raise CorruptCheckpointError(f"a slice's extent {start}:{stop} does not fit dimension {dim}")
            out.append((start, stop))
        return out

    def encode(self) -> bytes:
        out = b""
        for start, length in self.extents:
            ext = (varint_field(1, start) if start else b"") + (varint_field(2, length) if length != -1 else b"")
            out += bytes_field(1, ext)
        return out


def parse_slice(buf: Buffer, start: int, end: int) -> Slice:
    extents = []
    for f in fields(buf, start, end):
        if f.number != 1:
            continue
        s, e = _sub(f, "slice extent")
        begin, length = 0, -1
        for v in fields(buf, s, e):
            if v.number == 1:
                begin = _int(v, "extent start")
            elif v.number == 2:
                length = _int(v, "extent length")
        extents.append((begin, length))
        limits.check("a slice's dimension count", len(extents), "pickle_depth", "dimensions")
    return Slice(tuple(extents))


@dataclass(frozen=True)
class Entry:
    """BundleEntryProto: one tensor (or slice) of the index."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int = 0  # masked, as stored
    slices: tuple[Slice, ...] = ()
    unknown_rank: bool = False

    def encode(self) -> bytes:
        shape = b"".join(bytes_field(2, varint_field(1, d) if d else b"") for d in self.shape)
        out = varint_field(1, self.dtype) if self.dtype else b""
        out += bytes_field(2, shape)
        if self.shard_id:
            out += varint_field(3, self.shard_id)
        if self.offset:
            out += varint_field(4, self.offset)
        if self.size:
            out += varint_field(5, self.size)
        if self.crc32c:
            out += key(6, I32) + struct.pack("<I", self.crc32c)
        for s in self.slices:
            out += bytes_field(7, s.encode())
        return out


def parse_entry(buf: bytes) -> Entry:
    """A BundleEntryProto; negative or unknown sizes are left for the caller to judge."""
    dtype = shard_id = offset = size = crc = 0
    dims: list[int] = []
    max_dims: int | None = None
    unknown_rank = False
    slices: list[Slice] = []
    for f in fields(buf, 0, len(buf)):
        if f.number == 1:
            dtype = _int(f, "dtype")
        elif f.number == 2:
            start, end = _sub(f, "shape")
            for d in fields(buf, start, end):
                if d.number == 2:
                    s, e = _sub(d, "shape dimension")
                    size_of = 0
                    for v in fields(buf, s, e):
                        if v.number == 1:
                            size_of = _int(v, "dimension size")
                    dims.append(size_of)
                    if max_dims is None:  # the limit is looked up once per entry, not per dimension
                        max_dims = limits.current().pickle_depth
                    if len(dims) > max_dims:
                        raise limits.exceeded("a tensor's dimension count", len(dims), "pickle_depth", "dimensions")
                elif d.number == 3:
                    unknown_rank = bool(expect(d, VARINT, "unknown_rank").value)
        elif f.number == 3:
            shard_id = _int(f, "shard_id")
        elif f.number == 4:
            offset = _int(f, "offset")
        elif f.number == 5:
            size = _int(f, "size")
        elif f.number == 6:
            expect(f, I32, "crc32c")
            (crc,) = struct.unpack_from("<I", buf, f.start)
        elif f.number == 7:
            slices.append(parse_slice(buf, *_sub(f, "slice")))
    return Entry(dtype, tuple(dims), shard_id, offset, size, crc, tuple(slices), unknown_rank)


# TrackableObjectGraph: how a TF2 object-based checkpoint names its variables.


@dataclass(frozen=True)
class Child:
    node_id: int
    local_name: str


@dataclass(frozen=True)
class Attribute:
    name: str
    full_name: str
    checkpoint_key: str


@dataclass(frozen=True)
class SlotRef:
    original_variable_node_id: int
    slot_name: str
    slot_variable_node_id: int


@dataclass
class Node:
    children: list[Child] = field(default_factory=list)
    attributes: list[Attribute] = field(default_factory=list)
    slot_variables: list[SlotRef] = field(default_factory=list)
    other: bytes = b""  # fields ckptkit does not interpret (registered_saver, ...), kept as they were

    def encode(self) -> bytes:
        where = "a TensorFlow object graph"
        out = b"".join(
            bytes_field(1, varint_field(1, c.node_id) + string_field(2, c.local_name, where)) for c in self.children
        )
        out += b"".join(
            bytes_field(
                2,
                string_field(1, a.name, where) + string_field(2, a.full_name, where)
                + string_field(3, a.checkpoint_key, where),
            )
            for a in self.attributes
        )  # fmt: skip
        out += b"".join(
            bytes_field(
                3,
                varint_field(1, s.original_variable_node_id) + string_field(2, s.slot_name, where)
                + varint_field(3, s.slot_variable_node_id),
            )
            for s in self.slot_variables
        )  # fmt: skip
        return out + self.other


def _node(buf: bytes, start: int, end: int, number: int) -> Node:
    node = Node()
    other = bytearray()
    for f in fields(buf, start, end):
        if f.number in (1, 2, 3):
            s, e = _sub(f, f"object graph node {number}")
            values: dict[int, Field] = {v.number: v for v in fields(buf, s, e)}
            if f.number == 1:
                node.children.append(
                    Child(
                        _int(values[1], "node_id") if 1 in values else 0,
                        _str(buf, values[2], "local_name") if 2 in values else "",
                    )
                )
            elif f.number == 2:
                name, full, ckey = (_str(buf, values[i], "attribute") if i in values else "" for i in (1, 2, 3))
                node.attributes.append(Attribute(name, full, ckey))
            else:
                node.slot_variables.append(
                    SlotRef(
                        _int(values[1], "original_variable_node_id") if 1 in values else 0,
                        _str(buf, values[2], "slot_name") if 2 in values else "",
                        _int(values[3], "slot_variable_node_id") if 3 in values else 0,
                    )
                )
        else:
            other += buf[f.tag_start : f.end]
    node.other = bytes(other)
    return node


def parse_object_graph(buf: bytes) -> list[Node]:
    """The nodes of a TrackableObjectGraph; every node id it names is checked to exist."""
    nodes = [
        _node(buf, *_sub(f, "object graph node"), i) for i, f in enumerate(fields(buf, 0, len(buf))) if f.number == 1
    ]
    limits.check("the object graph's node count", len(nodes), "pickle_objects", "nodes")
    for i, node in enumerate(nodes):
        ids = [c.node_id for c in node.children]
        ids += [v for s in node.slot_variables for v in (s.original_variable_node_id, s.slot_variable_node_id)]
        bad = next((n for n in ids if not 0 <= n < len(nodes)), None)
        if bad is not None:
            raise CorruptCheckpointError(f"object graph node {i} refers to node {bad}, but there are {len(nodes)}")
    return nodes


def encode_object_graph(nodes: list[Node]) -> bytes:
    return b"".join(bytes_field(1, n.encode()) for n in nodes)
