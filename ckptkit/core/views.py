"""Views that select, rename and cast a checkpoint's tensors without reading them."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ckptkit.core.dtypes import DType
from ckptkit.core.errors import UsageError
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

_GLOB_CHARS = set("*?[")


class TransformedCheckpoint(Checkpoint):
    """A checkpoint seen through selection, prefix stripping, renaming and casting.

    Built by :func:`transform`; records what it changed (``renamed``, ``cast``, ``dropped``) so a
    conversion can report it.
    """

    def __init__(
        self,
        base: Checkpoint,
        names: dict[str, str],
        cast_to: DType | None,
        aliases: dict[str, str],
        dropped: list[str],
        unsupported: dict[str, str] | None = None,
    ) -> None:
        super().__init__(base.path)
        self.url = base.url
        self.aliases = aliases
        self.dropped = dropped
        self.unsupported = dict(base.unsupported) if unsupported is None else unsupported
        self.base = base
        self.format_name = base.format_name
        self.concurrent_reads = base.concurrent_reads
        self.metadata = dict(base.metadata)
        self.extras = dict(base.extras)
        self._source = names  # new name -> base name (tensors and promoted aliases)
        self._cast_to = cast_to
        base_infos = {ti.name: ti for ti in base.tensor_infos()}
        self._infos: list[TensorInfo] = []
        self.cast: dict[str, str] = {}
        for new, old in names.items():
            ti = base_infos[base.aliases.get(old, old)]
            dtype = ti.dtype
            if cast_to is not None and ti.dtype.kind == cast_to.kind and ti.dtype != cast_to:
                self.cast[new] = f"{ti.dtype.name} -> {cast_to.name}"
                dtype = cast_to
            self._infos.append(replace(ti, name=new, dtype=dtype))
        self.renamed = {new: old for new, old in names.items() if new != old}

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def _base_name(self, name: str) -> str:
        old = self._source[name]
        return self.base.aliases.get(old, old)

    def read_tensor(self, name: str) -> np.ndarray:
        data = self.base.read_tensor(self._base_name(name))
        if name in self.cast and self._cast_to is not None:
            data = data.astype(self._cast_to.numpy)
        return data

    def raw_extent(self, name: str) -> RawExtent | None:
        if name in self.cast:
            return None
        return self.base.raw_extent(self._base_name(name))

    def data_files(self) -> list[Path]:
        return self.base.data_files()

    def source_of(self, name: str) -> tuple[Checkpoint, str] | None:
        """The checkpoint and name the tensor is read from unchanged, or ``None`` when it is cast.

        Writers that can keep a format's own encoding (GGUF's quantized blocks) look through the view with it.
        """
        if name in self.cast:
            return None
        return self.base, self._base_name(name)

    def stored_type(self, name: str) -> str:
        return super().stored_type(name) if name in self.cast else self.base.stored_type(self._base_name(name))

    def stored_bytes(self, name: str) -> int:
        return super().stored_bytes(name) if name in self.cast else self.base.stored_bytes(self._base_name(name))

    def close(self) -> None:
        self.base.close()


def name_matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether a ``--select``/``--exclude`` pattern names ``name``: a glob, or a name and everything under it."""
    for pat in patterns:
        if set(pat) & _GLOB_CHARS:
            if fnmatch.fnmatchcase(name, pat):
                return True
        elif name == pat or name.startswith(pat + "."):
            return True
    return False


def transform(
    ckpt: Checkpoint,
    select: Sequence[str] = (),
    exclude: Sequence[str] = (),
    strip_prefix: Sequence[str] = (),
    cast_to: DType | None = None,
) -> Checkpoint:
    """Select, exclude, strip prefixes and cast; returns ``ckpt`` if nothing to do.

    ``cast_to`` (a floating-point or complex dtype) applies to the tensors of its kind: a float
    target casts floating-point tensors, a complex target complex ones.

    A ``select`` pattern without glob characters names a subtree (``state_dict`` keeps
    ``state_dict.*``) and that prefix is removed from the names kept, so selecting the
    ``state_dict`` of a training checkpoint yields a plain state dict. Glob patterns filter only.
    Aliases (tied weights) follow their names: an alias whose tensor was left out becomes a
    tensor of its own. Tensors ckptkit cannot read (``ckpt.unsupported``) are selected, excluded
    and renamed like the others; those kept stay in the view's ``unsupported``.
    """
    if not (select or exclude or strip_prefix or cast_to):
        return ckpt
    if cast_to is not None and cast_to.kind not in "fc":
        raise UsageError(
            f"--dtype {cast_to.name}: casting takes a floating-point or complex dtype (float16, bfloat16, "
            "complex64, ...); integer and bool tensors are always kept as they are"
        )
    all_names = [ti.name for ti in ckpt.tensor_infos()] + list(ckpt.aliases) + list(ckpt.unsupported)
    subtree = [p for p in select if not set(p) & _GLOB_CHARS]
    kept = [
        n for n in all_names
        if (not select or name_matches(n, select)) and not (exclude and name_matches(n, exclude))
    ]  # fmt: skip
    if not kept:
        what = ", ".join(select) if select else "everything"
        raise UsageError(f"no tensor left after selecting {what} and excluding {', '.join(exclude) or 'nothing'}")

    def rename(name: str) -> str:
        for pre in subtree:
            if name.startswith(pre + "."):
                name = name[len(pre) + 1 :]
                break
        for pre in strip_prefix:
            pre = pre if pre.endswith(".") else pre + "."
            while name.startswith(pre):
                name = name[len(pre) :]
        return name

    names: dict[str, str] = {}
    canonical_kept: dict[str, str] = {}  # base canonical -> new name that represents it
    aliases: dict[str, str] = {}
    unsupported: dict[str, str] = {}
    base_aliases = ckpt.aliases
    for old in kept:
        new = rename(old)
        if new in names or new in aliases or new in unsupported:
            raise UsageError(f"two tensors would both be named {new!r} after renaming ({old!r} and another)")
        if old in ckpt.unsupported:
            unsupported[new] = ckpt.unsupported[old]
            continue
        target = base_aliases.get(old, old)
        if target in canonical_kept:
            aliases[new] = canonical_kept[target]
        else:
            canonical_kept[target] = new
            names[new] = old
    kept_set = set(kept)
    dropped = [n for n in all_names if n not in kept_set]
    view = TransformedCheckpoint(ckpt, names, cast_to, aliases, dropped, unsupported)
    if subtree:
        view.extras = {k: v for k, v in ckpt.extras.items() if name_matches(k, select)}
    return view
