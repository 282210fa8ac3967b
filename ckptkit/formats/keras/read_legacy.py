"""Reading legacy Keras HDF5 files: ``model.save('x.h5')`` and ``save_weights('x.h5')``.

Written by Keras 1-2, tf.keras and Keras 3 alike. A weights file lists its layers in a
``layer_names`` attribute of the root group; a full model keeps that group as ``model_weights``
beside a ``model_config`` attribute and an ``optimizer_weights`` group. Each layer's group lists
its datasets in ``weight_names`` (Keras 2 spells them ``dense/kernel:0``, Keras 3 ``dense/kernel``).
"""

from __future__ import annotations

import re
from typing import Any

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.formats.keras import naming, structure
from ckptkit.formats.keras.checkpoint import KerasCheckpoint
from ckptkit.formats.keras.hdf5 import attr_strings, attr_text, child, is_dataset, link_names
from ckptkit.formats.keras.structure import Layer, Structure

_SUFFIX = re.compile(r":\d+$")


def is_legacy(h5: Any) -> bool:
    return attr_strings(h5, "layer_names") is not None or "model_weights" in h5


def not_keras_message(h5: Any) -> str:
    keys = ", ".join(sorted(link_names(h5))[:8]) or "nothing"
    return (
        "an HDF5 file, but not a Keras one: it has no layer_names attribute, model_weights group or "
        f"layers/vars groups (its top level holds {keys})"
    )


def read_legacy(ckpt: KerasCheckpoint) -> None:
    h5 = ckpt.h5
    full = attr_strings(h5, "layer_names") is None
    weights = child(h5, "model_weights") if full else h5
    layer_names = attr_strings(weights, "layer_names")
    if layer_names is None:
        raise CorruptCheckpointError("model_weights has no layer_names attribute")
    extra: dict[str, str] = {}
    for attr, key in (("keras_version", structure.KERAS_VERSION), ("backend", structure.BACKEND)):
        value = attr_text(weights, attr) or attr_text(h5, attr)
        if value is not None:
            extra[key] = value
    order: list[tuple[str, str]] = []
    classes: dict[str, str] = {}
    if full:
        config_text = attr_text(h5, "model_config")
        if config_text is not None:
            extra[structure.MODEL_CONFIG] = config_text
            order, classes = structure.config_classes(structure.load_json(config_text, "model_config"))
        training = attr_text(h5, "training_config")
        if training is not None:
            extra[structure.TRAINING_CONFIG] = training
    config_class = dict(order)
    st = Structure(file_kind="h5-model" if full else "h5-weights", classes=classes, extra=extra)
    for layer_name in layer_names:
        group = _group(weights, layer_name)
        cls = config_class.get(layer_name) or naming.class_from_auto_name(layer_name)
        layer = Layer(layer_name, cls, group=group.name)
        weight_names = attr_strings(group, "weight_names") or []
        for tensor, weight_name in zip(tensor_names(layer_name, weight_names, cls), weight_names, strict=True):
            _add(ckpt, st, tensor, group, weight_name)
            layer.tensors.append(tensor)
        if cls:
            st.classes.setdefault(layer_name, cls)
        st.layers.append(layer)
    if "top_level_model_weights" in weights:
        group = _group(weights, "top_level_model_weights")
        for weight_name in attr_strings(group, "weight_names") or []:
            _add(ckpt, st, _SUFFIX.sub("", weight_name), group, weight_name)
    if "optimizer_weights" in h5:
        group = _group(h5, "optimizer_weights")
        for weight_name in attr_strings(group, "weight_names") or []:
            tensor = structure.OPTIMIZER_PREFIX + _SUFFIX.sub("", weight_name)
            _add(ckpt, st, tensor, group, weight_name)
            st.optimizer.append(tensor)
        optimizer = _optimizer_name(st.optimizer)
        if optimizer:
            st.extra[structure.OPTIMIZER_NAME] = optimizer
    ckpt.finish(st)


def tensor_names(layer: str, weight_names: list[str], cls: str | None) -> list[str]:
    """``<layer>/<weight path below the layer's own scope>``: ``conv2d/kernel`` for ``conv2d_3/kernel:0``.

    A weight name's first component is the scope it was created in, normally the layer's name but
    not always (a layer built twice in one Keras 2 session), and Keras 3 puts the enclosing model's
    name before it. The scope is replaced by the layer's name when every weight of the layer shares
    it; weights of a nested model keep their inner layer's name.
    """
    stripped = [_SUFFIX.sub("", w) for w in weight_names]
    parts = [s.split("/") for s in stripped]
    # Keras 3 prefixes the enclosing model's name (sequential/dense/kernel): cut through the layer's.
    cuts = [p.index(layer) if layer in p[:-1] else -1 for p in parts]
    if parts and all(c > 0 for c in cuts):
        parts = [p[c:] for p, c in zip(parts, cuts, strict=True)]
        stripped = ["/".join(p) for p in parts]
    scopes = {p[0] for p in parts}
    nested = cls in naming.MODEL_CLASSES
    if len(scopes) == 1 and all(len(p) > 1 for p in parts) and (not nested or layer in scopes):
        names = [f"{layer}/{'/'.join(p[1:])}" for p in parts]
    else:
        keep = [(p[0] == layer and len(p) > 1) or s == layer for s, p in zip(stripped, parts, strict=True)]
        names = [s if k else f"{layer}/{s}" for s, k in zip(stripped, keep, strict=True)]
    if len(set(names)) != len(names):
        names = [f"{layer}/{s}" for s in stripped]
    return names


def _group(parent: Any, name: str) -> Any:
    try:
        group = child(parent, name)
    except KeyError:
        raise CorruptCheckpointError(f"layer {name!r} is listed but {parent.name} has no group of that name") from None
    if is_dataset(group):
        raise CorruptCheckpointError(f"{group.name} should be a group of weights but is a dataset")
    return group


def _add(ckpt: KerasCheckpoint, st: Structure, tensor: str, group: Any, weight_name: str) -> None:
    try:
        ds = child(group, weight_name)
    except KeyError:
        raise CorruptCheckpointError(f"{group.name} lists weight {weight_name!r}, which is not in the file") from None
    if not is_dataset(ds):
        raise CorruptCheckpointError(f"{ds.name} should be a dataset but is a group")
    ckpt.add(tensor, ds)
    st.h5_paths[tensor] = ds.name


def _optimizer_name(tensors: list[str]) -> str | None:
    scopes = {t[len(structure.OPTIMIZER_PREFIX) :].split("/")[0] for t in tensors if t.count("/") > 1}
    return scopes.pop() if len(scopes) == 1 else None
