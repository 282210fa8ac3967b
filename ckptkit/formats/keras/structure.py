"""The Keras structure of a checkpoint: layers in model order, their classes, optimizer variables.

Readers build a :class:`Structure` from the file and publish it as ``keras:*`` metadata (so it
survives a conversion to another format and back); writers read it back from that metadata to
lay the file out as Keras expects. Tensor names follow one scheme in every Keras file: the Keras
variable path (``dense_1/kernel``, ``inner/dense_1/kernel``, ``lstm/lstm_cell/recurrent_kernel``);
the first component is always the top-level layer; optimizer variables start with ``optimizer/``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.formats.keras import naming

OPTIMIZER_PREFIX = "optimizer/"

# Metadata keys. Every Keras file expresses FILE_KIND, LAYERS and H5_PATHS in its own layout (they
# are derived again whenever it is read); each writer lists what else its file expresses.
FILE_KIND = "keras:file"
LAYERS = "keras:layers"
CLASSES = "keras:classes"
H5_PATHS = "keras:h5_paths"
KERAS_VERSION = "keras:keras_version"
BACKEND = "keras:backend"
MODEL_NAME = "keras:model_name"
OPTIMIZER_NAME = "keras:optimizer"
MODEL_CONFIG = "keras:model_config"  # legacy .h5 full model: the model_config attribute
TRAINING_CONFIG = "keras:training_config"
ARCHIVE_CONFIG = "keras:config"  # .keras: config.json
ARCHIVE_METADATA = "keras:metadata"  # .keras: metadata.json
DERIVED = frozenset({FILE_KIND, LAYERS, H5_PATHS})


@dataclass
class Layer:
    """A top-level layer of the model, with or without weights."""

    name: str
    cls: str | None = None
    tensors: list[str] = field(default_factory=list)
    group: str | None = None  # its HDF5 group in the file it was read from


@dataclass
class Structure:
    """What a Keras file says about its model, beyond the tensors themselves."""

    file_kind: str
    layers: list[Layer] = field(default_factory=list)
    classes: dict[str, str] = field(default_factory=dict)  # layer path -> Keras class
    optimizer: list[str] = field(default_factory=list)
    h5_paths: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)  # the other keras:* keys

    def metadata(self) -> dict[str, str]:
        meta = {
            FILE_KIND: self.file_kind,
            LAYERS: json.dumps([[layer.name, layer.cls, layer.group] for layer in self.layers]),
            H5_PATHS: json.dumps(self.h5_paths),
        }
        if self.classes:
            meta[CLASSES] = json.dumps(self.classes, sort_keys=True)
        meta.update(self.extra)
        return meta

    def sections(self) -> dict[str, Any]:
        """The report ``inspect`` shows: layers with their weights, optimizer variables apart."""
        groups = [{"name": layer.name, "kind": layer.cls, "tensors": list(layer.tensors)} for layer in self.layers]
        sections: list[dict[str, Any]] = [{"title": "layers", "groups": groups}]
        if self.optimizer:
            name = self.extra.get(OPTIMIZER_NAME) or "optimizer"
            sections.append(
                {
                    "title": "optimizer variables",
                    "groups": [{"name": name, "kind": None, "tensors": list(self.optimizer)}],
                }
            )
        return {"kind": "keras", "sections": sections}


def top_layer(tensor: str) -> str:
    return tensor.split("/", 1)[0]


def is_optimizer(tensor: str) -> bool:
    return tensor.startswith(OPTIMIZER_PREFIX)


def load_json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise CorruptCheckpointError(f"{what} is not valid JSON") from None


def from_metadata(meta: Mapping[str, str], tensors: Iterable[str]) -> Structure:
    """The structure recorded in metadata, completed from the tensor names where it is silent.

    Layers named in ``keras:layers`` come first, in that order; tensors of any other top-level
    name form further layers in the order they appear.
    """
    names = list(tensors)
    recorded = load_json(meta.get(LAYERS), LAYERS) or []
    classes = load_json(meta.get(CLASSES), CLASSES) or {}
    layers: dict[str, Layer] = {}
    for entry in recorded:
        if isinstance(entry, list) and entry and isinstance(entry[0], str):
            cls, group = [*entry[1:3], None, None][:2]
            layers[entry[0]] = Layer(
                entry[0], cls if isinstance(cls, str) else None, group=group if isinstance(group, str) else None
            )
    optimizer = []
    for name in names:
        if is_optimizer(name):
            optimizer.append(name)
            continue
        top = top_layer(name)
        layer = layers.setdefault(top, Layer(top))
        layer.tensors.append(name)
    h5_paths = load_json(meta.get(H5_PATHS), H5_PATHS) or {}
    file_order = {name: i for i, name in enumerate(h5_paths)}  # the source file's own order
    for layer in layers.values():
        layer.cls = layer.cls or classes.get(layer.name) or naming.class_from_auto_name(layer.name)
        if layer.tensors and all(t in file_order for t in layer.tensors):
            layer.tensors.sort(key=file_order.__getitem__)
        else:
            layer.tensors = _class_order(layer)
    if all(t in file_order for t in optimizer):
        optimizer.sort(key=file_order.__getitem__)
    extra = {
        k: v for k, v in meta.items() if k.startswith("keras:") and k not in (LAYERS, CLASSES, H5_PATHS, FILE_KIND)
    }
    return Structure(
        file_kind=meta.get(FILE_KIND, ""),
        layers=list(layers.values()),
        classes={k: v for k, v in classes.items() if isinstance(v, str)},
        optimizer=optimizer,
        h5_paths=h5_paths,
        extra=extra,
    )


def _class_order(layer: Layer) -> list[str]:
    """A layer's own variables in the order its class saves them (``kernel`` before ``bias``)."""
    own = [t[len(layer.name) + 1 :] for t in layer.tensors]
    expected = naming.variable_names(layer.cls, len(own))
    if expected is None or set(own) != set(expected):
        return layer.tensors
    return [f"{layer.name}/{v}" for v in expected]


def config_classes(config: Any, prefix: str = "") -> tuple[list[tuple[str, str]], dict[str, str]]:
    """From a Keras model config: the top-level layers (name, class) in order, and every layer's class.

    Accepts Keras 2 (``name`` beside ``config``) and Keras 3 (``name`` inside) layer entries, and
    nested models.
    """
    if not isinstance(config, dict):
        return [], {}
    inner = config.get("config", config)
    entries = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(entries, list):
        return [], {}
    order: list[tuple[str, str]] = []
    classes: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        cls = entry.get("class_name")
        cfg: dict[str, Any] = entry["config"] if isinstance(entry.get("config"), dict) else {}
        name = cfg.get("name", entry.get("name"))
        if not isinstance(name, str) or not isinstance(cls, str):
            continue
        path = prefix + name
        order.append((name, cls))
        classes[path] = cls
        _sublayer_classes(path, cls, classes)
        if cls == naming.BIDIRECTIONAL:
            _half_classes(path, cfg, classes)
        if cls in naming.MODEL_CLASSES or isinstance(cfg.get("layers"), list):
            _sub_order, sub_classes = config_classes(entry, path + "/")
            classes.update(sub_classes)
    return order, classes


def layer_configs(config: Any, prefix: str = "") -> dict[str, tuple[str, dict[str, Any]]]:
    """Every layer's class and config by layer path (``inner/dense_1``), from a Keras model config."""
    if not isinstance(config, dict):
        return {}
    inner = config.get("config", config)
    entries = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(entries, list):
        return {}
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        cls = entry.get("class_name")
        cfg: dict[str, Any] = entry["config"] if isinstance(entry.get("config"), dict) else {}
        name = cfg.get("name", entry.get("name"))
        if isinstance(name, str) and isinstance(cls, str):
            found[prefix + name] = (cls, cfg)
            if cls in naming.MODEL_CLASSES or isinstance(cfg.get("layers"), list):
                found.update(layer_configs(entry, f"{prefix}{name}/"))
    return found


def model_config(meta: Mapping[str, str]) -> Any:
    """The model's config from a Keras file's metadata (``config.json`` or a legacy ``model_config``), or None."""
    text = meta.get(ARCHIVE_CONFIG) or meta.get(MODEL_CONFIG)
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def _sublayer_classes(path: str, cls: str, classes: dict[str, str]) -> None:
    if cls in naming.SUBLAYERS:
        _attr, cell_cls, cell_name = naming.SUBLAYERS[cls]
        classes[f"{path}/{cell_name}"] = cell_cls
    for part_name, part_cls in naming.PARTS.get(cls, {}).values():
        classes[f"{path}/{part_name}"] = part_cls


def _half_classes(path: str, cfg: dict[str, Any], classes: dict[str, str]) -> None:
    """A Bidirectional layer's halves, named as Keras names them.

    The forward half is ``layer`` named ``forward_<name>``; the backward half is ``backward_layer``
    under its own name, or (Keras 2 configs have none) a copy of ``layer`` named ``backward_<name>``.
    """
    for attr, prefix in naming.HALVES.items():
        own = attr == "backward_layer" and isinstance(cfg.get(attr), dict)
        entry = cfg.get(attr) if own else cfg.get("layer")
        if not isinstance(entry, dict):
            continue
        inner = entry.get("config")
        cls = entry.get("class_name")
        name = inner.get("name", entry.get("name")) if isinstance(inner, dict) else entry.get("name")
        if isinstance(cls, str) and isinstance(name, str):
            half = f"{path}/{name if own or name.startswith(prefix) else prefix + name}"
            classes[half] = cls
            _sublayer_classes(half, cls, classes)


def natural_key(text: str) -> list[Any]:
    """Sort key putting ``dense_2`` before ``dense_10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def stored_metadata(meta: Mapping[str, str], expressed: Iterable[str]) -> str | None:
    """The metadata a writer keeps in the file's ckptkit attribute: what its layout does not express."""
    skip = DERIVED | set(expressed)
    kept = {k: v for k, v in meta.items() if k not in skip}
    return json.dumps(kept, sort_keys=True) if kept else None
