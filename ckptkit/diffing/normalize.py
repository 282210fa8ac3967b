"""Normalizers: views that give one checkpoint the names and tensor layouts of the other.

A checkpoint and its translation to another framework hold the same numbers under other names
and, for some layers, in another layout (a Keras ``Dense`` kernel is the transpose of a PyTorch
``Linear`` weight). Before matching, ``diff`` offers each side, with the other side for reference,
to every normalizer; one that recognises the pair returns a view of the first side renamed and
re-laid like the second (tensors read from the view come out in the new layout, and may be
non-contiguous), and ``None`` otherwise.

Built-in normalizers are listed by import path in :data:`BUILTIN_NORMALIZERS` and loaded on
first use, so a format's layout rules (and the libraries they need) load only when diffing;
other code adds its own with :func:`register_normalizer`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from ckptkit.core.model import Checkpoint

Normalizer = Callable[[Checkpoint, Checkpoint], "Checkpoint | None"]

# "module:function" of the normalizers formats provide, tried in this order. A format whose
# conversions rename or re-lay tensors (Keras <-> PyTorch) lists here the function that applies
# the same rules to a checkpoint being compared.
BUILTIN_NORMALIZERS: tuple[str, ...] = ("ckptkit.layout.diff_normalizer:keras_to_torch_layout",)

_registered: list[Normalizer] = []


def register_normalizer(normalizer: Normalizer) -> None:
    """Add a normalizer that every later :func:`ckptkit.diff` call tries after the built-in ones."""
    if normalizer not in _registered:
        _registered.append(normalizer)


def default_normalizers() -> list[Normalizer]:
    """The built-in normalizers, then the registered ones."""
    found: list[Normalizer] = []
    for spec in BUILTIN_NORMALIZERS:
        module_name, _, attr = spec.partition(":")
        found.append(getattr(importlib.import_module(module_name), attr))
    return found + _registered


def normalize(ckpt: Checkpoint, other: Checkpoint, normalizers: Sequence[Normalizer]) -> tuple[Checkpoint, str | None]:
    """``ckpt`` as the first normalizer that recognises it makes it, and that normalizer's name."""
    for normalizer in normalizers:
        view = normalizer(ckpt, other)
        if view is not None:
            return view, getattr(normalizer, "__qualname__", repr(normalizer))
    return ckpt, None
