"""Writing ``torch.save``-compatible zip files without torch.

The pickle is assembled opcode by opcode (the ``pickle`` module would import torch to check the
globals it names) as ``torch.save`` writes it for a state dict: a ``collections.OrderedDict`` of
name -> ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``,
with a legacy typed storage class (``torch.HalfStorage``) for dtypes that have one, and
``_rebuild_tensor_v3`` with ``torch.storage.UntypedStorage`` plus a dtype global for the others
(float8, uint16/32/64), exactly as torch 2.x does. Tied tensors reuse one pickled tensor, so
``torch.load`` gives them one storage.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ckptkit.core.dtypes import DType
from ckptkit.core.errors import CorruptCheckpointError, UnsupportedError
from ckptkit.core.format import WriteContext
from ckptkit.core.model import Checkpoint, TensorInfo
from ckptkit.formats.torch.reader import ROOT_KEY
from ckptkit.formats.torch.structure import BARE_TENSOR_NAME
from ckptkit.formats.torch.zipwriter import ALIGNMENT, ZipWriter
from ckptkit.io.streaming import TensorCopier

FILE_FORMAT_VERSION = b"3\n"  # caffe2::serialize::kProducedFileFormatVersion for plain torch.save files
_SETITEMS_BATCH = 1000  # as the pickle module batches


class PickleBuilder:
    """Protocol-2 pickle opcodes for the few kinds of object a state dict needs."""

    def __init__(self) -> None:
        self.data = bytearray(pickle.PROTO + b"\x02")
        self._memo: dict[object, int] = {}

    def _memoize(self, key: object) -> None:
        index = self._memo[key] = len(self._memo)
        self.data += pickle.BINPUT + bytes([index]) if index < 256 else pickle.LONG_BINPUT + struct.pack("<I", index)

    def _recall(self, key: object) -> bool:
        index = self._memo.get(key)
        if index is None:
            return False
        self.data += pickle.BINGET + bytes([index]) if index < 256 else pickle.LONG_BINGET + struct.pack("<I", index)
        return True

    def global_(self, module: str, name: str) -> None:
        if not self._recall(("global", module, name)):
            self.data += pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii")
            self._memoize(("global", module, name))

    def str_(self, text: str, memo: bool = False) -> None:
        if memo and self._recall(("str", text)):
            return
        raw = text.encode("utf-8", "surrogatepass")
        self.data += pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw
        if memo:
            self._memoize(("str", text))

    def int_(self, value: int) -> None:
        if 0 <= value < 256:
            self.data += pickle.BININT1 + bytes([value])
        elif 0 <= value < 65536:
            self.data += pickle.BININT2 + struct.pack("<H", value)
        elif -(2**31) <= value < 2**31:
            self.data += pickle.BININT + struct.pack("<i", value)
        else:
            encoded = pickle.encode_long(value)
            self.data += pickle.LONG1 + bytes([len(encoded)]) + encoded

    def int_tuple(self, values: Sequence[int]) -> None:
        if not values:
            self.data += pickle.EMPTY_TUPLE
            return
        short = len(values) <= 3
        if not short:
            self.data += pickle.MARK
        for v in values:
            self.int_(v)
        self.data += (pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3)[len(values) - 1] if short else pickle.TUPLE

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.data += pickle.EMPTY_TUPLE + pickle.REDUCE

    def tensor(self, key: str, dtype: DType, shape: tuple[int, ...]) -> None:
        """A tensor filling storage ``key`` (C-contiguous, offset 0); memoized under ``key``."""
        v2 = dtype.torch_storage is not None
        self.global_("torch._utils", "_rebuild_tensor_v2" if v2 else "_rebuild_tensor_v3")
        self.data += pickle.MARK
        # Persistent id: ('storage', storage class, key, location, size); the size counts elements
        # of a typed storage but bytes of an UntypedStorage.
        numel = math.prod(shape)
        self.data += pickle.MARK
        self.str_("storage", memo=True)
        if v2:
            self.global_("torch", dtype.torch_storage or "")
        else:
            self.global_("torch.storage", "UntypedStorage")
        self.str_(key)
        self.str_("cpu", memo=True)
        self.int_(numel if v2 else numel * dtype.itemsize)
        self.data += pickle.TUPLE + pickle.BINPERSID
        self.int_(0)
        self.int_tuple(shape)
        self.int_tuple(contiguous_strides(shape))
        self.data += pickle.NEWFALSE
        self.empty_ordered_dict()
        if not v2:
            self.global_("torch", dtype.name)
        self.data += pickle.TUPLE + pickle.REDUCE
        self._memoize(("tensor", key))

    def tensor_again(self, key: str) -> None:
        """The tensor pickled earlier for storage ``key`` (a tied weight)."""
        if not self._recall(("tensor", key)):
            raise KeyError(key)

    def finish(self) -> bytes:
        self.data += pickle.STOP
        return bytes(self.data)


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Strides of a C-contiguous tensor as torch computes them (a size-0 dim counts as 1)."""
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def build_pickle(ckpt: Checkpoint) -> tuple[bytes, list[TensorInfo]]:
    """The ``data.pkl`` bytes for ``ckpt``, and its tensors in storage-key order (key = index)."""
    infos = list(ckpt.tensor_infos())
    keys = {ti.name: str(i) for i, ti in enumerate(infos)}
    for alias, target in ckpt.aliases.items():
        if target not in keys:
            raise CorruptCheckpointError(
                f"alias {alias!r} points at {target!r}, which is not a tensor of the checkpoint"
            )
    p = PickleBuilder()
    if ckpt.metadata.get(ROOT_KEY) == BARE_TENSOR_NAME and len(infos) == 1 and not ckpt.aliases:
        p.tensor("0", infos[0].dtype, infos[0].shape)
        return p.finish(), infos
    p.empty_ordered_dict()
    entries: list[tuple[str, str, TensorInfo | None]] = [(ti.name, keys[ti.name], ti) for ti in infos]
    entries += [(alias, keys[target], None) for alias, target in ckpt.aliases.items()]
    for start in range(0, len(entries), _SETITEMS_BATCH):
        p.data += pickle.MARK
        for name, key, ti in entries[start : start + _SETITEMS_BATCH]:
            p.str_(name)
            if ti is None:
                p.tensor_again(key)
            else:
                p.tensor(key, ti.dtype, ti.shape)
        p.data += pickle.SETITEMS
    return p.finish(), infos


def archive_name(path: Path) -> str:
    """The zip's root folder: the file name without its extension, as torch's writer names it."""
    stem = re.sub(r"[^\x20-\x7e]|[/\\]", "_", path.stem)[:200]
    return stem or "archive"


def _dropped_note(ckpt: Checkpoint) -> str | None:
    meta = [k for k in ckpt.metadata if not k.startswith("torch:")]
    parts = []
    if meta:
        parts.append(f"metadata ({len(meta)} key{'s' if len(meta) != 1 else ''})")
    if ckpt.extras:
        parts.append(f"extras ({len(ckpt.extras)} value{'s' if len(ckpt.extras) != 1 else ''})")
    if not parts:
        return None
    return f"{' and '.join(parts)} are not stored in PyTorch files"


# Sub-byte types ckptkit holds one element per byte: torch's int4/uint4/int2/uint2 are placeholders
# no tensor can be made of, and torch has no float4_e2m1fn or float6 type of that layout.
NOT_IN_TORCH = frozenset({"int4", "uint4", "int2", "uint2", "float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn"})


def write_torch(ckpt: Checkpoint, ctx: WriteContext) -> None:
    """Write ``ckpt`` as a zip-format ``torch.save`` file that ``torch.load(weights_only=True)`` reads."""
    for ti in ckpt.tensor_infos():
        if ti.dtype.name in NOT_IN_TORCH:
            hint = "cast it with --dtype" if ti.dtype.is_floating else "choose another format (ONNX holds it)"
            raise UnsupportedError(f"tensor {ti.name!r} is {ti.dtype.name}, which PyTorch cannot load; {hint}")
    data_pkl, ordered = build_pickle(ckpt)
    root = archive_name(Path(ctx.output.path))
    note = _dropped_note(ckpt)
    if note:
        ctx.notes.append(note)
    if ckpt.aliases:
        ctx.notes.append(f"{len(ckpt.aliases)} tied tensor(s) share one storage with their target")
    with open(ctx.output.temp_for(), "wb") as out, TensorCopier() as copier:
        zw = ZipWriter(out)
        zw.write_record(f"{root}/data.pkl", data_pkl)
        zw.write_record(f"{root}/.format_version", b"1")
        zw.write_record(f"{root}/.storage_alignment", str(ALIGNMENT).encode())
        zw.write_record(f"{root}/byteorder", b"little")
        digest = hashlib.sha256(data_pkl)
        for key, ti in enumerate(ordered):
            zw.begin(f"{root}/data/{key}", ti.nbytes)
            written, crc = copier.copy(ckpt, ti.name, out, want_crc=True, progress=ctx.progress)
            digest.update(crc.to_bytes(4, "little"))
            if written != ti.nbytes:
                raise CorruptCheckpointError(
                    f"tensor {ti.name!r} gave {written} bytes of data, but {ti.dtype.name} {list(ti.shape)} "
                    f"needs {ti.nbytes}"
                )
            zw.end(crc)
        zw.write_record(f"{root}/version", FILE_FORMAT_VERSION)
        zw.write_record(f"{root}/.data/serialization_id", _serialization_id(digest))
        zw.finish()


def _serialization_id(digest: Any) -> bytes:
    # torch writes 40 decimal digits that differ for every file it saves. Taking them from the
    # content (the pickle and every record's CRC) keeps distinct files apart and makes a write
    # reproducible: the same checkpoint gives the same bytes, whichever process or machine wrote it.
    return f"{int.from_bytes(digest.digest()[:16], 'big'):040d}".encode()
