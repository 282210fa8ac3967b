"""numpy's ``.npy`` and ``.npz`` files read as checkpoints, and written (``np.savez`` layout, stored).

Reading: :mod:`.npy` (numeric arrays in place; arrays of Python objects are pickles, listed as
unsupported and refused when they call anything). Bare pickles and joblib files are the
``pickle`` format of :mod:`.pickled`. Writing stores each tensor as an uncompressed ``.npy``
member of an ``.npz`` archive (or a lone ``.npy`` file for one tensor), as ``np.savez`` does;
dtypes numpy's file format cannot name (bfloat16, float8) are refused.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, cast

from ckptkit.core.errors import UnsupportedError, UsageError
from ckptkit.core.format import Format, WriteContext
from ckptkit.core.model import Checkpoint
from ckptkit.formats.numpy.npy import (
    MAGIC,
    NPY_SUFFIX,
    NUMPY_DTYPES,
    NumpyCheckpoint,
    RemoteNumpyCheckpoint,
    is_npz,
    npy_header_bytes,
)
from ckptkit.io.source import Source

_CHUNK = 16 * 1024 * 1024


def sniff(head: bytes, path: Path) -> bool:
    """An ``.npy`` magic string, or a zip whose members are all ``.npy`` files."""
    if head.startswith(MAGIC):
        return True
    if head.startswith(b"PK\x03\x04"):
        with open(path, "rb") as f:
            return is_npz(f, os.fstat(f.fileno()).st_size)
    return False


def open_numpy(path: Path, options: Mapping[str, Any]) -> Checkpoint:
    return NumpyCheckpoint(path)


def sniff_remote(head: bytes, source: Source) -> bool:
    """:func:`sniff` for a file at a URL: an archive's directory by range reads."""
    if head.startswith(MAGIC):
        return True
    if head.startswith(b"PK\x03\x04"):
        with source.ranges() as f:
            return is_npz(cast(BinaryIO, f), source.size)
    return False


def open_remote_numpy(source: Source, options: Mapping[str, Any]) -> Checkpoint:
    """Open a ``.npy`` or ``.npz`` file at a URL for lazy reading by range requests."""
    return RemoteNumpyCheckpoint(source)


def write_numpy(ckpt: Checkpoint, ctx: WriteContext) -> None:
    infos = list(ckpt.tensor_infos())
    for ti in infos:
        if ti.dtype.name not in NUMPY_DTYPES:
            raise UnsupportedError(
                f"tensor {ti.name!r} is {ti.dtype.name}, which numpy's file format cannot name; convert with "
                "--dtype float32 or write safetensors"
            )
    # numpy files keep no alias map: a tied name is stored as its own copy of the data.
    copies = [(alias, target) for alias, target in ckpt.aliases.items() if target in ckpt]
    if copies:
        ctx.notes.append(f"{len(copies)} tied tensor(s) stored as copies: numpy files keep no alias map")
    target = ctx.output.temp_for()
    if ctx.output.path.name.lower().endswith(NPY_SUFFIX):
        if len(infos) != 1 or copies:
            raise UsageError(f"a .npy file holds one array; this checkpoint has {len(infos)}: write .npz instead")
        with open(target, "wb") as out:
            _write_array(ckpt, infos[0].name, out, ctx)
        return
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, source in [(ti.name, ti.name) for ti in infos] + copies:
            size = ckpt.info(source).nbytes
            with zf.open(name + NPY_SUFFIX, "w", force_zip64=size >= 2**31) as member:
                _write_array(ckpt, source, member, ctx)


def _write_array(ckpt: Checkpoint, name: str, out: Any, ctx: WriteContext) -> None:
    import numpy as np

    arr = np.asarray(ckpt.read_tensor(name), order="C")  # ascontiguousarray would make a 0-d array 1-d
    out.write(npy_header_bytes(arr))
    view = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")  # type: ignore[arg-type]
    for start in range(0, len(view), _CHUNK):
        piece = view[start : start + _CHUNK]
        out.write(piece)
        if ctx.progress:
            ctx.progress(len(piece))


FORMAT = Format(
    name="numpy",
    description="numpy .npy and .npz arrays (np.save, np.savez); object arrays checked, never unpickled",
    extensions=(".npz", NPY_SUFFIX),
    sniff=sniff,
    open=open_numpy,
    open_remote=open_remote_numpy,
    sniff_remote=sniff_remote,
    write=write_numpy,
    default_extension=".npz",
    verify="ckptkit.formats.numpy.verify:check_numpy",
    dtypes=NUMPY_DTYPES,
)
