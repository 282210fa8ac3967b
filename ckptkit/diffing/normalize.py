"""Normalizers: views that give one checkpoint the names and tensor layouts of the other.

A checkpoint and its translation to another framework hold the same numbers under other names
and, for some layers, in another layout (a Keras ``Dense`` kernel is the transpose of a PyTorch
``Linear`` weight). Before matching, ``diff`` offers each side, with the other side for reference,
to every normalizer; one that recognises the pair returns a view of the first side renamed and
re-laid like the second (tensors read from the view come out in the new layout, and may be
non-contiguous), and ``None`` otherwise.

The engine knows no normalizer of its own: the caller that composes it hands them in
(``ckptkit.diff`` and ``ckptkit diff`` add the PyTorch <-> Keras layout rules of
:mod:`ckptkit.layout`), and other code adds its own with :func:`register_normalizer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ckptkit.core.model import Checkpoint

Normalizer = Callable[[Checkpoint, Checkpoint], "Checkpoint | None"]

_registered: list[Normalizer] = []


def register_normalizer(normalizer: Normalizer) -> None:
    """Add a normalizer that every later :func:`ckptkit.diff` call tries after the built-in ones
    (and that the engine's :func:`~ckptkit.diffing.diff` tries when it is given none)."""
    if normalizer not in _registered:
        _registered.append(normalizer)


def registered_normalizers() -> list[Normalizer]:
    """The normalizers added with :func:`register_normalizer`, in the order they were added."""
    return list(_registered)


def normalize(ckpt: Checkpoint, other: Checkpoint, normalizers: Sequence[Normalizer]) -> tuple[Checkpoint, str | None]:
    """``ckpt`` as the first normalizer that recognises it makes it, and that normalizer's name."""
    for normalizer in normalizers:
        view = normalizer(ckpt, other)
        if view is not None:
            return view, getattr(normalizer, "__qualname__", repr(normalizer))
    return ckpt, None
