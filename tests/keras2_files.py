"""Writes files laid out as Keras 2 / tf.keras wrote them, for reader tests (TensorFlow is not needed).

Layout as written by tf.keras 2.x ``save_weights('x.h5')`` and ``model.save('x.h5')``: root
attributes ``layer_names`` (byte strings), ``backend``, ``keras_version``; one group per layer
with a ``weight_names`` attribute listing ``scope/name:0`` datasets under the group; a full model
keeps that under ``model_weights`` beside ``model_config`` and ``optimizer_weights``.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

Weights = list[tuple[str, np.ndarray]]  # (weight name as stored, value)


def _names(values: list[str]) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values]) if values else np.zeros(0)


def write_weights_group(group: h5py.Group, layers: list[tuple[str, Weights]], split_layer_names: bool = False) -> None:
    names = [name for name, _ in layers]
    if split_layer_names:  # what Keras does when the list passes the 64 KiB attribute limit
        half = len(names) // 2
        group.attrs["layer_names0"] = _names(names[:half])
        group.attrs["layer_names1"] = _names(names[half:])
    else:
        group.attrs["layer_names"] = _names(names)
    group.attrs["backend"] = b"tensorflow"
    group.attrs["keras_version"] = b"2.13.1"
    for name, weights in layers:
        g = group.create_group(name)
        g.attrs["weight_names"] = _names([w for w, _ in weights])
        for weight_name, value in weights:
            g.create_dataset(weight_name, data=value)


def write_keras2(
    path: Path,
    layers: list[tuple[str, Weights]],
    *,
    model_config: dict | None = None,
    optimizer: Weights = (),  # type: ignore[assignment]
    split_layer_names: bool = False,
) -> None:
    with h5py.File(path, "w") as f:
        if model_config is None:
            write_weights_group(f, layers, split_layer_names)
            return
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.13.1"
        f.attrs["model_config"] = json.dumps(model_config).encode("utf-8")
        f.attrs["training_config"] = json.dumps({"loss": "mse", "optimizer_config": {"class_name": "Adam"}}).encode()
        write_weights_group(f.create_group("model_weights"), layers, split_layer_names)
        if optimizer:
            g = f.create_group("optimizer_weights")
            g.attrs["weight_names"] = _names([w for w, _ in optimizer])
            for weight_name, value in optimizer:
                g.create_dataset(weight_name, data=value)


def sequential_config(*layers: tuple[str, str], nested: dict[str, list[tuple[str, str]]] | None = None) -> dict:
    """A Keras 2 model_config: (class, name) per layer; ``nested`` gives a sub-model's layers."""

    def entry(cls: str, name: str) -> dict:
        config: dict = {"name": name}
        if nested and name in nested:
            config["layers"] = [entry(c, n) for c, n in nested[name]]
        return {"class_name": cls, "config": config}

    return {"class_name": "Sequential", "config": {"name": "sequential", "layers": [entry(c, n) for c, n in layers]}}
