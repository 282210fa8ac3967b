"""Writing safetensors tensor by tensor, in the layout the safetensors library produces.

Tensors are ordered by dtype alignment, then name, and the header is padded with spaces to 8
bytes, so the output is byte-identical to the library's; the library's own serializer needs every
tensor's bytes in memory at once, this writer streams them.

One exception: where large tensors lie as-is in a source file at offsets that a longer header
would match modulo the page size (a TensorFlow checkpoint ckptkit wrote, which keeps its source's
page offsets), the header is padded with more spaces, which the format allows, so those tensors
copy in the kernel page-aligned: on ext4 that took a quarter to a third less CPU than an
unaligned copy (bench/tf_bench.py).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from ckptkit.core.errors import UnsupportedError
from ckptkit.core.format import WriteContext
from ckptkit.core.metadata import ALIASES_KEY, checkpoint_metadata
from ckptkit.core.model import Checkpoint, TensorInfo
from ckptkit.core.names import utf8_text
from ckptkit.formats.safetensors.header import METADATA_KEY
from ckptkit.io.streaming import TensorCopier

# The library orders tensors by this dtype rank, largest first (its Dtype enum order).
_DTYPE_RANK = [
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
    "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64",
]  # fmt: skip


def build_header(infos: Sequence[TensorInfo], metadata: Mapping[str, str]) -> tuple[bytes, list[TensorInfo]]:
    """The padded header bytes and the tensors in the order their data must follow."""
    for ti in infos:
        if ti.dtype.safetensors is None:
            cast = "--dtype complex64" if ti.dtype.kind == "c" else "--dtype (float16, bfloat16, float32)"
            raise UnsupportedError(
                f"tensor {ti.name!r} is {ti.dtype.name}, which safetensors cannot hold; convert with {cast} to "
                f"cast such tensors, leave it out with --exclude '{ti.name}', or choose another format"
            )
    ordered = sorted(infos, key=lambda t: (-_DTYPE_RANK.index(t.dtype.safetensors or ""), t.name))
    header: dict[str, Any] = {}
    if metadata:
        header[METADATA_KEY] = dict(metadata)
    offset = 0
    for ti in ordered:
        header[ti.name] = {
            "dtype": ti.dtype.safetensors,
            "shape": list(ti.shape),
            "data_offsets": [offset, offset + ti.nbytes],
        }
        offset += ti.nbytes
    for name in header:
        utf8_text(name, "safetensors")
    for key, value in metadata.items():
        utf8_text(f"{key}={value}", "safetensors", "metadata entry")
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, ordered


_PAGE = 4096
_ALIGN_FROM = 64 * 1024  # smaller tensors cost little however they are copied


def page_padding(ckpt: Checkpoint, ordered: Sequence[TensorInfo], data_start: int) -> int:
    """Extra header bytes (a multiple of 8, under a page) that put the most bytes of large tensors
    stored as-is at their source's offset modulo the page; 0 when none does better than none."""
    votes: dict[int, int] = {}
    offset = data_start
    for ti in ordered:
        if ti.nbytes >= _ALIGN_FROM:
            extent = ckpt.raw_extent(ti.name)
            if extent is not None:
                pad = (extent.offset - offset) % _PAGE
                if pad % 8 == 0:
                    votes[pad] = votes.get(pad, 0) + ti.nbytes
        offset += ti.nbytes
    best = max(votes, key=lambda pad: (votes[pad], -pad), default=0)
    return best if votes.get(best, 0) > votes.get(0, 0) else 0


def write_safetensors(ckpt: Checkpoint, ctx: WriteContext) -> None:
    """Write ``ckpt`` as one safetensors file, copying each tensor's bytes as they lie where possible."""
    header, ordered = build_header(ckpt.tensor_infos(), checkpoint_metadata(ckpt))
    pad = page_padding(ckpt, ordered, len(header))
    if pad:
        header = struct.pack("<Q", len(header) - 8 + pad) + header[8:] + b" " * pad
    if ckpt.aliases:
        ctx.notes.append(f"{len(ckpt.aliases)} tied tensor(s) stored once, alias map kept in metadata {ALIASES_KEY}")
    with open(ctx.output.temp_for(), "wb") as out, TensorCopier() as copier:
        out.write(header)
        for ti in ordered:
            copier.copy(ckpt, ti.name, out, progress=ctx.progress)
