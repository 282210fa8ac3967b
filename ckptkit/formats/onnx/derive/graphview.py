"""The nodes of an ONNX graph, as far as deriving its weights needs: who consumes each value, and how.

Walks the protobuf with :mod:`ckptkit.io.protowire` like the reader does: every node of the main graph and of
subgraphs, with its operator, inputs, outputs and scalar attributes (``transB``, ``epsilon``,
``direction``...), and the fields that enclose it so that a writer can replace the node.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.io.protowire import I32, LEN, VARINT, Buffer, Field, expect, fields, signed, text

from ..graph import (
    A_F,
    A_G,
    A_GRAPHS,
    A_I,
    A_NAME,
    G_NODE,
    M_GRAPH,
    MAX_DEPTH,
    N_ATTRIBUTE,
    N_DOMAIN,
    N_NAME,
    N_OP_TYPE,
    N_OUTPUT,
)

N_INPUT = 1
A_S = 4

# (operator, input index) whose tensor is a learned weight in the networks exporters produce: an
# initializer there that nothing explains must not be kept silently.
WEIGHT_INPUTS: dict[str, frozenset[int]] = {
    "Conv": frozenset((1, 2)),
    "ConvTranspose": frozenset((1, 2)),
    "Gemm": frozenset((0, 1, 2)),
    "MatMul": frozenset((0, 1)),
    "LSTM": frozenset((1, 2, 3)),
    "GRU": frozenset((1, 2, 3)),
    "RNN": frozenset((1, 2, 3)),
    "BatchNormalization": frozenset((1, 2, 3, 4)),
    "LayerNormalization": frozenset((1, 2)),
    "InstanceNormalization": frozenset((1, 2)),
    "GroupNormalization": frozenset((1, 2)),
    "Gather": frozenset((0,)),
    "PRelu": frozenset((1,)),
    "Einsum": frozenset(range(8)),
}

RNN_OPS = frozenset(("LSTM", "GRU", "RNN"))


@dataclass(eq=False)
class Node:
    """One NodeProto: its operator and wiring, scalar attributes, and where it lies in the file."""

    op: str
    domain: str
    name: str
    inputs: list[str]
    outputs: list[str]
    ints: dict[str, int] = field(default_factory=dict)
    floats: dict[str, float] = field(default_factory=dict)
    strings: dict[str, str] = field(default_factory=dict)
    path: tuple[Field, ...] = ()  # the graph field(s) enclosing the node, then the node itself
    scope: str = ""

    @property
    def standard(self) -> bool:
        return self.domain in ("", "ai.onnx")

    def describe(self) -> str:
        return f"{self.op} {self.name!r}" if self.name else self.op


@dataclass(frozen=True, eq=False)
class Use:
    """Input ``index`` of ``node`` reads the value."""

    node: Node
    index: int

    def describe(self) -> str:
        return f"{self.node.op} input {self.index}"


class GraphView:
    """Every node of a model, and the uses and producer of each value name."""

    def __init__(self, buf: Buffer) -> None:
        self.buf = buf
        self.nodes: list[Node] = []
        graph = next((f for f in fields(buf, 0, len(buf)) if f.number == M_GRAPH), None)
        if graph is not None:
            self._graph(expect(graph, LEN, "graph"), (graph,), "", 0)
        self.uses: dict[str, list[Use]] = {}
        self.producer: dict[str, Node] = {}
        for node in self.nodes:
            for i, name in enumerate(node.inputs):
                if name:
                    self.uses.setdefault(name, []).append(Use(node, i))
            for name in node.outputs:
                self.producer.setdefault(name, node)

    def uses_of(self, name: str) -> list[Use]:
        return self.uses.get(name, [])

    def ops(self) -> set[str]:
        return {n.op for n in self.nodes if n.standard}

    def identities(self) -> Iterator[Node]:
        """Identity nodes, which exporters use to let several names share one initializer."""
        for node in self.nodes:
            if node.op == "Identity" and node.standard and len(node.inputs) == 1 and len(node.outputs) == 1:
                yield node

    def weight_role(self, name: str) -> Use | None:
        """The first use of ``name`` where a network reads a learned weight, if there is one."""
        for use in self.uses_of(name):
            if use.node.standard and use.index in WEIGHT_INPUTS.get(use.node.op, ()):
                return use
            if use.node.op == "Identity" and use.node.outputs:
                inner = self.weight_role(use.node.outputs[0])
                if inner is not None:
                    return inner
        return None

    def _graph(self, g: Field, path: tuple[Field, ...], scope: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise CorruptCheckpointError(f"subgraphs nest deeper than {MAX_DEPTH} levels")
        for f in fields(self.buf, g.start, g.end):
            if f.number == G_NODE:
                self._node(expect(f, LEN, "node"), (*path, f), scope, depth)

    def _node(self, nf: Field, path: tuple[Field, ...], scope: str, depth: int) -> None:
        buf = self.buf
        node = Node("", "", "", [], [], path=path, scope=scope)
        for f in fields(buf, nf.start, nf.end):
            n = f.number
            if n == N_INPUT:
                node.inputs.append(text(buf, f, "node input"))
            elif n == N_OUTPUT:
                node.outputs.append(text(buf, f, "node output"))
            elif n == N_OP_TYPE:
                node.op = text(buf, f, "op_type")
            elif n == N_DOMAIN:
                node.domain = text(buf, f, "node domain")
            elif n == N_NAME:
                node.name = text(buf, f, "node name")
            elif n == N_ATTRIBUTE:
                self._attribute(expect(f, LEN, "attribute"), node, path, scope, depth)
        self.nodes.append(node)

    def _attribute(self, af: Field, node: Node, path: tuple[Field, ...], scope: str, depth: int) -> None:
        buf = self.buf
        name = ""
        scalar: tuple[str, object] | None = None
        graphs: list[Field] = []
        for f in fields(buf, af.start, af.end):
            if f.number == A_NAME:
                name = text(buf, f, "attribute name")
            elif f.number == A_I and f.wire_type == VARINT:
                scalar = ("i", signed(f.value))
            elif f.number == A_F and f.wire_type == I32:
                scalar = ("f", struct.unpack_from("<f", buf, f.start)[0])
            elif f.number == A_S and f.wire_type == LEN:
                scalar = ("s", bytes(buf[f.start : f.end]).decode("utf-8", "replace"))
            elif f.number in (A_G, A_GRAPHS) and f.wire_type == LEN:
                graphs.append(f)
        if scalar is not None:
            kind, value = scalar
            if kind == "i":
                node.ints[name] = int(value)  # type: ignore[call-overload]
            elif kind == "f":
                node.floats[name] = float(value)  # type: ignore[arg-type]
            else:
                node.strings[name] = str(value)
        label = node.name or node.op
        for g in graphs:
            inner = f"{scope}/{label}/{name}" if scope else f"{label}/{name}"
            self._graph(g, (*path, af, g), inner, depth + 1)
