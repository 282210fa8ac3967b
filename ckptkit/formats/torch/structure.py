"""Turning an unpickled object tree into dotted tensor names, aliases and JSON-able extras.

``{"state_dict": {"layer.0.weight": t}, "epoch": 3}`` gives the tensor
``state_dict.layer.0.weight`` and the extra ``epoch = 3``. Placeholders for unknown classes
(:class:`OpaqueObject`) are looked into, so tensors inside a config object are found too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ckptkit.core import limits
from ckptkit.core.errors import CorruptCheckpointError, UnsupportedError
from ckptkit.io import unpickler
from ckptkit.io.unpickler import Marker, OpaqueObject, PickledArray, TensorRecord, UnsupportedTensor

BARE_TENSOR_NAME = "tensor"
MAX_ARRAY_LIST = 64  # numpy arrays up to this many numbers are kept as lists in extras

_SCALARS = (type(None), bool, int, float, str)


@dataclass
class Tree:
    """What :func:`flatten` found: tensors by name (in pickle order), aliases, extras, root kind.

    ``unsupported`` maps the names of tensors ckptkit cannot represent to why (see
    :attr:`ckptkit.core.model.Checkpoint.unsupported`).
    """

    tensors: dict[str, TensorRecord] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    root: str = "dict"  # "dict", "tensor", "list", "tuple" or "<opaque module.Class>"


def flatten(obj: object) -> Tree:
    """Name every tensor in ``obj`` by its dotted path; tensors viewing the same bytes become aliases."""
    walker = _Walker()
    if isinstance(obj, (TensorRecord, UnsupportedTensor)):
        walker.tree.root = "tensor"
        walker.visit(obj, BARE_TENSOR_NAME, 0)
    else:
        if not isinstance(obj, dict):
            walker.tree.root = repr(obj) if isinstance(obj, OpaqueObject) else type(obj).__name__
        walker.visit(obj, "", 0)
    return walker.tree


def _join(prefix: str, key: object) -> str:
    text = key if isinstance(key, str) else str(key)
    return f"{prefix}.{text}" if prefix else text


class _Walker:
    def __init__(self) -> None:
        self.tree = Tree()
        self._by_identity: dict[tuple[object, ...], str] = {}
        self._active: set[int] = set()  # containers on the current path, to stop at cycles
        self._nodes = 0
        bounds = limits.current()
        # Shared sub-objects can make a small pickle expand exponentially: count what is walked.
        self._max_nodes = bounds.pickle_objects
        self._max_depth = bounds.pickle_depth

    def visit(self, obj: object, name: str, depth: int) -> None:
        self._nodes += 1
        if self._nodes > self._max_nodes:
            raise CorruptCheckpointError(
                f"the pickle expands to more than {self._max_nodes:,} objects; if the file is trusted, raise the "
                f"limit with {limits.Limits.env_name('pickle_objects')}"
            )
        if depth > self._max_depth:
            raise CorruptCheckpointError(
                f"the pickle nests objects more than {self._max_depth} levels deep, at {name[:200]!r}; if the file "
                f"is trusted, raise the limit with {limits.Limits.env_name('pickle_depth')}"
            )
        if isinstance(obj, TensorRecord):
            self._tensor(name, obj)
        elif isinstance(obj, UnsupportedTensor):
            name = _unique(name, self.tree.tensors, self.tree.aliases, self.tree.unsupported)
            self.tree.unsupported[name] = unsupported_reason(obj)
        elif isinstance(obj, (dict, list, tuple, OpaqueObject)):
            if id(obj) in self._active:
                self._extra(name, "<cycle>")
                return
            self._active.add(id(obj))
            try:
                self._container(obj, name, depth)
            finally:
                self._active.discard(id(obj))
        else:
            self._extra(name, _leaf(obj))

    def _container(
        self, obj: dict[Any, Any] | list[Any] | tuple[Any, ...] | OpaqueObject, name: str, depth: int
    ) -> None:
        if isinstance(obj, dict):
            if not obj and name:
                self._extra(name, {})
            self._items(obj.items(), name, depth)
        elif isinstance(obj, (list, tuple)):
            if all(isinstance(v, _SCALARS) for v in obj):
                if name:
                    self._extra(name, [_leaf(v) for v in obj])
            else:
                self._items(enumerate(obj), name, depth)
        else:
            _refuse_module(obj, name)
            if name:
                self._extra(name, repr(obj))
            if obj.args:
                self.visit(obj.args, _join(name, "args"), depth + 1)
            if obj.kwargs:
                self.visit(obj.kwargs, _join(name, "kwargs"), depth + 1)
            state = obj.state
            # BUILD state is a dict of attributes, or (dict, slot dict) for classes with __slots__.
            if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
                for part in state:
                    self._items((part or {}).items(), name, depth)
            elif isinstance(state, dict):
                self._items(state.items(), name, depth)
            elif state is not None:
                self.visit(state, _join(name, "state"), depth + 1)
            self._items(enumerate(obj.list_items), name, depth)
            self._items(obj.dict_items.items(), name, depth)

    def _items(self, items: Iterable[tuple[object, object]], name: str, depth: int) -> None:
        for key, value in items:
            self.visit(value, _join(name, key), depth + 1)

    def _tensor(self, name: str, rec: TensorRecord) -> None:
        name = _unique(name, self.tree.tensors, self.tree.aliases, self.tree.unsupported)
        identity = rec.identity()
        first = self._by_identity.get(identity)
        if first is not None:
            self.tree.aliases[name] = first
        else:
            self._by_identity[identity] = name
            self.tree.tensors[name] = rec

    def _extra(self, name: str, value: object) -> None:
        self.tree.extras[_unique(name or "value", self.tree.extras)] = value


_REMEDIES = {
    "quantized": "dequantize() it (or save its int_repr() and its scales and zero points as tensors)",
    "sparse": "make it dense with to_dense()",
    "nested": "unbind() it into dense tensors",
}


def unsupported_reason(tensor: UnsupportedTensor) -> str:
    """Why ckptkit cannot read the tensor and what to do, to follow "tensor 'name' is ..."."""
    detail = f" ({tensor.detail})" if tensor.detail else ""
    shape = f" of shape {list(tensor.shape)}" if tensor.shape is not None else ""
    return (
        f"a {tensor.kind} tensor{detail}{shape}, which ckptkit cannot read; {_remedy(tensor.kind)} in PyTorch and "
        "save again"
    )


def _remedy(kind: str) -> str:
    if kind in _REMEDIES:
        return _REMEDIES[kind]
    if kind.endswith("Storage") or kind in unpickler.OTHER_TORCH_DTYPES:
        wider = "complex64" if kind.lower().startswith(("complex", "chalf")) else "float16"
        return f"cast it to a standard dtype (.to(torch.{wider})) or reinterpret its bytes (.view(torch.uint8))"
    return "convert it to a dense CPU tensor of a standard dtype"


# Every torch.nn.Module pickles its attribute dict with these keys; a state_dict never does.
_MODULE_ATTRIBUTES = frozenset({"_parameters", "_buffers", "_modules"})


def _refuse_module(obj: OpaqueObject, name: str) -> None:
    """Refuse a whole pickled ``nn.Module``: its tensors sit under private attributes, not a state dict."""
    state = obj.state[0] if isinstance(obj.state, tuple) and obj.state else obj.state
    if isinstance(state, dict) and state.keys() >= _MODULE_ATTRIBUTES:
        where = f" at {name!r}" if name else ""
        raise UnsupportedError(
            f"the file holds a whole pickled torch.nn.Module ({type(obj).qualname()}{where}), not a state_dict; "
            "ckptkit does not rebuild modules, which would run their class's code. If you trust the file, load it "
            "in PyTorch (torch.load(path, weights_only=False)), save model.state_dict() with torch.save and "
            "convert that"
        )


def _unique(name: str, *taken: dict[str, Any]) -> str:
    # Keys such as 1 and "1" name the same path; number the later ones rather than lose them.
    candidate, n = name, 1
    while any(candidate in t for t in taken):
        n += 1
        candidate = f"{name}~{n}"
    return candidate


def _numpy_scalar_type() -> Any:
    # Only the unpickler builds numpy scalars, and it imports numpy to do so: without numpy
    # loaded there can be none, and headers are read without loading it.
    np = sys.modules.get("numpy")
    return np.generic if np is not None else ()


def _leaf(obj: object) -> Any:
    """A JSON-able stand-in for a non-tensor value."""
    if isinstance(obj, int) and not isinstance(obj, bool) and obj.bit_length() > 256:
        return f"<int of {obj.bit_length()} bits>"
    if isinstance(obj, _numpy_scalar_type()):  # before the scalar check: np.float64 is a float subclass
        value = obj.item()
        return value if isinstance(value, _SCALARS) else str(value)
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, PickledArray):
        arr = obj.array
        if arr is None:
            return "<ndarray>"
        if arr.size <= MAX_ARRAY_LIST and arr.dtype.kind in "biuf":
            return arr.tolist()
        return f"<ndarray {arr.dtype} {list(arr.shape)}>"
    if isinstance(obj, (bytes, bytearray)):
        return f"<{len(obj)} bytes>"
    if isinstance(obj, (set, frozenset)):
        items = list(obj)
        if all(isinstance(v, _SCALARS) for v in items):
            return sorted((_leaf(v) for v in items), key=repr)
    if isinstance(obj, Marker):
        return repr(obj)
    return str(obj)
