"""Format-independent content hashes of tensors, and the root hash over a checkpoint's tensors.

A tensor's hash is the SHA-256 of its canonical encoding::

    b"ckptkit-tensor-v1\\n" + dtype name + b"\\n" + shape as "[d0,d1,...]" + b"\\n" + data

where the dtype name is ckptkit's (``float16``, ``bfloat16``, ``int64``, ...), a scalar's shape is
``[]``, and the data is the elements in C order, little-endian. Nothing of the file format enters
it, so a tensor read from PyTorch, safetensors, Keras or ONNX hashes the same. The root hash is
the SHA-256 of ``b"ckptkit-root-v1\\n"`` followed by every tensor hash in lowercase hex, sorted,
each ending in ``\\n``: it identifies the multiset of tensors, whatever their names or order.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterable
from pathlib import Path

from ckptkit.core.dtypes import DType
from ckptkit.core.model import ProgressFn

TENSOR_ENCODING = "ckptkit-tensor-v1"
ROOT_ENCODING = "ckptkit-root-v1"
CHUNK_BYTES = 4 * 1024 * 1024  # a few MB per update keeps both cores busy and stays in cache


def tensor_header(dtype: DType, shape: Iterable[int]) -> bytes:
    """The bytes hashed before a tensor's data."""
    dims = ",".join(str(int(d)) for d in shape)
    return f"{TENSOR_ENCODING}\n{dtype.name}\n[{dims}]\n".encode()


def tensor_hasher(dtype: DType, shape: Iterable[int]) -> hashlib._Hash:
    """A SHA-256 object primed with the canonical header; feed it the little-endian C-order bytes."""
    return hashlib.sha256(tensor_header(dtype, shape))


def root_hash(tensor_hashes: Iterable[str]) -> str:
    """The root over tensor hashes (hex strings), independent of their order."""
    h = hashlib.sha256(f"{ROOT_ENCODING}\n".encode())
    for digest in sorted(tensor_hashes):
        h.update(f"{digest}\n".encode())
    return h.hexdigest()


def update_from(h: hashlib._Hash, data: memoryview, progress: ProgressFn | None = None) -> None:
    """Feed ``data`` in chunks; hashlib releases the GIL on each, so other threads run meanwhile."""
    for start in range(0, len(data), CHUNK_BYTES):
        chunk = data[start : start + CHUNK_BYTES]
        h.update(chunk)
        if progress:
            progress(len(chunk))


def file_sha256(path: Path) -> str:
    """The plain SHA-256 of a file's bytes, as ``sha256sum`` prints it, read through a memory map."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                try:
                    update_from(h, view)
                finally:
                    view.release()
    return h.hexdigest()
