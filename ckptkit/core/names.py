"""Tensor names: the module path a tensor belongs to, and safe display."""

from __future__ import annotations

import re

from ckptkit.core.errors import UnsupportedError

_SEPARATORS = re.compile(r"[./]")
_CONTROL = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F]}


def printable(text: str) -> str:
    """A name with control characters escaped, so a hostile file cannot drive the terminal, and
    lone surrogates (bytes that were not UTF-8) escaped, so it can be printed at all."""
    return str(text).translate(_CONTROL).encode("utf-8", "backslashreplace").decode("utf-8")


def utf8_text(text: str, where: str, what: str = "tensor name") -> bytes:
    """``text`` as UTF-8 for a format that stores text as UTF-8; refused when it is not text.

    A name read from bytes that are not UTF-8 (an HDF5 link, a pickle) holds lone surrogates.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        remedy = "leave the tensor out with --exclude" if what == "tensor name" else "drop or fix it at the source"
        raise UnsupportedError(
            f"{what} '{printable(text)}' is not UTF-8 text, and {where} stores it as UTF-8; {remedy}, "
            "or write PyTorch (.pt), which keeps such text"
        ) from None


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
