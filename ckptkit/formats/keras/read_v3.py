"""Reading Keras 3 weight files: ``model.weights.h5`` alone or inside a ``.keras`` archive.

Keras 3 saves each object's variables as ``<path>/vars/0``, ``/1``, ...: a model's layers under
``layers/<class in snake case>[_<n>]``, a nested model's under its own ``layers/``, an RNN's cell
under ``cell``, the optimizer under ``optimizer``. Newer versions put the object's name in the
``vars`` group's ``name`` attribute. The class (from config.json, or from the group name Keras
derived from it) gives the variables their names: ``vars/0`` of a Dense layer is its ``kernel``.
A Bidirectional layer keeps its two RNN layers under ``forward_layer`` and ``backward_layer``.
"""

from __future__ import annotations

from typing import Any

from ckptkit.core import limits
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.formats.keras import naming, structure
from ckptkit.formats.keras.checkpoint import KerasCheckpoint
from ckptkit.formats.keras.h5write import PADDING_GROUP
from ckptkit.formats.keras.hdf5 import attr_text, child, is_dataset, is_group, link_names
from ckptkit.formats.keras.structure import Layer, Structure

CONTAINERS = ("layers", "_layer_checkpoint_dependencies")


def is_v3(h5: Any) -> bool:
    return any(key in h5 for key in ("vars", "optimizer", *CONTAINERS))


class _Walker:
    def __init__(self, ckpt: KerasCheckpoint, config_classes: dict[str, str]) -> None:
        self.ckpt = ckpt
        self.config_classes = config_classes
        self._config_rank = {path: i for i, path in enumerate(config_classes)}  # the config lists layers in order
        self.st: Structure = Structure(file_kind="")
        self._seen: dict[Any, str] = {}  # group -> where it was first reached
        self._max_depth = limits.current().pickle_depth

    def object(self, group: Any, logical: str, cls: str | None, into: list[str]) -> None:
        """The variables of one saved object, then its sub-objects."""
        # Hard links can make a group its own descendant, or reach one group by many paths
        # (exponentially many through a chain of shared groups); Keras writes a tree.
        first = self._seen.setdefault(group.id, group.name)
        if first != group.name:
            raise CorruptCheckpointError(
                f"{group.name} is linked from more than one place (also reached as {first}): a cycle or a "
                "shared group, which Keras never writes"
            )
        if logical.count("/") > self._max_depth:
            raise CorruptCheckpointError(
                f"objects nest more than {self._max_depth} levels deep at {group.name}; if the file is trusted, "
                f"raise the limit with {limits.Limits.env_name('pickle_depth')}"
            )
        if cls:
            self.st.classes.setdefault(logical, cls)
        if "vars" in group:
            vars_group = child(group, "vars")
            if is_dataset(vars_group):
                raise CorruptCheckpointError(f"{vars_group.name} should be a group")
            keys = sorted(link_names(vars_group), key=lambda k: int(k) if k.isdigit() else -1)
            if any(not k.isdigit() for k in keys):
                odd = next(k for k in keys if not k.isdigit())
                raise CorruptCheckpointError(f"{vars_group.name} holds {odd!r}; Keras numbers variables 0, 1, ...")
            names = naming.variable_names(cls, len(keys)) or tuple(f"vars/{k}" for k in keys)
            for key, var in zip(keys, names, strict=True):
                ds = child(vars_group, key)
                if not is_dataset(ds):
                    raise CorruptCheckpointError(f"{ds.name} should be a dataset")
                tensor = f"{logical}/{var}"
                self.ckpt.add(tensor, ds)
                self.st.h5_paths[tensor] = ds.name
                into.append(tensor)
        for key in sorted(link_names(group), key=lambda k: _child_order(cls, k)):
            if key == "vars":
                continue
            sub = child(group, key)
            if not is_group(sub):
                continue
            if key in CONTAINERS:
                # A nested model's layers in its config's order (legacy .h5 lists its weights so), else by key.
                items = [(k, child(sub, k)) for k in sorted(link_names(sub), key=structure.natural_key)]
                named = [(k, item, self.name_of(item, k)) for k, item in items]
                unranked = len(self._config_rank)
                named.sort(key=lambda entry: self._config_rank.get(f"{logical}/{entry[2]}", unranked))
                for item_key, item, name in named:
                    self.object(item, f"{logical}/{name}", self.class_of(f"{logical}/{name}", item_key), into)
            else:
                name = self.name_of(sub, key)
                sub_cls, default_name = self.sublayer(cls, key, name)
                if sub_cls and name == key:
                    name = default_name
                path = f"{logical}/{name}"
                self.object(sub, path, self.class_of(path, key) or sub_cls, into)

    def name_of(self, group: Any, key: str) -> str:
        """The object's own name (its ``vars`` group's ``name`` attribute), else a name given for its
        path (see :attr:`KerasCheckpoint.names_hint`), else its key."""
        if "vars" in group and is_group(group["vars"]):
            name = attr_text(child(group, "vars"), "name")
            if name and "/" not in name:
                self.ckpt.group_names[group.name] = name
                return name
        hinted = self.ckpt.names_hint.get(group.name)
        if hinted:
            return hinted
        self.ckpt.unnamed_groups.add(group.name)
        return key

    def class_of(self, path: str, key: str) -> str | None:
        return self.config_classes.get(path) or naming.class_from_auto_name(key)

    def sublayer(self, cls: str | None, key: str, name: str) -> tuple[str | None, str]:
        """The class and name of the sub-layer a layer of class ``cls`` saves under ``key``, if known."""
        if cls == naming.BIDIRECTIONAL and key in naming.HALVES:
            return naming.half_class(name), name
        found = naming.SUBLAYERS.get(cls or "")
        if found and found[0] == key:
            return found[1], found[2]
        name, part_cls = naming.PARTS.get(cls or "", {}).get(key, (key, None))
        return part_cls, name


def _child_order(cls: str | None, key: str) -> tuple[bool, int, list[Any]]:
    # Sub-layers in the order Keras lists their weights (legacy .h5 loads by order): a Bidirectional
    # layer's forward half first, an attention layer's query, key, value, then output projection.
    return key == "backward_layer", naming.part_order(cls, key), structure.natural_key(key)


def read_v3(ckpt: KerasCheckpoint, file_kind: str, config: Any = None, extra: dict[str, str] | None = None) -> None:
    h5 = ckpt.h5
    order, classes = structure.config_classes(config) if config is not None else ([], {})
    walker = _Walker(ckpt, classes)
    st = walker.st
    st.file_kind = file_kind
    st.extra.update(extra or {})
    st.classes.update(classes)
    if "vars" in h5:
        model_name = attr_text(child(h5, "vars"), "name")
        if model_name:
            st.extra[structure.MODEL_NAME] = model_name
    container = next((child(h5, c) for c in CONTAINERS if c in h5), None)
    found: dict[str, Layer] = {}
    if container is not None:
        for key in sorted(link_names(container), key=structure.natural_key):
            group = child(container, key)
            if not is_group(group):
                continue
            name = walker.name_of(group, key)
            cls = walker.class_of(name, key)
            layer = Layer(name, cls, group=group.name)
            walker.object(group, name, cls, layer.tensors)
            if cls:
                st.classes.setdefault(name, cls)
            found[name] = layer
    # Layers in model order where config.json gives it (weightless ones included); a bare
    # .weights.h5 does not record the order, so its layers come by name.
    st.layers = [found.pop(name, Layer(name, cls)) for name, cls in order] + list(found.values())
    for key in sorted(link_names(h5), key=structure.natural_key):
        group = child(h5, key)
        if key in CONTAINERS or key == PADDING_GROUP.strip("/") or not is_group(group):
            continue
        if key == "optimizer":
            optimizer_name = attr_text(child(group, "vars"), "name") if "vars" in group else None
            if optimizer_name:
                st.extra[structure.OPTIMIZER_NAME] = optimizer_name
            walker.object(group, "optimizer", None, st.optimizer)
        elif key == "vars":
            _root_vars(walker, h5)
        else:
            name = walker.name_of(group, key)
            layer = Layer(name, walker.class_of(name, key), group=group.name)
            walker.object(group, name, layer.cls, layer.tensors)
            if layer.tensors:
                st.layers.append(layer)
    ckpt.reorder([t for layer in st.layers for t in layer.tensors])
    ckpt.finish(st)


def _root_vars(walker: _Walker, h5: Any) -> None:
    """The model's own variables (a subclassed model's ``add_weight``), named ``vars/<i>``."""
    vars_group = child(h5, "vars")
    for key in sorted(link_names(vars_group), key=lambda k: int(k) if k.isdigit() else -1):
        ds = child(vars_group, key)
        if is_dataset(ds):
            walker.ckpt.add(f"vars/{key}", ds)
            walker.st.h5_paths[f"vars/{key}"] = ds.name
