"""Rewriting a protobuf file with some fields replaced, streamed, the rest copied byte for byte.

A length-delimited field carries its length before its content, so replacing a field nested in
others changes the length of every message around it. The new lengths are computed first from the
sizes of the replacements; then the file is written in one pass: untouched stretches are copied
from the source, enclosing fields get their new length, replacements write their own content.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ckptkit.core.model import RawExtent
from ckptkit.io.protowire import LEN, Field, len_field_size, len_prefix
from ckptkit.io.streaming import TensorCopier


@dataclass
class Replacement:
    """New content for the last field of ``path``; the fields before it enclose it, outermost first."""

    path: tuple[Field, ...]
    size: int
    write: Callable[[BinaryIO, TensorCopier], None]


@dataclass
class _Node:
    msg: Field
    children: dict[int, _Node] = field(default_factory=dict)  # by tag_start, i.e. file order
    replacement: Replacement | None = None
    size: int = -1


class Splice:
    """A source file and the fields to replace in it."""

    def __init__(self, source: Path, length: int, replacements: Sequence[Replacement]) -> None:
        self.source = source
        self.root = _Node(Field(0, LEN, 0, 0, length, 0))
        for rep in replacements:
            node = self.root
            for f in rep.path:
                node = node.children.setdefault(f.tag_start, _Node(f))
            node.replacement = rep
        self._sized(self.root)

    @property
    def size(self) -> int:
        """Bytes of the rewritten file."""
        return self.root.size

    def _sized(self, node: _Node) -> int:
        if node.replacement is not None:
            node.size = node.replacement.size
            return node.size
        size = node.msg.end - node.msg.start
        for child in node.children.values():
            new = len_field_size(child.msg.number, self._sized(child))
            size += new - (child.msg.end - child.msg.tag_start)
        node.size = size
        return size

    def write(self, out: BinaryIO, copier: TensorCopier) -> None:
        """Write the rewritten file to ``out``."""
        self._emit(self.root, out, copier)

    def _emit(self, node: _Node, out: BinaryIO, copier: TensorCopier) -> None:
        pos = node.msg.start
        for _, child in sorted(node.children.items()):
            self._copy(pos, child.msg.tag_start, out, copier)
            out.write(len_prefix(child.msg.number, child.size))
            if child.replacement is not None:
                child.replacement.write(out, copier)
            else:
                self._emit(child, out, copier)
            pos = child.msg.end
        self._copy(pos, node.msg.end, out, copier)

    def _copy(self, start: int, end: int, out: BinaryIO, copier: TensorCopier) -> None:
        if end > start:
            copier.copy_extent(RawExtent(self.source, start, end - start), out)
