"""Which derivation gives each tensor of a model, proven from BASE, checked against NEW.

For every initializer, Constant value and shared (Identity) name of the template, the kinds of
:mod:`.kinds` propose candidates tier by tier; a candidate counts once computing it from BASE
reproduces the model's value. The first tier with a proof settles the target; among its proofs,
those from a checkpoint tensor of the target's own name win. Proofs that remain side by side
(BASE cannot tell them apart, say two equal tensors) must give the same NEW value, or the
conversion is refused.

Then every tensor of NEW must land: as a source of some derivation, as a tensor the exporter
merged with an equal one (and still equal in NEW), or as a BatchNorm's ``num_batches_tracked``,
which inference never reads. Template tensors that derive from nothing in BASE are the graph's
own constants and stay as they are, unless a network reads them as a weight.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ckptkit.core.compare import arrays_identical
from ckptkit.core.errors import UnsupportedError, UsageError
from ckptkit.core.model import Checkpoint, TensorInfo

from ..reader import OnnxCheckpoint
from .graphview import GraphView, Node, Use
from .kinds import KINDS, BatchNormGroup, Copy, Derivation, Reader, Target, Transposed, castable
from .values import fingerprint

_SHOWN = 6
UNUSED_SUFFIX = "num_batches_tracked"


def some(names: Sequence[str], shown: int = _SHOWN) -> str:
    text = ", ".join(names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def checkpoint_reader(ckpt: Checkpoint) -> Reader:
    return lambda name: ckpt.read_tensor(ckpt.aliases.get(name, name))


def template_targets(template: OnnxCheckpoint, view: GraphView) -> dict[str, Target]:
    """Every slot of the template, and every Identity output that reads one (a shared initializer)."""
    targets: dict[str, Target] = {}
    by_graph_name: dict[str, str] = {}
    for name, slot in template.slots.items():
        targets[name] = Target(name, template.info(name), view.uses_of(slot.name))
        by_graph_name.setdefault(slot.name, name)
    for node in view.identities():
        src = by_graph_name.get(node.inputs[0])
        out = node.outputs[0]
        if src is None or out in targets or out in by_graph_name:
            continue
        info = template.info(src)
        targets[out] = Target(out, TensorInfo(out, info.dtype, info.shape), view.uses_of(out), identity=node, reads=src)
    return targets


class Context:
    """What the kinds search in: the BASE checkpoint (indexed lazily) and the graph."""

    def __init__(self, base: Checkpoint, view: GraphView, planner: Planner) -> None:
        self.base = base
        self.view = view
        self.planner = planner
        self.infos: dict[str, TensorInfo] = {ti.name: ti for ti in base.tensor_infos()}
        self._index: dict[str, dict[bytes, list[str]]] = {}
        self._groups = _batchnorm_groups(self.infos)
        self._grouped = {n for g in self._groups for n in g.names}
        self.read: Reader = lru_cache(maxsize=8)(checkpoint_reader(base))  # a fold reads 6 at once

    def base_info(self, name: str | None) -> TensorInfo | None:
        if name is None:
            return None
        return self.infos.get(self.base.aliases.get(name, name))

    def lookup(self, value: np.ndarray) -> list[str]:
        """BASE tensors that may hold ``value`` (any shape, cast to its type); proving tells which do."""
        key = value.dtype.str
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = {}
            for name, info in self.infos.items():
                if info.dtype.kind not in "fiub" or info.numel == 0:
                    continue
                if info.dtype.numpy != value.dtype and not castable(info, _info_of(value)):
                    continue
                data = self.read(name)
                index.setdefault(fingerprint(data, value.dtype), []).append(name)
        return index.get(fingerprint(value), [])

    def larger_along_one_axis(
        self, shape: tuple[int, ...], target: TensorInfo
    ) -> Iterator[tuple[str, TensorInfo, int]]:
        """BASE tensors that agree with ``shape`` on every axis but one, where they are longer."""
        for name, info in self.infos.items():
            if len(info.shape) != len(shape) or not castable(info, target) or info.dtype.kind != "f":
                continue
            longer = [i for i, (a, b) in enumerate(zip(info.shape, shape, strict=True)) if a != b]
            if len(longer) == 1 and info.shape[longer[0]] > shape[longer[0]]:
                yield name, info, longer[0]

    def bn_groups(self, channels: int) -> list[BatchNormGroup]:
        return [g for g in self._groups if self.infos[g.mean].shape == (channels,)]

    def in_bn_group(self, name: str) -> bool:
        return name in self._grouped

    def proven_for_input(self, node: Node, index: int) -> list[Derivation]:
        """What the tensor at ``node``'s input ``index`` was proven to be (resolving it if need be)."""
        if index >= len(node.inputs):
            return []
        name = self.planner.target_for_graph_name(node.inputs[index])
        return self.planner.resolve(name) if name else []


def _info_of(value: np.ndarray) -> TensorInfo:
    from ckptkit.core.dtypes import from_numpy

    return TensorInfo("", from_numpy(value.dtype), tuple(value.shape))


def _batchnorm_groups(infos: Mapping[str, TensorInfo]) -> list[BatchNormGroup]:
    groups = []
    for name, info in infos.items():
        if not name.endswith("running_mean") or len(info.shape) != 1:
            continue
        prefix = name[: -len("running_mean")]
        var = prefix + "running_var"
        if infos.get(var) is None or infos[var].shape != info.shape:
            continue
        weight, bias = prefix + "weight", prefix + "bias"
        groups.append(
            BatchNormGroup(
                prefix,
                name,
                var,
                weight if weight in infos and infos[weight].shape == info.shape else None,
                bias if bias in infos and infos[bias].shape == info.shape else None,
            )
        )
    return groups


def batchnorm_prefixes(names: Sequence[str]) -> list[str]:
    """The BatchNorm modules among PyTorch checkpoint names: ``P.`` of ``P.running_mean`` with ``P.running_var``."""
    have = set(names)
    return [n[: -len("running_mean")] for n in names if n.endswith("running_mean") and n[:-4] + "var" in have]


@dataclass
class Plan:
    """What to write: a derivation per replaced template tensor, and Identity outputs to make Constants of."""

    derivations: dict[str, Derivation] = field(default_factory=dict)
    constants: dict[str, tuple[Node, Derivation]] = field(default_factory=dict)
    transformed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Planner:
    """Proves a derivation for each template tensor from BASE, then checks that NEW fits them."""

    def __init__(self, template: OnnxCheckpoint, base: Checkpoint, view: GraphView) -> None:
        self.template = template
        self.view = view
        self.targets = template_targets(template, view)
        self._graph_names = {slot.name: name for name, slot in reversed(template.slots.items())}
        self.ctx = Context(base, view, self)
        self.memo: dict[str, list[Derivation]] = {}

    def target_for_graph_name(self, graph_name: str) -> str | None:
        if graph_name in self._graph_names:
            return self._graph_names[graph_name]
        return graph_name if graph_name in self.targets else None

    def value(self, target: Target) -> np.ndarray:
        return np.asarray(self.template.read_tensor(target.reads or target.name))

    def resolve(self, name: str) -> list[Derivation]:
        if name in self.memo:
            return self.memo[name]
        self.memo[name] = []  # a fold's bias asks for its weight; nothing asks back
        target = self.targets[name]
        if target.value is None:
            target.value = self.value(target)
        # A tensor of BASE with the target's name, as it is or transposed: when that proves, the
        # name-preference below would keep only it, so the searches by value are skipped.
        result = [d for d in self._named(target) if self._proves(d, target)]
        if result:
            self.memo[name] = result
            return result
        for tier in sorted({k.tier for k in KINDS}):
            proven: list[Derivation] = []
            seen: set[tuple[object, ...]] = set()
            for kind in (k for k in KINDS if k.tier == tier):
                for candidate in kind.propose(target, self.ctx):
                    key = candidate.key()
                    if key in seen:
                        continue
                    seen.add(key)
                    if self._proves(candidate, target):
                        proven.append(candidate)
            if proven:
                named = [d for d in proven if target.name in d.sources]
                result = named or proven
                break
        self.memo[name] = result
        return result

    def _named(self, target: Target) -> list[Derivation]:
        info = self.ctx.base_info(target.name)
        if info is None or not castable(info, target.info) or info.numel != target.info.numel:
            return []
        named: list[Derivation] = [Copy(target, target.name, info)]
        if len(info.shape) == 2 and info.shape[::-1] == target.shape:
            named.append(Transposed(target, target.name, info))
        return named

    def _proves(self, candidate: Derivation, target: Target) -> bool:
        assert target.value is not None
        try:
            return candidate.prove(self.ctx.read, target.value, self.ctx)
        except (ValueError, IndexError):  # a candidate whose shapes do not line up
            return False

    def plan(self, new: Checkpoint, allow_partial: bool) -> Plan:
        """Prove every target, check NEW against the proofs, and say what to write (or refuse)."""
        base_path = self.ctx.base.path
        read_new = checkpoint_reader(new)
        new_infos = {ti.name: ti for ti in new.tensor_infos()}
        new_names = set(new_infos) | set(new.aliases)
        problems: list[str] = []

        missing_in_base = [n for n in new_infos if self.ctx.base_info(n) is None]
        if missing_in_base:
            raise UsageError(
                f"NEW has tensors BASE lacks ({some(missing_in_base)}): --base must be the checkpoint the "
                "--template model was exported from, with the same names as NEW",
                base_path,
            )
        changed = [
            f"{n} ({b.dtype.name} {list(b.shape)} in BASE, {ti.dtype.name} {list(ti.shape)} in NEW)"
            for n, ti in new_infos.items()
            if (b := self.ctx.base_info(n)) is not None and (b.dtype, b.shape) != (ti.dtype, ti.shape)
        ]
        if changed:
            raise UsageError(
                f"tensors differ in type or shape between BASE and NEW: {some(changed, 3)}; a derivation "
                "proven on BASE holds only for the same tensors (cast NEW back, or re-export the model)",
                base_path,
            )

        plan = Plan()
        landed: set[str] = set()
        kept_constants: list[str] = []
        kept_partial: list[str] = []
        unproven_weights: list[str] = []
        for name, target in self.targets.items():
            proofs = self.resolve(name)
            if not proofs:
                if target.identity is None:
                    self._unproven(target, kept_constants, unproven_weights)
                continue
            absent = sorted({s for d in proofs for s in d.sources if s not in new_names})
            if absent:
                if all(s not in new_names for d in proofs for s in d.sources):
                    if allow_partial:
                        kept_partial.append(name)
                        continue
                    problems.append(
                        f"{name!r} derives from {some(absent)}, which NEW lacks (left out, or not in it); pass "
                        "--allow-partial to keep the model's value"
                    )
                else:
                    problems.append(f"{name!r} derives from {some(absent)}, which NEW lacks, and from tensors NEW has")
                continue
            first = proofs[0]
            if len(proofs) > 1:
                result = first.apply(read_new)
                differ = [d for d in proofs[1:] if not first.agrees(result, d.apply(read_new), read_new)]
                if differ:
                    ways = "; ".join(d.explain() for d in [first, *differ][:3])
                    problems.append(
                        f"BASE cannot tell how {name!r} derives ({ways}): these give the same value on BASE "
                        "but not on NEW; export the template from a checkpoint where the tensors involved differ"
                    )
                    continue
            for d in proofs:
                landed.update(d.sources)
            if target.identity is not None:
                self._identity(target, first, read_new, plan)
                continue
            plan.derivations[name] = first
            plan.transformed[name] = first.describe() + (
                f" (also {'; '.join(d.explain() for d in proofs[1:])}: same NEW value)" if len(proofs) > 1 else ""
            )

        unused = [n for n in new_infos if n.endswith(UNUSED_SUFFIX) and new_infos[n].dtype.kind in "iu"]
        merged: list[str] = []
        homeless: list[str] = []
        for name in new_infos:
            if name in landed or name in unused:
                continue
            twin = self._twin(name, landed)
            if twin is None:
                homeless.append(name)
            elif arrays_identical(read_new(name), read_new(twin)):
                merged.append(f"{name} = {twin}")
            else:
                problems.append(
                    f"{name!r} equals {twin!r} in BASE and the model holds one tensor for both (the exporter "
                    "merged them); NEW gives them different values, which this graph cannot hold: export "
                    f"the template from NEW, or leave {name!r} out with --exclude if the model does not use it"
                )
        if homeless and unproven_weights and not allow_partial:
            problems.append(
                f"cannot prove how {len(unproven_weights)} model tensor(s) read as weights derive from BASE "
                f"({some(unproven_weights)}), and {len(homeless)} tensor(s) of NEW land nowhere "
                f"({some(homeless)}): ckptkit knows no derivation from the ones to the others. Leave NEW's "
                "out with --exclude and keep the model's values with --allow-partial if the model does not use them"
            )
        elif homeless:
            problems.append(
                f"{len(homeless)} tensor(s) of NEW have no place in the model ({some(homeless)}): no template "
                "tensor derives from them; leave them out with --exclude if the model does not use them"
            )
        elif unproven_weights and not allow_partial:
            problems.append(
                f"{len(unproven_weights)} model tensor(s) read as weights derive from no tensor of BASE "
                f"({some(unproven_weights)}); pass --allow-partial to keep their values"
            )
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise UnsupportedError(problems[0] + more, self.template.path)

        total = len(self.template.slots)
        plan.notes.append(f"derived {len(plan.derivations)} of {total} tensors of {self.template.path} from --base")
        kept_partial += unproven_weights
        if kept_partial:
            plan.notes.append(f"initializers kept from the model ({len(kept_partial)}): {some(kept_partial)}")
        if kept_constants:
            plan.notes.append(f"graph constants kept ({len(kept_constants)}): {some(kept_constants)}")
        if unused:
            plan.notes.append(f"not used by inference ({len(unused)}): {some(unused)}")
        if merged:
            plan.notes.append(f"merged by the exporter, equal in NEW too ({len(merged)}): {some(merged)}")
        return plan

    def _unproven(self, target: Target, constants: list[str], weights: list[str]) -> None:
        assert target.value is not None
        role = self.view.weight_role(self.template.slots[target.name].name)
        if role is not None and target.value_is_evidence():
            weights.append(f"{target.name} ({role.describe()})")
        else:
            constants.append(target.name)

    def _twin(self, name: str, landed: set[str]) -> str | None:
        """A landed BASE tensor equal to BASE's ``name`` bit for bit: the exporter may have merged the two."""
        info = self.ctx.base_info(name)
        if info is None:
            return None
        mine = self.ctx.read(name)
        for other in sorted(landed):
            o = self.ctx.base_info(other)
            same_kind = o is not None and (o.dtype, o.shape) == (info.dtype, info.shape) and other != name
            if same_kind and arrays_identical(mine, self.ctx.read(other)):
                return other
        return None

    def _identity(self, target: Target, d: Derivation, read_new: Reader, plan: Plan) -> None:
        """An Identity output proven from BASE: still shared if NEW agrees, else written as a Constant."""
        assert target.identity is not None
        proofs = self.resolve(target.reads)
        src = plan.derivations.get(target.reads) or (proofs[0] if proofs else None)
        mine = d.apply(read_new)
        theirs = src.apply(read_new) if src is not None else np.asarray(self.template.read_tensor(target.reads))
        if arrays_identical(mine, theirs):
            plan.transformed[target.name] = f"{d.explain()}; still shared with {target.reads} through Identity"
            return
        plan.constants[target.name] = (target.identity, d)
        plan.transformed[target.name] = (
            f"{d.explain()}; was shared with {target.reads} through Identity, now a Constant of its own"
        )


def uses_text(uses: Sequence[Use]) -> str:
    return ", ".join(sorted({u.describe() for u in uses}))
