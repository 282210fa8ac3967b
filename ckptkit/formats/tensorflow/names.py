"""Names people recognise for the variables of a TF2 object-based checkpoint.

``tf.train.Checkpoint`` keys each variable by the first path that reaches it in the object graph
(``optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE``, ``model/layer_with_weights-0/
kernel/...``), which often runs through the optimizer and never names the layer. The object graph,
saved beside the tensors under ``_CHECKPOINTABLE_OBJECT_GRAPH``, has what is needed instead:

- each variable's ``full_name``, the name TensorFlow gave it (``dense/kernel`` in Keras 2,
  ``sequential/dense/kernel`` in Keras 3 where the model's own name comes first and is dropped
  here, as Keras's ``.weights.h5`` files leave it out);
- the paths from the root to each variable, so variables reached only through an optimizer object
  (one with slot variables, or one attached as ``optimizer``) are told apart as optimizer state,
  named ``optimizer/...``: a slot as ``optimizer/<its variable's name>/<slot>``, a Keras 3
  optimizer variable as ``optimizer/vars/<i>`` as in ``.weights.h5`` files;
- ``save_counter`` (and a ``step``, ``global_step`` or ``epoch`` scalar at the root), which are
  training state, not weights: they become extras.

Where ``full_name`` is missing or two variables share one, the object path names the variable
instead (``a/kernel`` for ``model/a/_kernel``). Names that would still collide keep their key.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from .protos import Node

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
VARIABLE_VALUE = "VARIABLE_VALUE"
OPTIMIZER = "optimizer"
EXTRA_NAMES = ("save_counter", "step", "global_step", "epoch")


@dataclass
class Naming:
    """For each checkpoint key: the name to show, and what kind of value it is."""

    names: dict[str, str] = field(default_factory=dict)  # key -> name
    order: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # key -> where it is listed
    extras: dict[str, str] = field(default_factory=dict)  # key -> extra's name
    optimizer: set[str] = field(default_factory=set)  # names of optimizer state


def plain_name(key: str) -> str:
    """A key without the ``/.ATTRIBUTES/VARIABLE_VALUE`` TensorFlow appends to variables."""
    return key[: -len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key


def _paths(nodes: list[Node], starts: Mapping[int, list[str]], blocked: Collection[int]) -> dict[int, list[str]]:
    """The first path (breadth first, children in order) to every node, not entering ``blocked`` ones."""
    found = dict(starts)
    queue = deque(starts)
    while queue:
        node = queue.popleft()
        for child in nodes[node].children:
            if child.node_id in found:
                continue
            found[child.node_id] = [*found[node], child.local_name]
            if child.node_id not in blocked:
                queue.append(child.node_id)
    return found


def _drop_model_name(full_names: dict[str, str]) -> dict[str, str]:
    """Keras 3 puts the model's name first (``sequential/dense/kernel``); drop it when all share it."""
    parts = [n.split("/") for n in full_names.values()]
    if parts and all(len(p) >= 3 for p in parts) and len({p[0] for p in parts}) == 1:
        return {k: n.split("/", 1)[1] for k, n in full_names.items()}
    return full_names


def _path_name(path: list[str], drop_root: bool = True) -> str:
    """``model/a/_kernel`` -> ``a/kernel``: the attribute path (below the root's child when
    ``drop_root``), the private mark of the variable's attribute dropped."""
    parts = path[1:] if drop_root and len(path) > 1 else path
    return "/".join([*parts[:-1], parts[-1].lstrip("_") or parts[-1]])


def name_variables(nodes: list[Node], keys: Collection[str], scalars: Collection[str]) -> Naming:
    """Names for ``keys`` (the checkpoint's tensors) from the object graph ``nodes``.

    ``scalars`` are the keys of scalar integer tensors, which may be extras.
    """
    naming = Naming()
    if not nodes:
        return naming
    owner: dict[str, tuple[int, str]] = {}  # key -> (node, full_name)
    for i, obj in enumerate(nodes):
        for attr in obj.attributes:
            if attr.name == VARIABLE_VALUE and attr.checkpoint_key in keys:
                owner.setdefault(attr.checkpoint_key, (i, attr.full_name))
    slots = {s.slot_variable_node_id: (s.original_variable_node_id, s.slot_name, i)
             for i, n in enumerate(nodes) for s in n.slot_variables}  # fmt: skip
    optimizers = {i for i, n in enumerate(nodes) if n.slot_variables}
    optimizers |= {c.node_id for n in nodes for c in n.children if c.local_name == OPTIMIZER}
    optimizers.discard(0)
    model_paths = _paths(nodes, {0: []}, optimizers)
    opt_roots = {o: model_paths.get(o) for o in optimizers}
    prefixes: dict[int, str] = {}
    for o in sorted(optimizers, key=lambda o: (opt_roots[o] is None, len(opt_roots[o] or []), o)):
        prefixes[o] = OPTIMIZER if not prefixes else f"{OPTIMIZER}_{len(prefixes)}"

    model: dict[str, list[str]] = {}
    full: dict[str, str] = {}
    for key, (node, full_name) in owner.items():
        path = model_paths.get(node)
        if node in optimizers or path is None or node in slots:
            continue
        if len(path) == 1 and path[0] in EXTRA_NAMES and key in scalars:
            naming.extras[key] = path[0]
            continue
        model[key] = path
        full[key] = full_name
    # A full name with a scope (dense/kernel) names a Keras layer's variable; a bare one (kernel,
    # Variable) says less than the object path does.
    counts = Counter(full.values())
    scoped = {k: n for k, n in full.items() if "/" in n and counts[n] == 1}
    chosen = _drop_model_name(scoped) if len(scoped) == len(full) else scoped
    one_root = len({path[0] for path in model.values()}) == 1  # tf.train.Checkpoint(model=...) alone
    for key, path in model.items():
        naming.names[key] = chosen.get(key) or _path_name(path, one_root)
        naming.order[key] = (0, owner[key][0], "")

    for o, prefix in prefixes.items():
        members = _paths(nodes, {o: []}, ())
        listed = {c.node_id: c.local_name for ch in nodes[o].children if ch.local_name == "_variables"
                  for c in nodes[ch.node_id].children}  # fmt: skip
        for key, (node, _full) in owner.items():
            if key in naming.names or key in naming.extras or node in slots or node not in members:
                continue
            if node in listed and listed[node].isdigit():
                naming.names[key] = f"{prefix}/vars/{listed[node]}"
                naming.order[key] = (1, int(listed[node]), "")
            else:
                naming.names[key] = f"{prefix}/{_path_name([prefix, *members[node]])}"
                naming.order[key] = (1, (1 << 40) + node, "")
            naming.optimizer.add(naming.names[key])
    by_node = {node: key for key, (node, _full) in owner.items()}
    for key, (node, _full) in owner.items():
        if node in slots and key not in naming.names:
            original, slot_name, o = slots[node]
            base = naming.names.get(by_node.get(original, ""), "") or plain_name(by_node.get(original, key))
            naming.names[key] = f"{prefixes.get(o, OPTIMIZER)}/{base}/{slot_name}"
            naming.order[key] = (2, original, slot_name)
            naming.optimizer.add(naming.names[key])

    for key in keys:
        if key not in naming.extras and key not in naming.names:
            naming.names[key] = plain_name(key)
    # Two keys must never share a name: a clash reverts the keys involved to themselves (keys are
    # unique), until none is left.
    while True:
        counts = Counter(naming.names.values())
        clashing = [k for k, n in naming.names.items() if counts[n] > 1 and n != k]
        if not clashing:
            break
        for k in clashing:
            naming.names[k] = k
    naming.optimizer &= set(naming.names.values())
    return naming
