"""Hugging Face names and layouts <-> GGUF names and layouts, through gguf-py's own tensor name maps.

llama.cpp's converter (``convert_hf_to_gguf.py``) renames tensors per architecture with
``gguf.TensorNameMap`` (``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``), and for
the llama family reorders the rows of the query and key projections from Hugging Face's rotary
layout (the two halves of each head) to GGML's (interleaved pairs): ``permute(w, n_head, n_head_kv)``
reshapes the rows to ``(heads, 2, head_dim / 2)`` and swaps the last two. The same maps are used
here in both directions, so no name table is kept by hand:

* :func:`gguf_to_hf` is a ``diff`` normalizer: a GGUF file compared with a Hugging Face checkpoint is
  seen under the Hugging Face names, its q/k rows put back in Hugging Face order.
* :func:`hf_to_gguf` is ``convert --layout gguf``: a Hugging Face checkpoint (with its
  ``config.json``) renamed and permuted as the converter does, with the architecture's metadata.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptkit.core.errors import CorruptCheckpointError, UsageError
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.formats.gguf.header import STRING, UINT32, Field
from ckptkit.formats.gguf.read import PREFIX, gguf_module

if TYPE_CHECKING:
    import numpy as np

# Architectures whose llama.cpp converter class permutes q/k (``LlamaModel`` with ``undo_permute``).
PERMUTED_ARCHS = frozenset({"llama"})
# Hugging Face ``model_type`` values llama.cpp converts to another architecture name.
_HF_MODEL_TYPES = {"mistral": "llama", "mixtral": "llama"}
_SUFFIXES = (".weight", ".bias")


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face rotary row order -> GGML's, per head (llama.cpp's ``permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGML rotary row order -> Hugging Face's: the inverse of :func:`permute`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class HeadsView(Checkpoint):
    """``base`` under other names, with the rows of some tensors permuted (``"apply"``) or put back (``"undo"``)."""

    def __init__(
        self,
        base: Checkpoint,
        names: dict[str, str],
        heads: dict[str, int],
        direction: str,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(base.path)
        self.base = base
        self.format_name = base.format_name
        self.concurrent_reads = base.concurrent_reads
        self.metadata = dict(base.metadata if metadata is None else metadata)
        self.extras = dict(base.extras)
        self.notes: list[str] = []
        # What a GGUF writer stores as typed metadata: the base's own (a GGUF source), or set by hf_to_gguf.
        self.gguf_fields: list[Field] | None = getattr(base, "gguf_fields", None)
        self._source = names  # new name -> base name
        self._heads = heads  # new name -> heads to permute by
        self._direction = direction
        back = {old: new for new, old in names.items()}
        self.aliases = {back.get(a, a): back.get(t, t) for a, t in base.aliases.items()}
        base_infos = {ti.name: ti for ti in base.tensor_infos()}
        self._infos = [TensorInfo(new, base_infos[old].dtype, base_infos[old].shape, base_infos[old].location)
                       for new, old in names.items()]  # fmt: skip
        self.unsupported = {back.get(n, n): why for n, why in base.unsupported.items()}

    @property
    def renamed(self) -> dict[str, str]:
        """New name -> name in ``base``, for the names that changed."""
        return {new: old for new, old in self._source.items() if new != old}

    @property
    def transformed(self) -> dict[str, str]:
        """New name -> how its rows were reordered."""
        order = "llama.cpp's rotary order" if self._direction == "apply" else "Hugging Face's rotary order"
        return {name: f"q/k rows permuted to {order} ({n} heads)" for name, n in self._heads.items()}

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        data = self.base.read_tensor(self._source[name])
        n = self._heads.get(name)
        if n is None:
            return data
        return permute(data, n) if self._direction == "apply" else unpermute(data, n)

    def raw_extent(self, name: str) -> RawExtent | None:
        return None if name in self._heads else self.base.raw_extent(self._source[name])

    def span_reader(self, name: str) -> Callable[[int, int], np.ndarray] | None:
        read = self.base.span_reader(self._source[name])
        n = self._heads.get(name)
        if read is None or n is None:
            return read
        import numpy as np

        info = self.info(name)
        rows = info.shape[0]
        row_len = info.numel // rows
        # Row r of this view is row order[r] of the base; the rows of a span come from within the
        # heads it covers, so decode that contiguous run of base rows and pick the span's rows from it.
        order = (permute if self._direction == "apply" else unpermute)(np.arange(rows), n)

        def span(start: int, stop: int) -> np.ndarray:
            first, last = start // row_len, -(-stop // row_len)
            src = order[first:last]
            lo, hi = int(src.min()), int(src.max()) + 1
            run = read(lo * row_len, hi * row_len).reshape(hi - lo, row_len)
            picked = np.take(run, src - lo, axis=0).reshape(-1)
            return picked[start - first * row_len : stop - first * row_len]

        return span

    def source_of(self, name: str) -> tuple[Checkpoint, str] | None:
        return None if name in self._heads else (self.base, self._source[name])

    def stored_type(self, name: str) -> str:
        return self.base.stored_type(self._source[name])

    def stored_bytes(self, name: str) -> int:
        return self.base.stored_bytes(self._source[name])

    def close(self) -> None:
        self.base.close()


def _arch(gguf: Any, name: str) -> Any | None:
    return next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == name), None)


def _int(meta: dict[str, str], key: str) -> int | None:
    try:
        return int(meta[PREFIX + key])
    except (KeyError, ValueError):
        return None


def gguf_to_hf(ckpt: Checkpoint, other: Checkpoint) -> Checkpoint | None:
    """``ckpt`` under ``other``'s Hugging Face names when it is GGUF and ``other`` is not, else ``None``.

    Names are paired through gguf-py's ``TensorNameMap`` for the file's ``general.architecture``;
    q/k rows of llama-family files are put back in Hugging Face order. GGUF tensors without a
    counterpart keep their names (and show as only in one side).
    """
    meta = ckpt.metadata
    arch_name = meta.get(PREFIX + "general.architecture")
    if ckpt.format_name != "gguf" or not arch_name or other.format_name == "gguf":
        return None
    if set(ckpt.names()) & set(other.names()):
        return None  # already named alike
    gguf = gguf_module(f"pairing the GGUF tensor names of {ckpt.path} with {other.path}")
    arch = _arch(gguf, arch_name)
    if arch is None:
        return None
    n_blocks = _int(meta, f"{arch_name}.block_count") or _count_blocks(ckpt.names())
    tmap = gguf.get_tensor_name_map(arch, n_blocks)
    have = set(ckpt.names())
    names: dict[str, str] = {}
    kinds: dict[str, Any] = {}
    for name in [*other.names(), *other.aliases]:
        found = tmap.get_type_and_name(name, try_suffixes=_SUFFIXES)
        if found is not None and found[1] in have and found[1] not in names.values():
            names[name] = found[1]
            kinds[name] = found[0]
    if not names:
        return None
    heads = _heads(gguf, arch_name, meta, kinds) if arch_name in PERMUTED_ARCHS else {}
    used = set(names.values())
    names.update({n: n for n in ckpt.names() if n not in used})
    view = HeadsView(ckpt, names, heads, "undo")
    _check_row_order(view, other, heads)
    return view


def _heads(gguf: Any, arch_name: str, meta: dict[str, str], kinds: dict[str, Any]) -> dict[str, int]:
    n_head = _int(meta, f"{arch_name}.attention.head_count")
    n_kv = _int(meta, f"{arch_name}.attention.head_count_kv") or n_head
    if n_head is None or n_kv is None:
        return {}
    out: dict[str, int] = {}
    for name, kind in kinds.items():
        if kind == gguf.MODEL_TENSOR.ATTN_Q and name.endswith(".weight"):
            out[name] = n_head
        elif kind == gguf.MODEL_TENSOR.ATTN_K and name.endswith(".weight"):
            out[name] = n_kv
    return out


def _check_row_order(view: HeadsView, other: Checkpoint, heads: dict[str, int]) -> None:
    """Keep the stored row order when the first permuted tensor matches the other side better so.

    Not every llama-architecture GGUF was permuted (llama.cpp's converter for Mistral's own format
    is not); one tensor settles which order the file has, and the view says which it chose.
    """
    import numpy as np

    name = next(iter(heads), None)
    if name is None or name not in other:
        return
    if other.info(name).shape != view.info(name).shape:
        return
    try:
        ref = np.asarray(other.read_tensor(name), np.float32)
        stored = np.asarray(view.base.read_tensor(view._source[name]), np.float32)
        put_back = unpermute(stored, heads[name])
    except (ValueError, CorruptCheckpointError):
        return
    if np.linalg.norm(stored - ref) < np.linalg.norm(put_back - ref):
        view._heads.clear()
        view.notes.append("q/k rows compared in the stored order: it matches the other side better than llama.cpp's")
    else:
        view.notes.append("q/k rows put back from llama.cpp's rotary order into Hugging Face's")


def _count_blocks(names: Sequence[str]) -> int:
    blocks = {int(n.split(".")[1]) for n in names if n.startswith("blk.") and n.split(".")[1].isdigit()}
    return max(blocks) + 1 if blocks else 0


def hf_to_gguf(ckpt: Checkpoint, config: Path | None = None) -> Checkpoint:
    """``ckpt`` (Hugging Face names) renamed and q/k-permuted as llama.cpp's converter does, with GGUF metadata.

    ``config`` is the model's ``config.json`` (default: beside the checkpoint); it names the
    architecture (``model_type``) and the head counts the permutation needs.
    """
    where = config or (Path(ckpt.path).parent / "config.json" if ckpt.path else None)
    if where is None or not where.is_file():
        raise UsageError(
            "--layout gguf needs the model's config.json (its model_type and head counts) beside the checkpoint"
        )
    try:
        cfg = json.loads(where.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{where}: cannot read the model config ({err})") from None
    model_type = str(cfg.get("model_type", ""))
    arch_name = _HF_MODEL_TYPES.get(model_type, model_type)
    gguf = gguf_module("--layout gguf")
    arch = _arch(gguf, arch_name)
    if arch is None:
        raise UsageError(f"{where}: model_type {model_type!r} is not an architecture gguf-py knows")
    n_blocks = int(cfg.get("num_hidden_layers") or _count_hf_blocks(ckpt.names()))
    n_head = cfg.get("num_attention_heads")
    n_kv = cfg.get("num_key_value_heads") or n_head
    tmap = gguf.get_tensor_name_map(arch, n_blocks)
    names: dict[str, str] = {}
    heads: dict[str, int] = {}
    unmapped = []
    for name in ckpt.names():
        found = tmap.get_type_and_name(name, try_suffixes=_SUFFIXES)
        if found is None:
            unmapped.append(name)
            continue
        kind, new = found
        names[new] = name
        if arch_name in PERMUTED_ARCHS and name.endswith(".weight") and n_head:
            if kind == gguf.MODEL_TENSOR.ATTN_Q:
                heads[new] = int(n_head)
            elif kind == gguf.MODEL_TENSOR.ATTN_K:
                heads[new] = int(n_kv)
    if unmapped:
        shown = ", ".join(repr(n) for n in unmapped[:3])
        raise UsageError(
            f"{len(unmapped)} tensor(s) have no GGUF name for architecture {arch_name!r} ({shown}); "
            "leave them out with --exclude"
        )
    meta = {k: v for k, v in ckpt.metadata.items() if not k.startswith(PREFIX)}
    view = HeadsView(ckpt, names, heads, "apply", meta)
    view.gguf_fields = [Field("general.architecture", STRING, arch_name),
                        Field(f"{arch_name}.block_count", UINT32, n_blocks)]  # fmt: skip
    if n_head:
        view.gguf_fields += [Field(f"{arch_name}.attention.head_count", UINT32, int(n_head)),
                             Field(f"{arch_name}.attention.head_count_kv", UINT32, int(n_kv))]  # fmt: skip
    for new, n in heads.items():
        rows = view.info(new).shape[0] if view.info(new).shape else 0
        if rows % (2 * n):
            raise UsageError(f"tensor {names[new]!r} has {rows} rows, not whole rotary pairs of {n} heads")
    return view


def _count_hf_blocks(names: Sequence[str]) -> int:
    blocks: set[int] = set()
    for name in names:
        parts = name.split(".")
        blocks.update(int(b) for a, b in itertools.pairwise(parts) if a == "layers" and b.isdigit())
    return max(blocks) + 1 if blocks else 0
