"""Tensor names: the module path a tensor belongs to."""

from __future__ import annotations

import re

_SEPARATORS = re.compile(r"[./]")


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
