"""Writing an HDF5 file tensor by tensor, at close to the speed of ``cp``.

h5py first lays the file out: groups, attributes, small datasets with their data, and large
datasets as contiguous space reserved at creation (never filled). After h5py has closed the file,
each large tensor's bytes are copied into its reserved space through
:class:`~ckptkit.io.streaming.TensorCopier`, so no tensor is held in memory twice.

The copy runs in the kernel (``copy_file_range``, as ``cp`` does) only when a tensor's offset in
the output agrees with its offset in the source modulo the page size. So the large datasets are
reserved one after another in the order their bytes lie in the source, all metadata kept in one
block ahead of them, and where a dataset would land out of step a small padding dataset (under
``/.ckptkit_padding``, which Keras and ckptkit ignore) is reserved first to shift it into step.

A tied name (an alias) whose tensor has a dataset of its own in the file becomes an HDF5 hard link
to that dataset: stored once, readable under both paths, and read back as an alias.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptkit.core.dtypes import DType
from ckptkit.core.errors import UnsupportedError
from ckptkit.core.model import Checkpoint, ProgressFn, TensorInfo
from ckptkit.core.names import utf8_text
from ckptkit.formats.keras.hdf5 import DTYPE_ATTR, h5py_module
from ckptkit.io.streaming import TensorCopier

if TYPE_CHECKING:
    import numpy as np

SMALL_BYTES = 1 << 20  # datasets below this are written by h5py directly
PAGE = 4096
PADDING_GROUP = "/.ckptkit_padding"
# HDF5 puts raw data under 2 KiB into shared blocks; padding is always bigger, so it lies where asked.
_MIN_PAD = PAGE
# HDF5 keeps attributes in the object header, which holds at most 64 KiB; Keras splits longer
# lists of names into numbered attributes (name0, name1, ...) and so does ckptkit.
ATTRIBUTE_LIMIT = 64512


@dataclass
class DatasetSpec:
    path: str  # where in the file, e.g. "/model_weights/dense/dense/kernel"
    tensor: str  # the checkpoint tensor that fills it


@dataclass
class FileSpec:
    """An HDF5 file to write: attributes per group (``"/"`` is the root), then datasets."""

    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasets: list[DatasetSpec] = field(default_factory=list)

    def group(self, path: str) -> dict[str, Any]:
        return self.groups.setdefault("/" + path.strip("/"), {})


def names_attribute(names: list[str]) -> list[tuple[str, Any]]:
    """A list of names as Keras stores it: one byte-string array, split when it is too long."""
    import numpy as np

    if not names:
        return [("", np.zeros(0))]
    encoded = [utf8_text(n, "Keras HDF5") for n in names]
    data = np.array(encoded)
    chunks = [data]
    while any(c.nbytes > ATTRIBUTE_LIMIT for c in chunks):
        chunks = np.array_split(data, len(chunks) + 1)
    if len(chunks) == 1:
        return [("", encoded)]  # as Keras assigns it; h5py picks the type
    return [(str(i), c) for i, c in enumerate(chunks)]


def set_names(attrs: dict[str, Any], name: str, names: list[str]) -> None:
    for suffix, value in names_attribute(names):
        attrs[name + suffix] = value


def storage_dtype(dtype: DType) -> tuple[np.dtype, str | None]:
    """The numpy type h5py stores, and the name to record when HDF5 has no such type natively."""
    import numpy as np

    if dtype.numpy.type.__module__ == "numpy":
        return dtype.numpy, None
    # bfloat16 and float8 (ml_dtypes): opaque elements of the same width plus a dtype attribute.
    return np.dtype(f"V{dtype.itemsize}"), dtype.name


def write_hdf5(spec: FileSpec, ckpt: Checkpoint, target: Path, progress: ProgressFn | None = None) -> None:
    """Write ``spec`` to ``target``, the datasets' data taken from ``ckpt``."""
    import numpy as np

    h5py = h5py_module()
    _check_paths(spec)
    stored = {d.tensor: d.path for d in spec.datasets if d.tensor not in ckpt.aliases}
    links = [d for d in spec.datasets if ckpt.aliases.get(d.tensor) in stored]
    data = [d for d in spec.datasets if d not in links]
    large = [d for d in data if _info(ckpt, d.tensor).nbytes >= SMALL_BYTES]
    small = [d for d in data if _info(ckpt, d.tensor).nbytes < SMALL_BYTES]
    extents = {d.tensor: ckpt.raw_extent(ckpt.aliases.get(d.tensor, d.tensor)) for d in large}
    large.sort(key=lambda d: (0, str(e.path), e.offset) if (e := extents[d.tensor]) else (1, "", 0))
    # One metadata block big enough for every object header, so raw data follows raw data.
    meta_block = max(1 << 16, 4096 * (len(spec.datasets) + len(spec.groups) + 2)) if large else 2048
    deferred: list[tuple[str, int, int]] = []
    with h5py.File(target, "w", meta_block_size=meta_block) as f:
        for path, attrs in spec.groups.items():
            group = f if path == "/" else f.require_group(path)
            for key, value in attrs.items():
                group.attrs[key] = value
        for ds_spec in small:
            ti = _info(ckpt, ds_spec.tensor)
            np_dtype, marked = storage_dtype(ti.dtype)
            array = np.asarray(ckpt.read_tensor(ckpt.aliases.get(ds_spec.tensor, ds_spec.tensor)), order="C")
            ds = f.create_dataset(ds_spec.path, data=array.view(np_dtype) if marked else array)
            if marked:
                ds.attrs[DTYPE_ATTR] = marked
            if progress:
                progress(ti.nbytes)
        placer = _Placer(f)
        for ds_spec in large:
            ti = _info(ckpt, ds_spec.tensor)
            extent = extents[ds_spec.tensor]
            if extent is not None:
                placer.pad_to(extent.offset % PAGE)
            ds = placer.reserve(ds_spec.path, ti.shape, ti)
            deferred.append((ckpt.aliases.get(ds_spec.tensor, ds_spec.tensor), ds.id.get_offset(), ti.nbytes))
        for link in links:
            parent, _, _ = link.path.rpartition("/")
            if parent:
                f.require_group(parent)
            f[link.path] = f[stored[ckpt.aliases[link.tensor]]]
    with open(target, "r+b") as out, TensorCopier() as copier:
        for tensor, offset, nbytes in deferred:
            out.seek(offset)
            written, _ = copier.copy(ckpt, tensor, out, progress=progress)
            if written != nbytes:
                raise UnsupportedError(f"tensor {tensor!r} gave {written} bytes, its dataset holds {nbytes}")


def _info(ckpt: Checkpoint, tensor: str) -> TensorInfo:
    """A tensor's info; a tied name stored as data of its own takes its tensor's."""
    target = ckpt.aliases.get(tensor, tensor)
    return ckpt.info(target) if target == tensor else replace(ckpt.info(target), name=tensor)


class _Placer:
    """Reserves contiguous, never-filled datasets one after another, padding them into step."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.next: int | None = None  # where the next reservation should land
        self.pads = 0

    def _dcpl(self) -> Any:
        h5py = h5py_module()
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.CONTIGUOUS)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        return dcpl

    def _pad(self, nbytes: int) -> None:
        ds = self.f.create_dataset(f"{PADDING_GROUP}/{self.pads}", shape=(nbytes,), dtype="u1", dcpl=self._dcpl())
        self.pads += 1
        self.next = ds.id.get_offset() + nbytes

    def pad_to(self, residue: int) -> None:
        if self.next is None:
            self._pad(_MIN_PAD)  # learn where raw data goes next
        assert self.next is not None
        gap = (residue - self.next) % PAGE
        if gap:
            self._pad(gap + _MIN_PAD)

    def reserve(self, path: str, shape: tuple[int, ...], ti: Any) -> Any:
        np_dtype, marked = storage_dtype(ti.dtype)
        ds = self.f.create_dataset(path, shape=shape, dtype=np_dtype, dcpl=self._dcpl())
        offset = ds.id.get_offset()
        if offset is None or ds.id.get_storage_size() != ti.nbytes:
            raise UnsupportedError(f"HDF5 did not reserve contiguous space for tensor {ti.name!r}")
        if marked:
            ds.attrs[DTYPE_ATTR] = marked
        self.next = offset + ti.nbytes
        return ds


def _check_paths(spec: FileSpec) -> None:
    """Refuse a tensor whose dataset would sit where another tensor's path needs a group."""
    by_path = {d.path: d.tensor for d in spec.datasets}
    if len(by_path) != len(spec.datasets):
        raise UnsupportedError("two tensors would be stored at the same HDF5 path")
    for path, tensor in by_path.items():
        parts = path.split("/")
        for i in range(2, len(parts)):
            other = by_path.get("/".join(parts[:i]))
            if other is not None:
                raise UnsupportedError(
                    f"tensors {other!r} and {tensor!r} cannot both be stored: HDF5 needs {other!r}'s path as a group"
                )
