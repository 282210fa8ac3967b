"""Tensor names: the module path a tensor belongs to, and safe display."""

from __future__ import annotations

import re

_SEPARATORS = re.compile(r"[./]")
_CONTROL = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F]}


def printable(text: str) -> str:
    """A name with control characters escaped, so a hostile file cannot drive the terminal."""
    return str(text).translate(_CONTROL)


def module_path(name: str) -> list[str]:
    """``encoder.layers.0.attn.weight`` -> ``[encoder, layers.0, attn]``: numbered items stay with their list."""
    parts = _SEPARATORS.split(name)[:-1]
    grouped: list[str] = []
    for part in parts:
        if part.isdigit() and grouped:
            grouped[-1] = f"{grouped[-1]}.{part}"
        else:
            grouped.append(part)
    return grouped


def leaf_name(name: str) -> str:
    """The last component of a tensor name: ``weight`` for ``fc.weight`` or ``dense/kernel``."""
    return _SEPARATORS.split(name)[-1]
