"""Reading an ONNX model's tensors lazily: the graph is walked, payloads stay in their files.

The model file is memory-mapped and walked with :mod:`ckptkit.io.protowire`, so inline ``raw_data`` is never
copied while listing tensors and each tensor is a view of the map when read. External data files
are checked (inside the model's folder, present, long enough) when the model is opened, and
mapped only when one of their tensors is read.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ckptkit.core import limits
from ckptkit.core.dtypes import DType, by_name, by_onnx
from ckptkit.core.errors import CorruptCheckpointError, NoSuchFileError, UnsafeCheckpointError
from ckptkit.core.metadata import ALIASES_KEY, EXTRAS_KEY
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.io.paths import is_inside_url_name, resolve_inside
from ckptkit.io.protowire import Buffer, repeated
from ckptkit.io.source import RemoteBuffer, Source, open_source

from .elements import TYPED_FIELD_NAMES, decode_typed, element_name, is_packed, stored_nbytes, unpack
from .graph import ModelInfo, Slot, TensorRecord, scan_model

if TYPE_CHECKING:
    import numpy as np

_SCALAR_ATTRS = {
    "value_float": ("float32", "<f4", True),
    "value_floats": ("float32", "<f4", False),
    "value_int": ("int64", "varint", True),
    "value_ints": ("int64", "varint", False),
}


@dataclass(frozen=True)
class ExternalRef:
    """Where a tensor's bytes lie in an external data file."""

    path: Path
    location: str
    offset: int
    nbytes: int


class OnnxCheckpoint(Checkpoint):
    """An ONNX model's initializers and Constant-node values, read one at a time."""

    format_name = "onnx"

    def __init__(self, path: Path, include_constants: bool = True) -> None:
        super().__init__(path)
        self.folder = path.parent
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._map: Buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._list(include_constants)

    def _list(self, include_constants: bool) -> None:
        """Walk the model and list its tensors (one code path for local and remote files)."""
        self.model: ModelInfo = scan_model(self._map)
        limits.check("the tensor count", len(self.model.slots), "tensors", "tensors")
        self._external_maps: dict[Path, Buffer] = {}
        self._external_sizes: dict[Path, int] = {}
        self.slots: dict[str, Slot] = {}
        self._refs: dict[str, ExternalRef] = {}
        self._infos: list[TensorInfo] = []
        self.skipped = list(self.model.skipped)
        self.unread_external: list[str] = []  # tensors ckptkit cannot read that lie in external data
        for slot in self.model.slots:
            if include_constants or slot.kind == "initializer":
                self._add(slot)
        self._fill_metadata()

    # Listing.

    def _add(self, slot: Slot) -> None:
        name = self._unique_name(slot)
        if slot.tensor is None:
            dtype_name, element, scalar = _SCALAR_ATTRS[slot.attr]
            dtype = by_name(dtype_name)
            count = 1 if scalar else repeated(self._map, slot.values, element).size
            shape: tuple[int, ...] = () if scalar else (count,)
            storage = f"inline ({slot.attr})"
        else:
            t = slot.tensor
            found = by_onnx(t.data_type)
            if found is None or t.segmented:
                why = "segmented" if t.segmented else element_name(t.data_type)
                self.skipped.append(f"{name} ({why})")
                if t.is_external:
                    self.unread_external.append(name)
                return
            dtype, shape = found, t.dims
            storage = self._check_storage(name, t, dtype)
        where = "initializer" if slot.kind == "initializer" else f"Constant node {slot.node!r}"
        if slot.scope:
            where += f" in {slot.scope}"
        self.slots[name] = slot
        self._infos.append(TensorInfo(name, dtype, shape, f"{where}, {storage}"))

    def _unique_name(self, slot: Slot) -> str:
        name = slot.name
        if name in self.slots:
            name = f"{slot.scope_key or slot.kind}/{slot.name}"
        n = 2
        base = name
        while name in self.slots:
            name = f"{base}#{n}"
            n += 1
        return name

    def _check_storage(self, name: str, t: TensorRecord, dtype: DType) -> str:
        """Where the tensor's values are, after checking they can be there; for people."""
        numel = math.prod(t.dims)
        need = stored_nbytes(dtype, numel)
        if t.is_external:
            ref = self._external_ref(name, t, need)
            self._refs[name] = ref
            return f"in {ref.location} at offset {ref.offset}"
        if t.raw is not None:
            have = t.raw.end - t.raw.start
            if have != need and not (is_packed(dtype) and have > need):
                raise CorruptCheckpointError(
                    f"tensor {name!r}: raw_data holds {have} bytes, {dtype.name} {list(t.dims)} needs {need}"
                )
            return "inline"
        if t.typed:
            return "inline (" + ", ".join(TYPED_FIELD_NAMES[f] for f in sorted(t.typed)) + ")"
        if numel:
            raise CorruptCheckpointError(f"tensor {name!r} ({dtype.name} {list(t.dims)}) holds no data")
        return "inline"

    def _external_ref(self, name: str, t: TensorRecord, need: int) -> ExternalRef:
        location = t.external.get("location", "")
        path = external_file(self.folder, name, location)
        size = self._external_sizes.setdefault(path, path.stat().st_size)
        offset = external_offset(name, t, need, size)
        return ExternalRef(path, location, offset, need)

    def _fill_metadata(self) -> None:
        m = self.model
        props = dict(m.metadata_props)
        if ALIASES_KEY in props:
            aliases = _json_field(props.pop(ALIASES_KEY), ALIASES_KEY)
            self.aliases = {a: t for a, t in aliases.items() if t in self.slots and a not in self.slots}
        if EXTRAS_KEY in props:
            self.extras = _json_field(props.pop(EXTRAS_KEY), EXTRAS_KEY)
        meta = {
            "onnx:ir_version": str(m.ir_version),
            "onnx:opset": ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in m.opsets),
            "onnx:producer": f"{m.producer} {m.producer_version}".strip(),
            "onnx:graph": m.graph_name,
            "onnx:inputs": "; ".join(m.inputs),
            "onnx:outputs": "; ".join(m.outputs),
        }
        files = sorted({r.location for r in self._refs.values()})
        if files:
            meta["onnx:external_data"] = ", ".join(files)
        if self.skipped:
            meta["onnx:not_read"] = ", ".join(self.skipped)
        self.metadata = {k: v for k, v in meta.items() if v} | props

    @property
    def buffer(self) -> Buffer:
        """The model file's bytes (memory-mapped)."""
        return self._map

    def uses_external_data(self) -> bool:
        return bool(self._refs or self.unread_external)

    # Reading.

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        import numpy as np

        ti = self.info(name)
        slot = self.slots[name]
        if slot.tensor is None:
            _dtype, element, _scalar = _SCALAR_ATTRS[slot.attr]
            values = repeated(self._map, slot.values, element)
            return (values.view(np.int64) if element == "varint" else values).reshape(ti.shape)
        t = slot.tensor
        if ti.numel == 0:
            return np.zeros(ti.shape, ti.dtype.numpy)
        ref = self._refs.get(name)
        if ref is not None:
            flat = _values_at(self._external_map(ref.path), ref.offset, ti.dtype, ti.numel)
        elif t.raw is not None:
            flat = _values_at(self._map, t.raw.start, ti.dtype, ti.numel)
        else:
            try:
                flat = decode_typed(self._map, t.typed, ti.dtype, ti.numel)
            except CorruptCheckpointError as err:
                raise CorruptCheckpointError(f"tensor {name!r}: {err.message}") from None
        return flat.reshape(ti.shape)

    def _external_map(self, path: Path) -> Buffer:
        buf = self._external_maps.get(path)
        if buf is None:
            with open(path, "rb") as f:
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self._external_sizes[path] else b""
            self._external_maps[path] = buf
        return buf

    def raw_extent(self, name: str) -> RawExtent | None:
        ti = self.info(name)
        if is_packed(ti.dtype):
            return None
        ref = self._refs.get(name)
        if ref is not None:
            return RawExtent(ref.path, ref.offset, ref.nbytes)
        t = self.slots[name].tensor
        if t is not None and t.raw is not None and self.path is not None:
            return RawExtent(self.path, t.raw.start, ti.nbytes)
        return None

    def close(self) -> None:
        # Arrays handed out may still view the maps; the garbage collector unmaps them after.
        self._map = b""
        self._external_maps.clear()


class RemoteOnnxCheckpoint(OnnxCheckpoint):
    """An ONNX model at a URL: the protobuf walked over a buffer fetched in blocks as the walk reaches
    them (inline tensor payloads it skips are not fetched), each tensor read by a range request.
    External data files are the URLs beside the model, under the same rules as local ones."""

    def __init__(self, source: Source, include_constants: bool = True) -> None:
        Checkpoint.__init__(self, None)
        self.source = source
        self.url = source.name
        self.folder = Path()
        self._map = cast(Buffer, RemoteBuffer(source))
        self._external_sources: dict[str, Source] = {}
        self._list(include_constants)

    def _external_ref(self, name: str, t: TensorRecord, need: int) -> ExternalRef:
        location = t.external.get("location", "")
        url = external_url(self.source.name, name, location)
        data = self._external_sources.get(url)
        if data is None:
            data = self._external_sources[url] = open_external(url, name, location)
        offset = external_offset(name, t, need, data.size)
        return ExternalRef(Path(location), location, offset, need)

    def read_tensor(self, name: str) -> np.ndarray:
        ti = self.info(name)
        t = self.slots[name].tensor
        if t is None or ti.numel == 0:
            return super().read_tensor(name)
        nbytes = stored_nbytes(ti.dtype, ti.numel)
        ref = self._refs.get(name)
        if ref is not None:
            source = self._external_sources[external_url(self.source.name, name, ref.location)]
            data = source.read_at(ref.offset, nbytes, keep=False)
        elif t.raw is not None:
            data = self.source.read_at(t.raw.start, nbytes, keep=False)
        else:
            return super().read_tensor(name)  # typed fields: decoded from the walked buffer
        if len(data) < nbytes:
            raise CorruptCheckpointError(f"tensor {name!r}: the file ends inside its data")
        return _values_at(data, 0, ti.dtype, ti.numel).reshape(ti.shape)

    def raw_extent(self, name: str) -> RawExtent | None:
        return None

    @property
    def sources(self) -> list[Source]:
        """The model's file and its external data files: the files a manifest lists."""
        return [self.source, *self._external_sources.values()]


def external_url(model_url: str, name: str, location: str) -> str:
    """The URL of the external data ``location`` of tensor ``name``: beside the model, as locally."""
    if not location or "\0" in location:
        raise CorruptCheckpointError(f"tensor {name!r} is stored externally but names no valid location")
    if not is_inside_url_name(location):
        raise UnsafeCheckpointError(
            f"tensor {name!r}: external data location {location!r} is not a file inside the model's folder"
        )
    return f"{model_url.rsplit('/', 1)[0]}/{location}"


def open_external(url: str, name: str, location: str) -> Source:
    """The external data file at ``url``, which must exist."""
    try:
        return open_source(url)
    except NoSuchFileError:
        raise CorruptCheckpointError(
            f"tensor {name!r}: external data file {location} is missing beside the model ({url}); keep it "
            "beside the model under the name the model gives"
        ) from None


def external_file(folder: Path, name: str, location: str) -> Path:
    """The file the external data ``location`` of tensor ``name`` names, in the model's ``folder``.

    Reading and ``verify`` both check a location here: a location that leaves the folder (absolute,
    ``..``, a symbolic link out) raises :class:`~ckptkit.core.errors.UnsafeCheckpointError`; an empty
    location or a missing file raises :class:`~ckptkit.core.errors.CorruptCheckpointError`.
    """
    if not location or "\0" in location:
        raise CorruptCheckpointError(f"tensor {name!r} is stored externally but names no valid location")
    path = resolve_inside(folder, location, f"tensor {name!r}: external data location", "the model's folder")
    if not path.is_file():
        raise CorruptCheckpointError(
            f"tensor {name!r}: external data file {folder / location} is missing; keep it beside the model "
            "under the name the model gives"
        )
    return path


class ExternalDataTruncated(CorruptCheckpointError):
    """A tensor's external data runs past the end of its file."""


def external_offset(name: str, t: TensorRecord, need: int, size: int) -> int:
    """Where tensor ``name``'s ``need`` bytes start in its external data file of ``size`` bytes.

    Raises :class:`CorruptCheckpointError` when the offset or length fields are not numbers or
    cannot hold the tensor, and :class:`ExternalDataTruncated` when the file ends too soon.
    """
    try:
        offset = int(t.external.get("offset", "0"))
        length = int(t.external["length"]) if "length" in t.external else None
    except ValueError:
        raise CorruptCheckpointError(
            f"tensor {name!r}: external data offset/length {t.external} are not numbers"
        ) from None
    if offset < 0 or (length is not None and length < need):
        raise CorruptCheckpointError(
            f"tensor {name!r}: external data at offset {offset} holds {length} bytes, "
            f"{element_name(t.data_type)} {list(t.dims)} needs {need}"
        )
    if offset + need > size:
        raise ExternalDataTruncated(
            f"tensor {name!r}: external data file {t.external.get('location', '')} has {size} bytes, the tensor "
            f"ends at {offset + need}: truncated, or not the data file this model was saved with"
        )
    return offset


def _values_at(buf: Buffer, offset: int, dtype: DType, numel: int) -> np.ndarray:
    """``numel`` little-endian values of ``dtype`` at ``buf[offset:]``, flat, without copying if aligned."""
    import numpy as np

    if is_packed(dtype):
        return unpack(np.frombuffer(buf, np.uint8, stored_nbytes(dtype, numel), offset), dtype, numel)
    if offset % dtype.itemsize:
        raw = np.frombuffer(buf, np.uint8, numel * dtype.itemsize, offset)
        return raw.copy().view(dtype.numpy)
    return np.frombuffer(buf, dtype.numpy, numel, offset)


def _json_field(text: str, key: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise CorruptCheckpointError(f"metadata {key} is not valid JSON") from None
    if not isinstance(value, dict):
        raise CorruptCheckpointError(f"metadata {key} is not a JSON object")
    return value
