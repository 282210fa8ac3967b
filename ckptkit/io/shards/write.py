"""Writing one checkpoint as several shard files plus a JSON index, the Hugging Face way.

Layout (what ``transformers`` and ``huggingface_hub`` write and load): for an output named
``model.safetensors``, the shards are ``model-00001-of-00003.safetensors`` ... and the index is
``model.safetensors.index.json``::

    {"metadata": {"total_size": 1234}, "weight_map": {"tensor name": "model-00001-of-00003.safetensors"}}

Tensors go into shards greedily in checkpoint order; a tensor larger than the shard size gets a
shard of its own (as ``huggingface_hub.split_state_dict_into_shards_factory`` does). When
everything fits in one shard, one plain file is written and no index, unless the output was named
as an index. Each shard is written by the format's own single-file writer; the shards are
independent tasks run by :mod:`ckptkit.io.workers`. Tied-weight aliases and non-tensor extras are
kept in the index metadata under ``ckptkit:aliases`` / ``ckptkit:extras``, where loaders that
do not know them ignore them.

An output replaces whatever checkpoint an earlier write left under its name, in either layout
(:func:`previous_files`): with ``force`` those files are removed once the new ones are in place, so
a loader cannot pick a stale ``model.safetensors`` over new shards; without it they stop the write.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptkit.core.errors import CkptkitError, UsageError
from ckptkit.core.format import OptionSpec, WriteContext, Writer
from ckptkit.core.metadata import ALIASES_KEY, EXTRAS_KEY
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo, parse_size
from ckptkit.io.paths import is_inside_name
from ckptkit.io.shards.index import INDEX_SUFFIX, read_index
from ckptkit.io.workers import shard_executor

if TYPE_CHECKING:
    import numpy as np

DEFAULT_SHARD_SIZE = "5GB"  # the default of transformers' save_pretrained and huggingface_hub

SHARD_SIZE_OPTION = OptionSpec(
    "shard_size",
    "Split the output into shards of at most this size (5GB, 500MB, 2GiB; decimal units as Hugging Face "
    "counts) with a JSON index, as transformers writes them.",
)


@dataclass(frozen=True)
class ShardPlan:
    """One output shard: its final file and the tensors it holds, in writing order."""

    number: int  # 1-based
    final: Path
    names: tuple[str, ...]
    nbytes: int


def split(infos: Sequence[TensorInfo], max_bytes: int) -> list[list[TensorInfo]]:
    """Greedy split in order; a tensor over ``max_bytes`` gets a shard of its own."""
    shards: list[list[TensorInfo]] = []
    current: list[TensorInfo] = []
    size = 0
    for ti in infos:
        if ti.nbytes > max_bytes:
            shards.append([ti])
            continue
        if current and size + ti.nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(ti)
        size += ti.nbytes
    if current or not shards:
        shards.append(current)
    return shards


def _stem_suffix(base: str) -> tuple[str, str]:
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        return base, ""
    return stem, f".{ext}"


def shard_names(base: str, count: int) -> list[str]:
    """``model.safetensors`` -> ``model-00001-of-00003.safetensors``, ... (the suffix before the last dot)."""
    stem, suffix = _stem_suffix(base)
    return [f"{stem}-{i:05d}-of-{count:05d}{suffix}" for i in range(1, count + 1)]


def previous_files(main: Path) -> list[Path]:
    """The files of the checkpoint an earlier write left under the output name ``main``.

    For ``model.safetensors`` (or its index name): ``model.safetensors``, its index, the shards
    that index names, and numbered shards ``model-NNNNN-of-NNNNN.safetensors`` (which
    ``transformers`` also clears when it saves). Only files beside ``main`` with the checkpoint's
    suffix count as shards, so ``config.json``, tokenizer files and other checkpoints stay.
    """
    base = main.name.removesuffix(INDEX_SUFFIX)
    folder = main.parent
    stem, suffix = _stem_suffix(base)
    index = folder / index_name(base)
    shards: list[str] = []
    if index.is_file():
        with contextlib.suppress(CkptkitError):  # an unreadable index is still replaced; its shards go by name
            shards = list(read_index(index).shard_names)
    series = re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}" + re.escape(suffix))
    shards += sorted(p.name for p in folder.iterdir() if series.fullmatch(p.name))
    found = [folder / base, index] + [
        folder / n
        for n in shards
        if is_inside_name(n) and "/" not in n and (series.fullmatch(n) or (suffix and n.endswith(suffix)))
    ]
    return [p for p in dict.fromkeys(found) if p.is_file() or p.is_symlink()]


def index_name(base: str) -> str:
    """``model.safetensors`` -> ``model.safetensors.index.json``."""
    return base + INDEX_SUFFIX


def plan(ckpt: Checkpoint, main: Path, shard_size: str | None) -> list[ShardPlan] | None:
    """The shards to write for output ``main``, or ``None`` for one plain file.

    ``main`` is the output's name as given: a plain name (``model.safetensors``) shards only with
    ``shard_size``; an index name (``model.safetensors.index.json``) always writes an index.
    """
    named_index = main.name.endswith(INDEX_SUFFIX)
    if shard_size is None and not named_index:
        return None
    max_bytes = parse_size(shard_size or DEFAULT_SHARD_SIZE)
    groups = split(ckpt.tensor_infos(), max_bytes)
    if len(groups) == 1 and not named_index:
        return None
    base = main.name.removesuffix(INDEX_SUFFIX)
    if not base:
        raise UsageError(f"cannot name shards after {main.name!r}; name the output like model.safetensors")
    names = shard_names(base, len(groups))
    return [
        ShardPlan(i + 1, main.with_name(names[i]), tuple(t.name for t in g), sum(t.nbytes for t in g))
        for i, g in enumerate(groups)
    ]


class ShardView(Checkpoint):
    """Some of a checkpoint's tensors, as one shard of it; the base stays open and owned elsewhere."""

    def __init__(self, base: Checkpoint, names: Sequence[str]) -> None:
        super().__init__(base.path)
        self.base = base
        self.format_name = base.format_name
        self.concurrent_reads = base.concurrent_reads
        self.metadata = dict(base.metadata)
        self._infos = [base.info(n) for n in names]

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        return self.base.read_tensor(name)

    def raw_extent(self, name: str) -> RawExtent | None:
        return self.base.raw_extent(name)


class _ShardOutput:
    """The output as one shard's writer sees it: its main file is the shard."""

    def __init__(self, output: Any, final: Path) -> None:
        self._output = output
        self._final = final

    @property
    def path(self) -> Path:
        return self._final

    def temp_for(self, final: str | Path | None = None) -> Path:
        return self._output.temp_for(self._final if final is None else final)


def index_document(ckpt: Checkpoint, shards: Sequence[ShardPlan]) -> dict[str, Any]:
    """The index JSON as transformers writes it: ``metadata.total_size`` (bytes of tensor data),
    ``metadata.total_parameters`` and ``weight_map``."""
    meta: dict[str, Any] = {"total_parameters": ckpt.total_params, "total_size": sum(s.nbytes for s in shards)}
    if ckpt.aliases:
        meta[ALIASES_KEY] = dict(ckpt.aliases)
    if ckpt.extras:
        meta[EXTRAS_KEY] = json.loads(json.dumps(ckpt.extras, default=str))
    weight_map = {name: s.final.name for s in shards for name in s.names}
    return {"metadata": meta, "weight_map": weight_map}


@dataclass(frozen=True)
class _ShardTask:
    """Writing one output shard: a plain record, so that it can be sent to another process."""

    ckpt: Checkpoint
    ctx: WriteContext  # the output and options; notes and progress of this shard
    write_one: Writer
    shard: ShardPlan


def write_shard(task: _ShardTask) -> list[str]:
    """Write one shard into the output's staging folder; its writer's notes."""
    shard_ctx = replace(task.ctx, output=_ShardOutput(task.ctx.output, task.shard.final), notes=[])
    task.write_one(ShardView(task.ckpt, task.shard.names), shard_ctx)
    return shard_ctx.notes


def write_sharded(ckpt: Checkpoint, ctx: WriteContext, write_one: Writer, shards: Sequence[ShardPlan]) -> None:
    """Write each shard with ``write_one`` (concurrently when the source allows), then the index."""
    out = ctx.output
    main = out.path
    index_final = main if main.name.endswith(INDEX_SUFFIX) else main.with_name(index_name(main.name))
    for final in [s.final for s in shards] + [index_final]:
        out.temp_for(final)  # claims every name up front: an existing file stops us before any writing
    _replace_previous(ctx, main, [s.final for s in shards] + [index_final])
    options = {k: v for k, v in ctx.options.items() if k != SHARD_SIZE_OPTION.name}
    runner = shard_executor(ckpt.concurrent_reads)
    # On another process a shard's task reopens the source and writes into the same staging
    # folder; progress callbacks stay here.
    base = replace(ctx, options=options, notes=[], expected=None, progress=None if runner.remote else ctx.progress)
    notes = runner.map(write_shard, [_ShardTask(ckpt, base, write_one, s) for s in shards])
    ctx.notes.extend(dict.fromkeys(n for shard_notes in notes for n in shard_notes))
    with open(out.temp_for(index_final), "w", encoding="utf-8") as f:
        json.dump(index_document(ckpt, shards), f, indent=2, ensure_ascii=False)
        f.write("\n")
    out.set_main(index_final)
    biggest = max(s.nbytes for s in shards)
    ctx.notes.append(f"{len(shards)} shards (largest {biggest:,} bytes of tensors) indexed by {index_final.name}")


def _replace_previous(ctx: WriteContext, main: Path, written: Sequence[Path]) -> None:
    """Have the output replace the earlier checkpoint under ``main``'s name, whatever its layout."""
    stale = [p for p in previous_files(main) if p not in written]
    if not stale:
        return
    ctx.output.replaces(stale)
    shown = ", ".join(p.name for p in stale[:4]) + (f" and {len(stale) - 4} more" if len(stale) > 4 else "")
    ctx.notes.append(f"removed the earlier checkpoint's {shown}, after writing the new files")


def shardable(write_one: Writer) -> Writer:
    """A writer that honours the ``shard_size`` option (and index output names) around ``write_one``."""

    def write(ckpt: Checkpoint, ctx: WriteContext) -> None:
        shards = plan(ckpt, ctx.output.path, ctx.options.get(SHARD_SIZE_OPTION.name))
        if shards is None:
            options = {k: v for k, v in ctx.options.items() if k != SHARD_SIZE_OPTION.name}
            if len(options) != len(ctx.options):
                ctx.notes.append("everything fits in one shard: wrote one file and no index")
                ctx.options = options
            _replace_previous(ctx, ctx.output.path, [ctx.output.path])
            write_one(ckpt, ctx)
        else:
            write_sharded(ckpt, ctx, write_one, shards)

    write.__doc__ = write_one.__doc__
    write.__name__ = getattr(write_one, "__name__", "write")
    return write
