"""Writing Keras 3 ``.weights.h5`` files, laid out as ``model.save_weights`` writes them.

Keras 3 finds a layer's variables by path, not by name: the n-th layer of class ``Conv2D`` in a
model lives at ``layers/conv2d_<n>/vars/<i>`` (no suffix for the first), an RNN's cell below it at
``cell/vars``, a Bidirectional layer's halves at ``forward_layer`` and ``backward_layer``, a nested
model's layers below its own ``layers/``. Paths recorded when the checkpoint was read from such a
file are kept; otherwise they are built from the layer classes
(``keras:classes``, which ``--layout keras`` and the Keras readers provide).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from ckptkit.core.errors import UnsupportedError
from ckptkit.core.metadata import checkpoint_metadata
from ckptkit.core.model import Checkpoint
from ckptkit.formats.keras import naming, structure
from ckptkit.formats.keras.checkpoint import METADATA_ATTR
from ckptkit.formats.keras.h5write import DatasetSpec, FileSpec
from ckptkit.formats.keras.read_v3 import CONTAINERS
from ckptkit.formats.keras.structure import Structure

_INDEXED = re.compile(r"^(.*/)?vars/(\d+)$")
_ROOT_VAR = re.compile(r"^vars/\d+$")
_FIX = (
    "convert a PyTorch state dict with --layout keras, pass --template MODEL.keras, or write a legacy .h5 "
    "instead (load_weights reads it by layer order)"
)


@dataclass
class _Node:
    path: str  # the Keras variable path prefix: "c1", "inner/dense_1", "lstm/lstm_cell"
    cls: str | None
    own: list[tuple[str, str]] = field(default_factory=list)  # (variable, tensor)
    children: dict[str, _Node] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def v3_spec(
    ckpt: Checkpoint, notes: list[str], renamed: dict[str, str] | None = None, archive: bool = False
) -> FileSpec:
    """The file's layout; ``renamed`` receives tensors the file will give another name (new -> old).

    ``archive``: the file goes into a .keras archive, whose config.json and metadata.json hold
    what the ``keras:config`` and ``keras:metadata`` keys say.
    """
    meta = ckpt.metadata
    names = [*ckpt.names(), *ckpt.aliases]  # a tied name's dataset becomes a hard link to its tensor's
    st = structure.from_metadata(meta, names)
    spec = FileSpec()
    recorded = st.h5_paths if st.file_kind in ("weights.h5", "keras") else {}
    model_tensors = [t for t in names if not structure.is_optimizer(t) and not _ROOT_VAR.match(t)]
    if model_tensors and all(_INDEXED.match(recorded.get(t, "")) for t in model_tensors):
        for t in model_tensors:
            spec.datasets.append(DatasetSpec(recorded[t], t))
            _name_objects(spec, recorded[t], _owner(t))
        for layer in st.layers:
            if not layer.tensors and layer.group and layer.group.startswith("/layers/"):
                spec.group(f"{layer.group}/vars")["name"] = layer.name
    else:
        _derive(st, spec)
    _root_and_optimizer(ckpt, st, spec, recorded, notes, {} if renamed is None else renamed)
    expressed = {structure.MODEL_NAME, structure.OPTIMIZER_NAME}
    if archive:
        expressed |= {structure.ARCHIVE_CONFIG, structure.ARCHIVE_METADATA, structure.KERAS_VERSION}
    extra = structure.stored_metadata(checkpoint_metadata(ckpt), expressed)
    if extra is not None:
        spec.group("/")[METADATA_ATTR] = extra
    return spec


def _name_objects(spec: FileSpec, h5_path: str, owner: str) -> None:
    """Give each object on a recorded path its name (``layers/sequential`` is the model ``inner``)."""
    parts = h5_path.strip("/").split("/")[:-2]  # drop "vars/<i>"
    objects = ["/" + "/".join(parts[: i + 1]) for i, p in enumerate(parts) if p not in CONTAINERS]
    names = owner.split("/") if owner else []
    if len(objects) == len(names):
        for obj, name in zip(objects, names, strict=True):
            spec.group(f"{obj}/vars")["name"] = name


def _owner(tensor: str) -> str:
    match = _INDEXED.match(tensor)
    if match:
        return (match.group(1) or "").rstrip("/")
    return tensor.rsplit("/", 1)[0] if "/" in tensor else ""


def _layer_keys(st: Structure) -> list[str | None]:
    """Each top-level layer's group under ``layers/``: its class in snake case, numbered per class."""
    counts: Counter[str] = Counter()
    keys: list[str | None] = []
    for layer in st.layers:
        if not layer.cls:
            if layer.tensors:
                raise UnsupportedError(
                    f"cannot tell the Keras class of layer {layer.name!r}, and Keras 3 .weights.h5 files name "
                    f"each layer's group after its class; {_FIX}"
                )
            keys.append(None)
            continue
        base = naming.snake_case(layer.cls)
        keys.append(base if not counts[base] else f"{base}_{counts[base]}")
        counts[base] += 1
    return keys


def _derive(st: Structure, spec: FileSpec) -> None:
    nodes: dict[str, _Node] = {}
    for layer in st.layers:
        top = nodes[layer.name] = _Node(layer.name, layer.cls)
        for tensor in layer.tensors:
            owner = _owner(tensor)
            var = tensor[len(owner) + 1 :] if owner else tensor
            node = top
            for part in owner.split("/")[1:]:
                path = f"{node.path}/{part}"
                node = node.children.setdefault(part, _Node(path, st.classes.get(path)))
            node.own.append((var, tensor))
    for key, layer in zip(_layer_keys(st), st.layers, strict=True):
        if key:
            _emit(nodes[layer.name], f"/layers/{key}", spec)


def _emit(node: _Node, h5_path: str, spec: FileSpec) -> None:
    spec.group(f"{h5_path}/vars")["name"] = node.name
    for index, tensor in _indexed(node):
        spec.datasets.append(DatasetSpec(f"{h5_path}/vars/{index}", tensor))
    counts: Counter[str] = Counter()
    sub = naming.SUBLAYERS.get(node.cls or "")
    parts = {name: (attr, cls) for attr, (name, cls) in naming.PARTS.get(node.cls or "", {}).items()}
    for child in node.children.values():
        part = parts.get(child.name)
        if sub and (child.name == sub[2] or child.cls == sub[1]):
            child.cls = child.cls or sub[1]
            _emit(child, f"{h5_path}/{sub[0]}", spec)
        elif node.cls == naming.BIDIRECTIONAL and (attr := _half(child.name)):
            child.cls = child.cls or naming.half_class(child.name)
            _emit(child, f"{h5_path}/{attr}", spec)
        elif part:
            child.cls = child.cls or part[1]
            _emit(child, f"{h5_path}/{part[0]}", spec)
        elif node.cls in naming.MODEL_CLASSES and child.cls:
            base = naming.snake_case(child.cls)
            key = base if not counts[base] else f"{base}_{counts[base]}"
            counts[base] += 1
            _emit(child, f"{h5_path}/layers/{key}", spec)
        else:
            raise UnsupportedError(
                f"cannot tell where Keras 3 keeps {child.path!r} inside layer {node.path!r} "
                f"({node.cls or 'class unknown'}); {_FIX}"
            )


def _half(name: str) -> str | None:
    """The attribute a Bidirectional layer keeps its half named ``name`` under."""
    return next((attr for attr, prefix in naming.HALVES.items() if name.startswith(prefix)), None)


def _indexed(node: _Node) -> list[tuple[int, str]]:
    variables = [v for v, _ in node.own]
    if all(re.fullmatch(r"vars/\d+", v) for v in variables):
        return [(int(v.split("/")[1]), t) for v, t in node.own]
    expected = naming.variable_names(node.cls, len(variables))
    if expected and set(expected) == set(variables):
        return [(expected.index(v), t) for v, t in node.own]
    if node.cls in naming.VARIABLES:
        want = " or ".join(", ".join(v) for v in naming.VARIABLES[node.cls])
        raise UnsupportedError(
            f"layer {node.path!r} ({node.cls}) has variables {', '.join(variables)}; "
            f"Keras saves {node.cls} variables as {want}"
        )
    return list(enumerate(t for _, t in node.own))


def _root_and_optimizer(
    ckpt: Checkpoint,
    st: Structure,
    spec: FileSpec,
    recorded: Mapping[str, str],
    notes: list[str],
    renamed: dict[str, str],
) -> None:
    model_name = st.extra.get(structure.MODEL_NAME)
    root_vars = [t for t in [*ckpt.names(), *ckpt.aliases] if _ROOT_VAR.match(t)]
    attrs = spec.group("/vars")  # Keras always writes the model's own group; it marks the file as Keras 3
    if model_name:
        attrs["name"] = model_name
    spec.datasets.extend(DatasetSpec(f"/{t}", t) for t in root_vars)
    if not st.optimizer:
        return
    attrs = spec.group("/optimizer/vars")
    if structure.OPTIMIZER_NAME in st.extra:
        attrs["name"] = st.extra[structure.OPTIMIZER_NAME]
    if all(_INDEXED.match(recorded.get(t, "")) for t in st.optimizer):
        spec.datasets.extend(DatasetSpec(recorded[t], t) for t in st.optimizer)
        return
    if all(re.fullmatch(r"optimizer/vars/\d+", t) for t in st.optimizer):
        spec.datasets.extend(DatasetSpec(f"/{t}", t) for t in st.optimizer)
        return
    for i, t in enumerate(st.optimizer):
        spec.datasets.append(DatasetSpec(f"/optimizer/vars/{i}", t))
        renamed[f"optimizer/vars/{i}"] = t
    notes.append(
        f"{len(st.optimizer)} optimizer variables stored by position as optimizer/vars/0..{len(st.optimizer) - 1}"
    )
