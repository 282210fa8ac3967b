"""Writing legacy Keras HDF5 files, laid out as Keras 3's ``legacy_h5_format`` writes them.

``model.load_weights('x.h5')`` matches the file's layers to the model's by order (layers without
weights skipped) and each layer's weights by order, trainable ones first; so layers are written in
model order and a layer's weights in that order. When the checkpoint carries a legacy
``model_config`` the file is a full model (``model_weights`` group), else a weights file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ckptkit.core.metadata import checkpoint_metadata
from ckptkit.core.model import Checkpoint
from ckptkit.formats.keras import naming, structure
from ckptkit.formats.keras.checkpoint import METADATA_ATTR
from ckptkit.formats.keras.h5write import DatasetSpec, FileSpec, set_names
from ckptkit.formats.keras.structure import Structure


def legacy_spec(ckpt: Checkpoint, notes: list[str]) -> FileSpec:
    meta = ckpt.metadata
    st = structure.from_metadata(meta, [*ckpt.names(), *ckpt.aliases])  # tied names become hard links
    full = structure.MODEL_CONFIG in meta
    spec = FileSpec()
    root = spec.group("/")
    weights_path = "/model_weights" if full else "/"
    weights = spec.group(weights_path)
    recorded_prefix = "/model_weights/" if st.file_kind == "h5-model" else "/"
    recorded = st.h5_paths if st.file_kind in ("h5-model", "h5-weights") else {}
    if full:
        root["keras_version"] = _version(meta)
        if structure.BACKEND in meta:
            root["backend"] = meta[structure.BACKEND]
        root["model_config"] = meta[structure.MODEL_CONFIG]
        if structure.TRAINING_CONFIG in meta:
            root["training_config"] = meta[structure.TRAINING_CONFIG]
    set_names(weights, "layer_names", [layer.name for layer in st.layers])
    if structure.BACKEND in meta:
        weights["backend"] = meta[structure.BACKEND]
    weights["keras_version"] = _version(meta)
    base = weights_path.rstrip("/")
    for layer in st.layers:
        group = f"{base}/{layer.name}"
        names = _weight_names(layer.tensors, recorded, f"{recorded_prefix}{layer.name}/")
        set_names(spec.group(group), "weight_names", list(names.values()))
        spec.datasets.extend(DatasetSpec(f"{group}/{wn}", t) for t, wn in names.items())
    set_names(spec.group(f"{base}/top_level_model_weights"), "weight_names", [])
    if st.optimizer:
        names = _optimizer_names(st, recorded)
        set_names(spec.group("/optimizer_weights"), "weight_names", list(names.values()))
        spec.datasets.extend(DatasetSpec(f"/optimizer_weights/{wn}", t) for t, wn in names.items())
        if not full:
            notes.append(
                f"{len(st.optimizer)} optimizer variables kept in optimizer_weights (load_weights ignores them)"
            )
    expressed = {structure.KERAS_VERSION, structure.BACKEND}
    if full:
        expressed |= {structure.MODEL_CONFIG, structure.TRAINING_CONFIG}
    extra = structure.stored_metadata(checkpoint_metadata(ckpt), expressed)
    if extra is not None:
        root[METADATA_ATTR] = extra
    return spec


def _weight_names(tensors: list[str], recorded: Mapping[str, str], prefix: str) -> dict[str, str]:
    """Tensor -> weight name in the layer's group: as the source file spelled it, else the tensor name."""
    if tensors and all(recorded.get(t, "").startswith(prefix) for t in tensors):
        return {t: recorded[t][len(prefix) :] for t in tensors}
    return {t: t for t in naming.legacy_order(tensors)}


def _optimizer_names(st: Structure, recorded: Mapping[str, str]) -> dict[str, str]:
    prefix = "/optimizer_weights/"
    if all(recorded.get(t, "").startswith(prefix) for t in st.optimizer):
        return {t: recorded[t][len(prefix) :] for t in st.optimizer}
    return {t: t[len(structure.OPTIMIZER_PREFIX) :] for t in st.optimizer}


def _version(meta: Mapping[str, Any]) -> str:
    # Keras 2 treats a file without keras_version as Keras 1 and converts its kernels on loading.
    return str(meta.get(structure.KERAS_VERSION) or "3.0.0")
