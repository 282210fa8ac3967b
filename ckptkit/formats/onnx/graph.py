"""Walking an ONNX ModelProto: where every tensor lies, and what the model says about itself.

Field numbers are those of onnx.proto (https://github.com/onnx/onnx/blob/main/onnx/onnx.proto).
Tensors are found in the main graph's initializers, in Constant nodes, and in the same two places
inside subgraphs (If, Loop, Scan and any other node with a graph attribute), at any depth.
Functions are left alone: their Constants are code, not weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.io.protowire import I32, LEN, VARINT, Buffer, Field, expect, fields, read_varint, repeated, signed, text

from .elements import TYPED_FIELDS, element_name

# ModelProto
M_IR_VERSION, M_PRODUCER_NAME, M_PRODUCER_VERSION, M_GRAPH, M_OPSET_IMPORT, M_METADATA_PROPS = 1, 2, 3, 7, 8, 14
# GraphProto
G_NODE, G_NAME, G_INITIALIZER, G_INPUT, G_OUTPUT, G_SPARSE_INITIALIZER = 1, 2, 5, 11, 12, 15
# NodeProto
N_OUTPUT, N_NAME, N_OP_TYPE, N_ATTRIBUTE, N_DOMAIN = 2, 3, 4, 5, 7
# AttributeProto
A_NAME, A_F, A_I, A_T, A_G, A_FLOATS, A_INTS, A_GRAPHS = 1, 2, 3, 5, 6, 7, 8, 11
# TensorProto
T_DIMS, T_DATA_TYPE, T_SEGMENT, T_NAME, T_RAW_DATA, T_EXTERNAL_DATA, T_DATA_LOCATION = 1, 2, 3, 8, 9, 13, 14
DATA_FIELDS = frozenset((*TYPED_FIELDS, T_RAW_DATA, T_EXTERNAL_DATA, T_DATA_LOCATION))
EXTERNAL = 1  # TensorProto.DataLocation

MAX_DEPTH = 64  # subgraph nesting; deeper is a hostile file, not a model

# Fields a ModelProto may start with, for recognising one from its first bytes.
MODEL_FIELDS = {1: VARINT, 2: LEN, 3: LEN, 4: LEN, 5: VARINT, 6: LEN, 7: LEN, 8: LEN, 14: LEN, 20: LEN, 25: LEN}
_SINGULAR_MODEL_FIELDS = frozenset(range(1, 8))

CONSTANT_VALUE_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


@dataclass
class TensorRecord:
    """One TensorProto, with its payload left where it lies."""

    msg: Field
    name: str = ""
    data_type: int = 0
    dims: tuple[int, ...] = ()
    raw: Field | None = None
    typed: dict[int, list[Field]] = field(default_factory=dict)
    external: dict[str, str] = field(default_factory=dict)
    data_location: int = 0
    segmented: bool = False
    keep: list[Field] = field(default_factory=list)  # fields that stay when the data is replaced

    @property
    def is_external(self) -> bool:
        return self.data_location == EXTERNAL


@dataclass
class Slot:
    """A tensor the model holds: an initializer, or the value of a Constant node.

    ``path`` lists the length-delimited fields that enclose it, from the model's graph field down
    to the field a writer replaces to change the value: the TensorProto itself, or for
    ``value_float``-style Constants the AttributeProto.
    """

    name: str
    kind: str  # "initializer" or "constant"
    scope: str  # "" in the main graph, else which node's which graph attribute, for people
    path: tuple[Field, ...]
    tensor: TensorRecord | None = None
    attr: str = ""  # the Constant's attribute: value, value_float, value_ints, ...
    values: list[Field] = field(default_factory=list)  # the numbers of value_float(s)/value_int(s)
    node: str = ""
    scope_key: str = ""  # "node/attribute/..." of the enclosing subgraphs, to tell same-named tensors apart


@dataclass
class ModelInfo:
    """What a ModelProto says about itself, and every tensor slot in it."""

    ir_version: int = 0
    producer: str = ""
    producer_version: str = ""
    opsets: list[tuple[str, int]] = field(default_factory=list)
    graph_name: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    metadata_props: list[tuple[str, str]] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # tensors ckptkit cannot hold, and why


def looks_like_model(head: bytes) -> bool:
    """Whether ``head`` starts like a serialized ModelProto: ir_version first, then valid fields."""
    if len(head) < 4 or head[0] != 0x08:
        return False
    pos, end, first = 0, len(head), True
    seen: set[int] = set()
    while pos < end:
        try:
            key, pos = read_varint(head, pos, end)
            number, wire_type = key >> 3, key & 7
            if MODEL_FIELDS.get(number) != wire_type or (number in seen and number in _SINGULAR_MODEL_FIELDS):
                return False
            seen.add(number)
            value, pos = read_varint(head, pos, end)
        except CorruptCheckpointError:  # the head ends inside a number
            return not first
        if first and not (number == M_IR_VERSION and 1 <= value <= 64):
            return False
        if wire_type == LEN:
            pos += value  # may run past the head: the graph is longer than what was read
        first = False
    return True


def scan_model(buf: Buffer) -> ModelInfo:
    """Walk a serialized ModelProto and find every tensor slot in it."""
    info = ModelInfo()
    graph: Field | None = None
    for f in fields(buf, 0, len(buf)):
        if f.number == M_IR_VERSION:
            info.ir_version = expect(f, VARINT, "ir_version").value
        elif f.number == M_PRODUCER_NAME:
            info.producer = text(buf, f, "producer_name")
        elif f.number == M_PRODUCER_VERSION:
            info.producer_version = text(buf, f, "producer_version")
        elif f.number == M_GRAPH:
            graph = expect(f, LEN, "graph")
        elif f.number == M_OPSET_IMPORT:
            info.opsets.append(_opset(buf, expect(f, LEN, "opset_import")))
        elif f.number == M_METADATA_PROPS:
            info.metadata_props.append(_string_pair(buf, expect(f, LEN, "metadata_props")))
    if graph is None:
        raise CorruptCheckpointError("the model has no graph: not an ONNX model, or an empty one")
    _Walker(buf, info).graph(graph, (graph,), "", "", 0)
    return info


def _opset(buf: Buffer, msg: Field) -> tuple[str, int]:
    domain, version = "", 0
    for f in fields(buf, msg.start, msg.end):
        if f.number == 1:
            domain = text(buf, f, "opset domain")
        elif f.number == 2:
            version = signed(expect(f, VARINT, "opset version").value)
    return domain, version


def _string_pair(buf: Buffer, msg: Field) -> tuple[str, str]:
    k = v = ""
    for f in fields(buf, msg.start, msg.end):
        if f.number == 1:
            k = text(buf, f, "key")
        elif f.number == 2:
            v = text(buf, f, "value")
    return k, v


def parse_tensor(buf: Buffer, msg: Field) -> TensorRecord:
    """The TensorProto stored in ``msg``, without reading its payload."""
    t = TensorRecord(msg)
    dims: list[int] = []
    for f in fields(buf, msg.start, msg.end):
        n = f.number
        if n not in DATA_FIELDS:
            t.keep.append(f)
        if n == T_DIMS:
            if f.wire_type == VARINT:
                dims.append(signed(f.value))
            else:
                dims.extend(int(d) for d in repeated(buf, [f], "varint").view("int64"))
        elif n == T_DATA_TYPE:
            t.data_type = expect(f, VARINT, "data_type").value
        elif n == T_SEGMENT:
            t.segmented = True
        elif n == T_NAME:
            t.name = text(buf, f, "tensor name")
        elif n == T_RAW_DATA:
            t.raw = expect(f, LEN, "raw_data")
        elif n in TYPED_FIELDS:
            t.typed.setdefault(n, []).append(f)
        elif n == T_EXTERNAL_DATA:
            k, v = _string_pair(buf, expect(f, LEN, "external_data"))
            t.external[k] = v
        elif n == T_DATA_LOCATION:
            t.data_location = expect(f, VARINT, "data_location").value
    if any(d < 0 for d in dims):
        raise CorruptCheckpointError(f"tensor {t.name!r} has a negative dimension: {dims}")
    t.dims = tuple(dims)
    return t


class _Walker:
    """Collects the slots of a graph and of its subgraphs, in file order."""

    def __init__(self, buf: Buffer, info: ModelInfo) -> None:
        self.buf = buf
        self.info = info

    def graph(self, g: Field, path: tuple[Field, ...], scope: str, key: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise CorruptCheckpointError(f"subgraphs nest deeper than {MAX_DEPTH} levels")
        buf = self.buf
        nodes: list[Field] = []
        inputs: list[Field] = []
        init_names: set[str] = set()
        for f in fields(buf, g.start, g.end):
            if f.number == G_INITIALIZER:
                t = parse_tensor(buf, expect(f, LEN, "initializer"))
                init_names.add(t.name)
                self.info.slots.append(Slot(t.name, "initializer", scope, (*path, f), tensor=t, scope_key=key))
            elif f.number == G_NODE:
                nodes.append(expect(f, LEN, "node"))
            elif f.number == G_SPARSE_INITIALIZER:
                self.info.skipped.append(f"{_sparse_name(buf, f)} (sparse initializer)")
            elif depth == 0 and f.number == G_NAME:
                self.info.graph_name = text(buf, f, "graph name")
            elif depth == 0 and f.number == G_INPUT:
                inputs.append(expect(f, LEN, "graph input"))
            elif depth == 0 and f.number == G_OUTPUT:
                self.info.outputs.append(describe_value(buf, expect(f, LEN, "graph output"))[1])
        for f in inputs:
            name, described = describe_value(buf, f)
            if name not in init_names:  # IR < 4 lists initializers as inputs too
                self.info.inputs.append(described)
        for index, f in enumerate(nodes):
            self.node(f, (*path, f), scope, key, depth, index)

    def node(self, nf: Field, path: tuple[Field, ...], scope: str, key: str, depth: int, index: int) -> None:
        buf = self.buf
        op_type = domain = b""
        name: Field | None = None
        outputs: list[Field] = []
        attrs: list[Field] = []
        for f in fields(buf, nf.start, nf.end):
            n = f.number
            if n == N_ATTRIBUTE:
                attrs.append(expect(f, LEN, "attribute"))
            elif n == N_OUTPUT:
                outputs.append(f)
            elif n == N_OP_TYPE:
                op_type = bytes(buf[expect(f, LEN, "op_type").start : f.end])
            elif n == N_NAME:
                name = f
            elif n == N_DOMAIN:
                domain = bytes(buf[expect(f, LEN, "node domain").start : f.end])
        is_constant = op_type == b"Constant" and domain in (b"", b"ai.onnx")
        if not is_constant:
            # Most nodes hold no tensors and no graphs: decide that without decoding their text.
            attrs = [a for a in attrs if _holds_graph(buf, a)]
        if not attrs:
            return
        label = text(buf, name, "node name") if name else ""
        op = op_type.decode("utf-8", "replace")
        label = label or f"{op}_{index}"
        out_names = [text(buf, f, "node output") for f in outputs] if is_constant else None
        for af in attrs:
            self.attribute(af, (*path, af), (scope, key, label, op), depth, out_names)

    def attribute(
        self,
        af: Field,
        path: tuple[Field, ...],
        where: tuple[str, str, str, str],
        depth: int,
        constant_outputs: list[str] | None,
    ) -> None:
        scope, key, label, op_type = where
        buf = self.buf
        attr_name = ""
        tensor: Field | None = None
        graphs: list[Field] = []
        values: list[Field] = []
        for f in fields(buf, af.start, af.end):
            if f.number == A_NAME:
                attr_name = text(buf, f, "attribute name")
            elif f.number == A_T:
                tensor = expect(f, LEN, "attribute tensor")
            elif f.number in (A_G, A_GRAPHS):
                graphs.append(expect(f, LEN, "attribute graph"))
            elif f.number in (A_F, A_I, A_FLOATS, A_INTS):
                values.append(f)
        for g in graphs:
            inner = f"{op_type} {label!r} {attr_name}"
            inner_key = f"{label}/{attr_name}"
            self.graph(
                g, (*path, g), f"{scope} > {inner}" if scope else inner,
                f"{key}/{inner_key}" if key else inner_key, depth + 1,
            )  # fmt: skip
        if constant_outputs is None:
            return
        out_name = constant_outputs[0] if constant_outputs else label
        if attr_name == "value" and tensor is not None:
            t = parse_tensor(buf, tensor)
            self.info.slots.append(
                Slot(out_name, "constant", scope, (*path, tensor), t, "value", node=label, scope_key=key)
            )
        elif attr_name in CONSTANT_VALUE_ATTRS[1:]:
            wanted = {"value_float": (A_F, I32), "value_int": (A_I, VARINT)}.get(attr_name)
            for v in values:
                if wanted and (v.number, v.wire_type) != wanted:
                    raise CorruptCheckpointError(f"Constant {label!r}: attribute {attr_name} holds the wrong field")
            self.info.slots.append(Slot(out_name, "constant", scope, path, None, attr_name, values, label, key))
        elif attr_name.startswith(("value_string", "sparse_value")):
            kind = "sparse" if attr_name == "sparse_value" else "strings"
            self.info.skipped.append(f"{out_name} (Constant {kind})")


_GRAPH_TAGS = (A_G << 3 | LEN, A_GRAPHS << 3 | LEN)  # one byte each


def _holds_graph(buf: Buffer, attr: Field) -> bool:
    # A graph field's tag byte must appear in the attribute; most attributes are ruled out by a
    # byte search alone, the rest are walked.
    if all(buf.find(bytes((tag,)), attr.start, attr.end) < 0 for tag in _GRAPH_TAGS):
        return False
    return any(f.number in (A_G, A_GRAPHS) for f in fields(buf, attr.start, attr.end))


def _sparse_name(buf: Buffer, f: Field) -> str:
    for sub in fields(buf, f.start, f.end):
        if sub.number == 1 and sub.wire_type == LEN:  # SparseTensorProto.values
            return parse_tensor(buf, sub).name
    return "?"


_TYPE_KINDS = {4: "sequence", 5: "map", 6: "opaque", 8: "sparse tensor", 9: "optional"}


def describe_value(buf: Buffer, msg: Field) -> tuple[str, str]:
    """A ValueInfoProto's name, and the whole for people: ``input: float32 [batch, 3, 224, 224]``."""
    name, kind = "", ""
    for f in fields(buf, msg.start, msg.end):
        if f.number == 1:
            name = text(buf, f, "value name")
        elif f.number == 2 and f.wire_type == LEN:
            kind = _describe_type(buf, f)
    return name, f"{name}: {kind}" if kind else name


def _describe_type(buf: Buffer, type_proto: Field) -> str:
    for f in fields(buf, type_proto.start, type_proto.end):
        if f.number == 1 and f.wire_type == LEN:  # tensor_type
            elem, dims = 0, None
            for g in fields(buf, f.start, f.end):
                if g.number == 1 and g.wire_type == VARINT:
                    elem = g.value
                elif g.number == 2 and g.wire_type == LEN:
                    dims = [_describe_dim(buf, d) for d in fields(buf, g.start, g.end) if d.wire_type == LEN]
            shape = "" if dims is None else " [" + ", ".join(dims) + "]"
            return element_name(elem) + shape
        if f.number in _TYPE_KINDS:
            return _TYPE_KINDS[f.number]
    return ""


def _describe_dim(buf: Buffer, dim: Field) -> str:
    for f in fields(buf, dim.start, dim.end):
        if f.number == 1 and f.wire_type == VARINT:
            return str(signed(f.value))
        if f.number == 2 and f.wire_type == LEN:
            return text(buf, f, "dim_param")
    return "?"
