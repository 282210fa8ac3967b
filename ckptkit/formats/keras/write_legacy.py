"""Writing legacy Keras HDF5 files, laid out as Keras 3's ``legacy_h5_format`` writes them.

``model.load_weights('x.h5')`` matches the file's layers to the model's by order (layers without
weights skipped) and each layer's weights by order, trainable ones first; so layers are written in
model order and a layer's weights in that order. When the checkpoint carries a model config (a
legacy ``model_config``, or a ``.keras`` archive's ``config.json``, which Keras 3's legacy loader
reads alike) the file is a full model (``model_weights`` group) that ``keras.saving.load_model``
opens, else a weights file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ckptkit.core.errors import UnsupportedError
from ckptkit.core.metadata import checkpoint_metadata
from ckptkit.core.model import Checkpoint
from ckptkit.formats.keras import naming, structure
from ckptkit.formats.keras.checkpoint import METADATA_ATTR
from ckptkit.formats.keras.h5write import DatasetSpec, FileSpec, set_names
from ckptkit.formats.keras.structure import Structure


def legacy_spec(ckpt: Checkpoint, notes: list[str]) -> FileSpec:
    meta = ckpt.metadata
    st = structure.from_metadata(meta, [*ckpt.names(), *ckpt.aliases])  # tied names become hard links
    if st.file_kind in ("keras", "weights.h5"):
        _check_weight_order(st)
    model_config = meta.get(structure.MODEL_CONFIG)
    if model_config is None and structure.ARCHIVE_CONFIG in meta:
        model_config = _from_archive_config(meta[structure.ARCHIVE_CONFIG], notes)
    full = model_config is not None
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
        root["model_config"] = model_config
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
    if structure.MODEL_CONFIG in meta:
        expressed |= {structure.MODEL_CONFIG, structure.TRAINING_CONFIG}
    extra = structure.stored_metadata(checkpoint_metadata(ckpt), expressed)
    if extra is not None:
        root[METADATA_ATTR] = extra
    return spec


def _from_archive_config(text: str, notes: list[str]) -> str:
    """A ``.keras`` archive's ``config.json`` as a legacy ``model_config``; refused when it names no model."""
    config = structure.load_json(text, "the model's config.json")
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict) or "class_name" not in config:
        raise UnsupportedError(
            "the model's config.json is not a Keras model config (class_name and config), so a legacy .h5 "
            "cannot carry it; write a .keras or .weights.h5 file instead"
        )
    if config.pop("compile_config", None):
        notes.append(
            "the .keras model's compile settings have no legacy training_config: keras.saving.load_model "
            "returns the model uncompiled"
        )
    return json.dumps(config)


def _check_weight_order(st: Structure) -> None:
    """Refuse a layer whose weights' order a Keras 3 file does not record (legacy .h5 loads by that order).

    A Keras 3 file stores a layer's sub-layers by attribute name, not in the order the layer made
    them; ckptkit knows that order for RNN, Bidirectional and attention layers and for nested
    models (from the config), not for a custom layer holding several sub-layers with weights.
    """
    known = {*naming.SUBLAYERS, *naming.PARTS, naming.BIDIRECTIONAL, *naming.MODEL_CLASSES}
    for layer in st.layers:
        owners = dict.fromkeys(t.rsplit("/", 1)[0] for t in layer.tensors if "/" in t[len(layer.name) + 1 :])
        if len(owners) > 1 and layer.cls not in known:
            raise UnsupportedError(
                f"layer {layer.name!r} ({layer.cls or 'class unknown'}) keeps its weights in {len(owners)} "
                f"sub-layers ({', '.join(list(owners)[:4])}); a legacy .h5 lists them in the order the layer made "
                "them, which this Keras 3 file does not record, so Keras would load them into the wrong variables; "
                "write a .keras or .weights.h5 file instead"
            )


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
    if structure.KERAS_VERSION in meta:
        return str(meta[structure.KERAS_VERSION])
    archive = structure.load_json(meta.get(structure.ARCHIVE_METADATA), "the model's metadata.json")
    version = archive.get("keras_version") if isinstance(archive, dict) else None
    return str(version or "3.0.0")
