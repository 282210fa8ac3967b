"""The checkpoint both Keras readers return: named datasets of one HDF5 file, read one at a time."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptkit.core.errors import CorruptCheckpointError, UnsupportedError
from ckptkit.core.metadata import unfold_metadata
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.formats.keras.hdf5 import DataReader, attr_text, dataset_dtype, hdf5_errors
from ckptkit.formats.keras.structure import CLASSES, Structure

if TYPE_CHECKING:
    import numpy as np

# Root attribute where ckptkit keeps metadata the Keras layout has no place for (a layout record,
# metadata carried over from another format), as one JSON object of strings.
METADATA_ATTR = "ckptkit_metadata"


class KerasCheckpoint(Checkpoint):
    """Tensors of a Keras HDF5 file, each read from its dataset when asked for."""

    def __init__(
        self, reader: DataReader, h5: Any, format_name: str, names_hint: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(reader.path)
        if reader.source is not None:
            self.url = reader.source.name
        # Object names by HDF5 group path: those the file states, those it leaves out, and those
        # to use where it leaves them out. A sharded Keras save writes a layer's name only in the
        # shard where the layer starts; the other shards' names come from there.
        self.group_names: dict[str, str] = {}
        self.unnamed_groups: set[str] = set()
        self.names_hint: Mapping[str, str] = names_hint or {}
        self.format_name = format_name
        self.reader = reader
        self.h5 = h5
        self._infos: list[TensorInfo] = []
        self._datasets: dict[str, Any] = {}
        self._names_by_object: dict[Any, str] = {}  # HDF5 object -> first tensor name it was read as
        self.keras: Structure | None = None

    def add(self, name: str, ds: Any) -> None:
        """Add dataset ``ds`` as tensor ``name``; a dataset reached again by a hard link is an alias."""
        if name in self._datasets or name in self.aliases:
            raise CorruptCheckpointError(f"two datasets would both be named {name!r} ({ds.name} and another)")
        first = self._names_by_object.setdefault(ds.id, name)
        if first != name:
            self.aliases[name] = first
            return
        if ds.external or ds.is_virtual:
            # Their data lives in other files, which a weights file has no business pointing at.
            raise UnsupportedError(f"dataset {ds.name} keeps its data in other files; ckptkit refuses such datasets")
        dtype = dataset_dtype(ds)
        self._infos.append(TensorInfo(name, dtype, tuple(int(d) for d in ds.shape), ds.name))
        self._datasets[name] = ds

    def reorder(self, first: list[str]) -> None:
        """Put these tensors first, in this order (model order where the file is walked by name)."""
        rank = {name: i for i, name in enumerate(first)}
        self._infos.sort(key=lambda ti: rank.get(ti.name, len(rank)))

    def finish(self, structure: Structure) -> None:
        """Publish the structure as metadata, under whatever ckptkit stored in the file earlier."""
        self.keras = structure
        stored = attr_text(self.h5, METADATA_ATTR)
        if stored is not None:
            try:
                extra = json.loads(stored)
            except json.JSONDecodeError:
                raise CorruptCheckpointError(f"the {METADATA_ATTR} attribute is not valid JSON") from None
            if not isinstance(extra, dict):
                raise CorruptCheckpointError(f"the {METADATA_ATTR} attribute is not a JSON object")
            self.metadata.update({str(k): str(v) for k, v in extra.items()})
            recorded_aliases, self.extras = unfold_metadata(self.metadata, self._datasets)
            # Hard links found while reading name the same ties; a name that has data of its own stays a tensor.
            self.aliases = {
                **{a: t for a, t in recorded_aliases.items() if a not in self._datasets},
                **self.aliases,
            }
            recorded = json.loads(self.metadata.get(CLASSES, "{}") or "{}")
            structure.classes = {**recorded, **structure.classes}
            for layer in structure.layers:
                layer.cls = layer.cls or structure.classes.get(layer.name)
        self.metadata.update(structure.metadata())

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        ti = self.info(name)
        with hdf5_errors():
            return self.reader.read(self._datasets[name], ti.dtype, ti.shape)

    def raw_extent(self, name: str) -> RawExtent | None:
        with hdf5_errors():
            return self.reader.extent(self._datasets[name], self.info(name).nbytes)

    def structure(self) -> dict[str, Any] | None:
        return self.keras.sections() if self.keras else None

    def among_shards(self, shards: Sequence[Checkpoint]) -> Checkpoint:
        """Reopened with the layer names other shards state, when it holds part of such a layer.

        Keras writes a layer's name (its ``vars`` group's ``name`` attribute) only into the shard
        where the layer starts; a shard continuing the layer has the group without it.
        """
        known = {path: name for s in shards if isinstance(s, KerasCheckpoint) for path, name in s.group_names.items()}
        if not self.unnamed_groups & known.keys():
            return self
        from ckptkit.formats.keras.archive import ArchiveReader
        from ckptkit.formats.keras.files import open_file  # which imports this module

        archive = isinstance(self.reader, ArchiveReader)
        self.close()
        return open_file(self.reader.source or Path(str(self.path)), archive=archive, names_hint=known)

    def close(self) -> None:
        try:
            self.h5.close()
        finally:
            self.reader.close()
