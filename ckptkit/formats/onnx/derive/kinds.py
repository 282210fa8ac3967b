"""How a model's tensor derives from checkpoint tensors: one small class per kind of derivation.

An exporter rarely stores a checkpoint tensor as it is: it renames it, transposes it for MatMul,
reorders and packs the gates of recurrent layers, folds BatchNorm into the convolution before it,
slices packed projections, scales, casts. Each kind here

- ``propose``\\ s candidates for one model tensor (a :class:`Target`) from what the graph says about
  it (which node reads it, at which input) and from an index of the BASE checkpoint (shapes,
  content fingerprints), so that no kind tries every pair of tensors;
- ``compute``\\ s the model tensor from checkpoint tensors, with the exporter's arithmetic in the
  model's element type, operation by operation;
- is ``prove``\\ d by computing it from BASE and comparing with the model's value (bit for bit,
  or within ``bound_ulp`` units in the last place for kinds that do arithmetic), and ``apply``\\ ed
  to NEW.

Kinds are tried by ``tier``, simplest first; the first tier that proves anything settles a target.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ckptkit.core.compare import arrays_identical
from ckptkit.core.model import TensorInfo

from .graphview import RNN_OPS, WEIGHT_INPUTS, Node, Use
from .values import degenerate, ulp_distance, ulps_of

if TYPE_CHECKING:
    from .planner import Context

Reader = Callable[[str], np.ndarray]
"""A checkpoint's tensors by name (BASE when proving, NEW when applying)."""

NEVER = 2**62


@dataclass(eq=False)
class Target:
    """A tensor of the model to derive: an initializer, a Constant's value, or an Identity's output.

    An Identity output (``identity`` set) reads the value of the slot ``reads``; exporters use
    one to let a second name share an initializer.
    """

    name: str
    info: TensorInfo
    uses: list[Use]
    identity: Node | None = None
    reads: str = ""
    value: np.ndarray | None = field(default=None, repr=False)

    @property
    def dtype(self) -> np.dtype:
        return self.info.dtype.numpy

    @property
    def shape(self) -> tuple[int, ...]:
        return self.info.shape

    @property
    def is_float(self) -> bool:
        return self.info.dtype.kind == "f"

    def read_as_weight(self) -> bool:
        """Whether a node reads the target where networks read learned weights (Conv's W, MatMul's B...)."""
        return any(u.node.standard and u.index in WEIGHT_INPUTS.get(u.node.op, ()) for u in self.uses)

    def value_is_evidence(self) -> bool:
        """Whether finding this value in a checkpoint says where it came from.

        Integers (shapes, indices) and values whose elements are all alike (zeros, ones, scalars)
        turn up everywhere: only a tensor of the same name explains them.
        """
        assert self.value is not None
        return self.is_float and not degenerate(self.value)


def cast(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a`` in the model's element type (rounded to nearest even, as torch's ``.to`` does)."""
    return a if a.dtype == dtype else a.astype(dtype)


def castable(src: TensorInfo, dst: TensorInfo) -> bool:
    """Whether a checkpoint tensor of ``src``'s type can become one of ``dst``'s by a cast or as it is."""
    if src.dtype == dst.dtype:
        return True
    # float8 and narrower: libraries round and saturate differently, so no cast to them is assumed.
    return src.dtype.kind == "f" and dst.dtype.kind == "f" and dst.dtype.itemsize >= 2


class Derivation(ABC):
    """One way a target is computed from checkpoint tensors."""

    kind: ClassVar[str]
    tier: ClassVar[int]
    bound_ulp: ClassVar[int] = 0

    def __init__(self, target: Target, sources: tuple[str, ...]) -> None:
        self.target = target
        self.sources = sources
        self.ulp = 0  # measured when proven

    @classmethod
    @abstractmethod
    def propose(cls, target: Target, ctx: Context) -> Iterator[Derivation]:
        """Candidates for ``target``, found from the graph and the BASE index."""

    @abstractmethod
    def compute(self, read: Reader) -> np.ndarray:
        """The target's value computed from the tensors ``read`` gives, in its type and shape."""

    @abstractmethod
    def explain(self) -> str:
        """The derivation in words, for the receipt."""

    def key(self) -> tuple[object, ...]:
        """What tells two candidates apart (kind, sources, parameters)."""
        return (self.kind, self.sources)

    def measure(self, got: np.ndarray, want: np.ndarray, read: Reader) -> int:
        """How far apart two values of the target are: 0 bit-equal, else ulps (or :data:`NEVER` for exact kinds)."""
        if self.bound_ulp:
            return ulp_distance(got, want)
        return 0 if arrays_identical(got, want) else NEVER

    def prove(self, base_tensors: Reader, template_value: np.ndarray, graph_context: Context) -> bool:
        """Whether computing from BASE gives the model's value, within this kind's bound."""
        got = self.compute(base_tensors)
        if got.shape != template_value.shape or got.dtype != template_value.dtype:
            return False
        self.ulp = self.measure(got, template_value, base_tensors)
        return self.ulp <= self.bound_ulp

    def apply(self, new_tensors: Reader) -> np.ndarray:
        """The target's new value, computed from NEW."""
        return np.asarray(self.compute(new_tensors), order="C")  # ascontiguousarray makes 0-d arrays 1-d

    def agrees(self, a: np.ndarray, b: np.ndarray, read: Reader) -> bool:
        """Whether two results of candidates proven alike are one value, as far as this kind can tell."""
        return self.measure(a, b, read) <= self.bound_ulp

    def describe(self) -> str:
        """:meth:`explain`, and how closely BASE reproduced the model's value."""
        if not self.bound_ulp:
            return self.explain()
        exact = "bit-exact" if self.ulp == 0 else f"within {self.ulp} ulp"
        return f"{self.explain()} ({exact} on BASE; bound {self.bound_ulp} ulp)"


def _names(names: Sequence[str]) -> str:
    return ", ".join(names)


class Copy(Derivation):
    """The checkpoint tensor as it is, under the same name or another; cast and reshaped if need be."""

    kind = "copy"
    tier = 1

    def __init__(self, target: Target, source: str, source_info: TensorInfo) -> None:
        super().__init__(target, (source,))
        self.source_info = source_info

    @classmethod
    def propose(cls, target: Target, ctx: Context) -> Iterator[Derivation]:
        own = ctx.base_info(target.name)
        if own is not None and own.numel == target.info.numel and castable(own, target.info):
            yield cls(target, target.name, own)
        if target.value_is_evidence():
            assert target.value is not None
            for name in ctx.lookup(target.value):
                if name != target.name:
                    yield cls(target, name, ctx.infos[name])

    @property
    def as_is(self) -> bool:
        """Same type and shape: the bytes can be copied without decoding."""
        return self.source_info.dtype == self.target.info.dtype and self.source_info.shape == self.target.shape

    def compute(self, read: Reader) -> np.ndarray:
        return cast(read(self.sources[0]), self.target.dtype).reshape(self.target.shape)

    def explain(self) -> str:
        src = self.sources[0]
        how = "same name" if src == self.target.name else f"renamed from {src}"
        return how + _changes(self.source_info, self.target.info)


def _changes(src: TensorInfo, dst: TensorInfo, shape: tuple[int, ...] | None = None) -> str:
    notes = []
    if src.dtype != dst.dtype:
        notes.append(f"cast {src.dtype.name} -> {dst.dtype.name}")
    have = src.shape if shape is None else shape
    if have != dst.shape:
        notes.append(f"reshaped {list(have)} -> {list(dst.shape)}")
    return "".join(f", {n}" for n in notes)


class Transposed(Copy):
    """A 2-D checkpoint tensor transposed: a Linear weight ``[out, in]`` as MatMul's ``B`` ``[in, out]``."""

    kind = "transposed"
    tier = 1

    @classmethod
    def propose(cls, target: Target, ctx: Context) -> Iterator[Derivation]:
        if len(target.shape) != 2 or target.shape[0] == 0 or target.shape[1] == 0:
            return
        own = ctx.base_info(target.name)
        if own is not None and own.shape == target.shape[::-1] and castable(own, target.info):
            yield cls(target, target.name, own)
        if target.value_is_evidence():
            assert target.value is not None
            for name in ctx.lookup(target.value.T):
                info = ctx.infos[name]
                if name != target.name and len(info.shape) == 2:
                    yield cls(target, name, info)

    def compute(self, read: Reader) -> np.ndarray:
        src = read(self.sources[0])
        if src.ndim != 2:
            raise ValueError("not a matrix")
        return np.ascontiguousarray(cast(src, self.target.dtype).T)

    def explain(self) -> str:
        src = self.sources[0]
        return f"{src} transposed" + _changes(self.source_info, self.target.info, self.source_info.shape[::-1])


class Sliced(Derivation):
    """A contiguous range of a checkpoint tensor along one axis, then transposed if it is a matrix.

    ``nn.MultiheadAttention`` packs the query, key and value projections in ``in_proj_weight``;
    an exporter that folds the split stores each (often transposed) as its own initializer. A
    position embedding read at fixed positions becomes the rows it reads.
    """

    kind = "sliced"
    tier = 2

    def __init__(self, target: Target, source: str, info: TensorInfo, axis: int, start: int, transposed: bool) -> None:
        super().__init__(target, (source,))
        self.source_info = info
        self.axis, self.start, self.transposed = axis, start, transposed

    @property
    def stop(self) -> int:
        shape = self.target.shape[::-1] if self.transposed else self.target.shape
        return self.start + shape[self.axis]

    def key(self) -> tuple[object, ...]:
        return (self.kind, self.sources, self.axis, self.start, self.transposed)

    @classmethod
    def propose(cls, target: Target, ctx: Context) -> Iterator[Derivation]:
        if not target.shape or not target.value_is_evidence():
            return
        assert target.value is not None
        orientations = [(target.value, False)]
        if len(target.shape) == 2:
            orientations.append((target.value.T, True))
        for want, transposed in orientations:
            for name, info, axis in ctx.larger_along_one_axis(want.shape, target.info):
                for start in _offsets(ctx.read(name), want, axis):
                    yield cls(target, name, info, axis, start, transposed)

    def compute(self, read: Reader) -> np.ndarray:
        src = read(self.sources[0])
        index = [slice(None)] * src.ndim
        index[self.axis] = slice(self.start, self.stop)
        part = cast(src[tuple(index)], self.target.dtype)
        return np.ascontiguousarray(part.T if self.transposed else part)

    def explain(self) -> str:
        where = ", ".join(
            f"{self.start}:{self.stop}" if i == self.axis else ":" for i in range(len(self.source_info.shape))
        )
        text = f"{self.sources[0]}[{where}]" + (" transposed" if self.transposed else "")
        cast_note = _changes(self.source_info, self.target.info, self.target.shape)
        return text + cast_note


def _offsets(src: np.ndarray, want: np.ndarray, axis: int) -> Iterator[int]:
    """Where along ``axis`` of ``src`` (cast to ``want``'s type) the rows of ``want`` start."""
    length = want.shape[axis]
    rows = cast(np.moveaxis(src, axis, 0), want.dtype).reshape(src.shape[axis], -1)
    first = np.ascontiguousarray(np.moveaxis(want, axis, 0).reshape(length, -1)[0])
    width = rows.dtype.itemsize
    as_int = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(width)
    if as_int is None:
        return
    hits = np.flatnonzero((np.ascontiguousarray(rows).view(as_int) == first.view(as_int)).all(axis=1))
    for start in hits:
        if start + length <= src.shape[axis]:
            yield int(start)


# Recurrent layers: PyTorch stacks its gates as LSTM (i, f, g, o) and GRU (r, z, n); ONNX as LSTM
# (i, o, f, c) and GRU (z, r, h). ONNX gate k is PyTorch gate GATES[op][k].
GATES = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}


def to_onnx_gates(a: np.ndarray, op: str) -> np.ndarray:
    order = GATES[op]
    blocks = np.split(a, len(order), axis=0)
    return np.concatenate([blocks[k] for k in order], axis=0)


def to_torch_gates(a: np.ndarray, op: str) -> np.ndarray:
    order = GATES[op]
    blocks = np.split(a, len(order), axis=0)
    back = [np.empty(0)] * len(order)
    for k, torch_index in enumerate(order):
        back[torch_index] = blocks[k]
    return np.concatenate(back, axis=0)


class RnnPacked(Derivation):
    """ONNX LSTM/GRU/RNN ``W``, ``R`` or ``B``: PyTorch's per-direction weights, gates reordered and stacked.

    ``W[d]`` is ``weight_ih`` of direction ``d`` (forward, then reverse), ``R[d]`` is
    ``weight_hh``, and ``B[d]`` is ``bias_ih`` followed by ``bias_hh``, each with its gates in
    ONNX order.
    """

    kind = "rnn-packed"
    tier = 1

    def __init__(self, target: Target, op: str, sources: tuple[str, ...], infos: tuple[TensorInfo, ...]) -> None:
        super().__init__(target, sources)
        self.op = op
        self.infos = infos

    @classmethod
    def propose(cls, target: Target, ctx: Context) -> Iterator[Derivation]:
        use = next((u for u in target.uses if u.node.op in RNN_OPS and u.node.standard and u.index in (1, 2, 3)), None)
        if use is None or len(target.shape) != (3 if use.index < 3 else 2) or target.value is None:
            return
        if not target.is_float:
            return
        op = use.node.op
        gates = len(GATES[op])
        if target.shape[1] % (gates * (2 if use.index == 3 else 1)):
            return
        roles = {1: ("weight_ih",), 2: ("weight_hh",), 3: ("bias_ih", "bias_hh")}[use.index]
        slots = [(d, role) for d in range(target.shape[0]) for role in roles]  # one per PyTorch tensor
        per_block: list[list[str]] = []
        families: set[tuple[str, str]] = set()
        for d in range(target.shape[0]):
            rows = np.split(target.value[d], len(roles))
            for row in rows:
                block = np.ascontiguousarray(to_torch_gates(row, op))
                # All-alike blocks (biases initialised to zero) say nothing by value; the names
                # of the other blocks, or of the node's W, say which tensor they are.
                found = [] if degenerate(block) else [n for n in ctx.lookup(block) if ctx.infos[n].shape == block.shape]
                per_block.append(found)
                families.update(f for n in found if (f := _rnn_family(n)) is not None)
        if use.index != 1:
            for sibling in ctx.proven_for_input(use.node, 1):
                families.update(f for n in sibling.sources if (f := _rnn_family(n)) is not None)
        candidates: list[list[str]] = []
        if all(per_block):
            candidates.extend(_product(per_block, limit=16))  # equal blocks (a tie in BASE) multiply these
        for prefix, layer in sorted(families):
            names = [f"{prefix}{role}_l{layer}{'_reverse' if d else ''}" for d, role in slots]
            if all(ctx.base_info(n) is not None for n in names):
                candidates.append(names)
        for combo in candidates:
            yield cls(target, op, tuple(combo), tuple(ctx.infos[n] for n in combo))

    def compute(self, read: Reader) -> np.ndarray:
        dtype = self.target.dtype
        blocks = [to_onnx_gates(cast(read(n), dtype), self.op) for n in self.sources]
        directions = self.target.shape[0]
        per_direction = len(blocks) // directions
        rows = [np.concatenate(blocks[d * per_direction : (d + 1) * per_direction]) for d in range(directions)]
        return np.ascontiguousarray(np.stack(rows))

    def explain(self) -> str:
        order = {"LSTM": "ifgo -> iofc", "GRU": "rzn -> zrh", "RNN": "one gate"}[self.op]
        src = self.infos[0].dtype
        cast_note = "" if src == self.target.info.dtype else f", cast {src.name} -> {self.target.info.dtype.name}"
        return f"{self.op} gates {order}, packed from {_names(self.sources)}{cast_note}"


_RNN_NAME = re.compile(r"^(.*)(?:weight|bias)_(?:ih|hh)_l(\d+)(?:_reverse)?$")


def _rnn_family(name: str) -> tuple[str, str] | None:
    """``("rnn.", "0")`` for ``rnn.weight_ih_l0_reverse``: the module and layer of a PyTorch recurrent weight."""
    m = _RNN_NAME.match(name)
    return (m.group(1), m.group(2)) if m else None


def _product(choices: list[list[str]], limit: int) -> Iterator[list[str]]:
    out: list[list[str]] = [[]]
    for options in choices:
        out = [[*prev, o] for prev in out for o in options][:limit]
    yield from out


@dataclass(frozen=True)
class BatchNormGroup:
    """A BatchNorm's tensors in a PyTorch checkpoint.

    ``P.running_mean`` and ``P.running_var``, and ``P.weight``/``P.bias`` unless it is not affine.
    """

    prefix: str
    mean: str
    var: str
    weight: str | None
    bias: str | None

    @property
    def label(self) -> str:
        return self.prefix.rstrip(".") or "(unnamed)"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.weight, self.bias, self.mean, self.var) if n)


# The epsilons of BatchNorm layers in practice (PyTorch's default first); a folded weight proves which.
EPSILONS = (1e-5, 1e-3, 1e-4, 1e-6, 2e-5, 1e-12)

# (operator, input) of the weight a BatchNorm after the node folds into, and which axis of it the
# BatchNorm's channels run along.
FOLD_INTO = {("Conv", 1), ("ConvTranspose", 1), ("Gemm", 1)}


def fold_axis(node: Node, ndim: int) -> int:
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1
    return 0 if node.ints.get("transB", 0) else 1


def bn_scale(read: Reader, group: BatchNormGroup, eps: float, dtype: np.dtype) -> np.ndarray:
    """``weight / sqrt(running_var + eps)``, one operation at a time in ``dtype``, correctly rounded.

    torch.onnx's legacy exporter (eval_peephole's fuseConvBatchNorm) and onnxscript's optimizer
    (the rewrite rule _fuse_batchnorm, behind the dynamo exporter's ``optimize``) both add eps,
    take the square root, divide, then multiply the weight per output channel, each step rounded
    to the model's element type. onnxscript does it with numpy, as here, so its folds match bit
    for bit; the legacy exporter uses torch's CPU sqrt, which on vectorised paths is up to 1 ulp
    off the correctly rounded root (measured on an AVX-512 build of torch 2.13), hence
    :data:`FOLD_WEIGHT_ULP` and :data:`FOLD_BIAS_ULP`.
    """
    var = cast(read(group.var), dtype)
    denominator = np.sqrt(var + np.asarray(eps, dtype))
    gamma = cast(read(group.weight), dtype) if group.weight else np.ones(var.shape, dtype)
    return gamma / denominator


# With the root 1 ulp off, the quotient gamma/root is within 2^-22 (relative) of the correctly rounded
# one, so weight * scale lies within 4 ulp of ours before its own rounding: 5 ulp in all.
FOLD_WEIGHT_ULP = 5
# The bias adds a term to (bias - mean) * scale, whose error is the weight's: 5 ulp of the larger of
# the two terms and the sum, plus 1 for rounding the sum.
FOLD_BIAS_ULP = 6


class BatchNormFolded(Derivation):
    """A Conv/ConvTranspose/Gemm weight with the BatchNorm after it folded in (name kept or not).

    ``W' = W * (gamma / sqrt(var + eps))`` along the output channels; transposed first when a
    Gemm reads the weight without ``transB``. eps is not in the checkpoint: the one of
    :data:`EPSILONS` that reproduces the model's value is taken (and any other that does must
    give the same NEW value).
    """

    kind = "batchnorm-folded"
    tier = 3
    bound_ulp = FOLD_WEIGHT_ULP

    def __init__(
        self,
        target: Target,
        weight: str,
        info: TensorInfo,
        group: BatchNormGroup,
        eps: float,
        axis: int,
        transposed: bool,
    ) -> None:
        super().__init__(target, (weight, *group.names))
        self.weight, self.source_info, self.group = weight, info, group
        self.eps, self.axis, self.transposed = eps, axis, transposed

    def key(self) -> tuple[object, ...]:
        return (self.kind, self.sources, self.eps, self.transposed)

    @classmethod
    def propose(cls, target: Target, ctx: Context) -> Iterator[Derivation]:
        use = next((u for u in target.uses if (u.node.op, u.index) in FOLD_INTO and u.node.standard), None)
        if use is None or not target.is_float or not target.shape or target.value is None:
            return
        axis = fold_axis(use.node, len(target.shape))
        groups = ctx.bn_groups(target.shape[axis])
        if not groups:
            return
        candidates: list[tuple[str, bool]] = []
        for name, info in ctx.infos.items():
            if info.dtype.kind != "f" or ctx.in_bn_group(name):
                continue
            if info.shape == target.shape:
                candidates.append((name, False))
            elif len(info.shape) == 2 and info.shape == target.shape[::-1]:
                candidates.append((name, True))
        if not candidates:
            return
        # Per output channel, the model's largest element; the ratio there to the raw weight's must
        # be the BatchNorm's scale. A cheap filter, before proving the whole tensor.
        value = np.moveaxis(np.asarray(target.value, np.float64), axis, 0).reshape(target.shape[axis], -1)
        pick = np.abs(value).argmax(axis=1)
        rows = np.arange(value.shape[0])
        scales = {
            (g, eps): np.asarray(bn_scale(ctx.read, g, eps, np.dtype(np.float64))) for g in groups for eps in EPSILONS
        }
        for name, transposed in candidates:
            raw = ctx.read(name)
            raw = np.moveaxis(raw.T if transposed else raw, axis, 0).reshape(value.shape[0], -1)
            known = raw[rows, pick] != 0
            if not known.any():
                continue
            ratio = value[rows, pick][known] / np.asarray(raw[rows, pick][known], np.float64)
            for group in groups:
                for eps in EPSILONS:
                    if np.allclose(ratio, scales[group, eps][known], rtol=1e-4, atol=0):
                        yield cls(target, name, ctx.infos[name], group, eps, axis, transposed)

    def compute(self, read: Reader) -> np.ndarray:
        dtype = self.target.dtype
        w = cast(read(self.weight), dtype)
        if self.transposed:
            w = w.T
        s = bn_scale(read, self.group, self.eps, dtype)
        shape = [1] * w.ndim
        shape[self.axis] = -1
        return np.ascontiguousarray(w * s.reshape(shape))

    def explain(self) -> str:
        w = f"{self.weight} transposed" if self.transposed else self.weight
        return f"{w} with BatchNorm {self.group.label} folded in (eps {self.eps:g})" + _changes(
            self.source_info, self.target.info, self.target.shape
        )


class BatchNormFoldedBias(Derivation):
    """The bias of a node a BatchNorm was folded into.

    ``(b - mean) * scale + beta``, or ``beta - mean * scale`` when the node had no bias.
    Proposed only with the BatchNorm (and eps) the node's weight was proven to hold; the node's own
    bias is the checkpoint tensor beside its weight (``P.bias`` for ``P.weight``).
    """

    kind = "batchnorm-folded-bias"
    tier = 3
    bound_ulp = FOLD_BIAS_ULP

    def __init__(self, target: Target, bias: str | None, group: BatchNormGroup, eps: float) -> None:
        super().__init__(target, ((bias,) if bias else ()) + group.names)
        self.bias, self.group, self.eps = bias, group, eps

    def key(self) -> tuple[object, ...]:
        return (self.kind, self.sources, self.eps)

    @classmethod
    def propose(cls, target: Target, ctx: Context) -> Iterator[Derivation]:
        use = next((u for u in target.uses if (u.node.op, u.index - 1) in FOLD_INTO and u.node.standard), None)
        if use is None or len(target.shape) != 1 or not target.is_float:
            return
        for weight in ctx.proven_for_input(use.node, 1):
            if not isinstance(weight, BatchNormFolded):
                continue
            paired = weight.weight[: -len("weight")] + "bias" if weight.weight.endswith("weight") else None
            info = ctx.base_info(paired) if paired else None
            bias = paired if info is not None and info.shape == target.shape else None
            yield cls(target, bias, weight.group, weight.eps)

    def _terms(self, read: Reader) -> tuple[np.ndarray, np.ndarray]:
        """The two terms the bias adds: ``(b - mean) * scale`` (or ``-(mean * scale)``) and beta."""
        dtype = self.target.dtype
        s = bn_scale(read, self.group, self.eps, dtype)
        mean = cast(read(self.group.mean), dtype)
        beta = cast(read(self.group.bias), dtype) if self.group.bias else np.zeros(mean.shape, dtype)
        if self.bias is None:
            return -(mean * s), beta
        return (cast(read(self.bias), dtype) - mean) * s, beta

    def compute(self, read: Reader) -> np.ndarray:
        scaled, beta = self._terms(read)
        if self.bias is None:
            return np.ascontiguousarray(beta + scaled)  # beta - mean * s, to the bit
        return np.ascontiguousarray(scaled + beta)

    def measure(self, got: np.ndarray, want: np.ndarray, read: Reader) -> int:
        # A sum can cancel to near zero, where a few ulp of a term are many of the result: the
        # error is counted in ulp of the largest term.
        if arrays_identical(got, want):
            return 0
        scaled, beta = self._terms(read)
        magnitude = np.maximum.reduce([np.abs(scaled), np.abs(beta), np.abs(got), np.abs(want)]).astype(np.float64)
        return ulps_of(np.asarray(got, np.float64) - np.asarray(want, np.float64), magnitude, self.target.dtype)

    def explain(self) -> str:
        own = f"{self.bias} with " if self.bias else ""
        return f"{own}BatchNorm {self.group.label} folded in (eps {self.eps:g}; bias {'kept' if self.bias else 'none'})"


class Scaled(Derivation):
    """A checkpoint tensor (as it is, transposed, or a chunk of a packed one) times a constant.

    An exporter or optimizer that folds a constant multiply, such as attention's
    ``1/sqrt(head_dim)``, into the projection before it. The factor is read off the values and
    proven: one multiplication in the model's type per element, so BASE must match within 1 ulp.
    """

    kind = "scaled"
    tier = 4
    bound_ulp = 1

    def __init__(self, target: Target, inner: Derivation, factor: float) -> None:
        super().__init__(target, inner.sources)
        self.inner, self.factor = inner, factor

    def key(self) -> tuple[object, ...]:
        return (self.kind, self.inner.key(), self.factor)

    @classmethod
    def propose(cls, target: Target, ctx: Context) -> Iterator[Derivation]:
        if not target.value_is_evidence() or not target.read_as_weight() or target.value is None:
            return
        value = np.asarray(target.value, np.float64)
        for inner in _unscaled(target, ctx):
            raw = np.asarray(inner.compute(ctx.read), np.float64)
            k = int(np.abs(raw).argmax())
            if raw.flat[k] == 0 or raw.shape != value.shape:
                continue
            factor = float(np.asarray(value.flat[k] / raw.flat[k], target.dtype))
            if not np.isfinite(factor) or factor in (0.0, 1.0):
                continue
            if not np.allclose(raw * factor, value, rtol=1e-3, atol=1e-6 * abs(factor)):
                continue
            # One element's ratio may miss the factor by an ulp: of it and its neighbours, the one
            # closest to the model's value over all elements.
            near = np.asarray(factor, target.dtype)
            options = [
                np.nextafter(near, np.asarray(-np.inf, target.dtype)),
                near,
                np.nextafter(near, np.asarray(np.inf, target.dtype)),
            ]
            scaled = [cls(target, inner, float(f)) for f in options]
            want = target.value
            yield min(scaled, key=lambda d: ulp_distance(d.compute(ctx.read), want))

    def compute(self, read: Reader) -> np.ndarray:
        base = self.inner.compute(read)
        return np.ascontiguousarray(base * np.asarray(self.factor, self.target.dtype))

    def explain(self) -> str:
        return f"{self.inner.explain()}, times {self.factor:.9g}"


def _unscaled(target: Target, ctx: Context) -> Iterator[Derivation]:
    """Copies, transposes and chunks of checkpoint tensors that could be the target before scaling."""
    numel = target.info.numel
    for name, info in ctx.infos.items():
        if info.dtype.kind != "f" or not castable(info, target.info):
            continue
        if info.numel == numel:
            if info.shape == target.shape or len(info.shape) != 2:
                yield Copy(target, name, info)
            if len(info.shape) == 2 and info.shape == target.shape[::-1]:
                yield Transposed(target, name, info)
        elif len(target.shape) == 2 and len(info.shape) == 2:
            for transposed, shape in ((False, target.shape), (True, target.shape[::-1])):
                if info.shape[1] == shape[1] and info.shape[0] % shape[0] == 0 and info.shape[0] > shape[0]:
                    for start in range(0, info.shape[0], shape[0]):
                        yield Sliced(target, name, info, 0, start, transposed)


# Every kind a template tensor may derive by; the planner tries them tier by tier.
KINDS: tuple[type[Derivation], ...] = (
    Copy,
    Transposed,
    RnnPacked,
    Sliced,
    BatchNormFolded,
    BatchNormFoldedBias,
    Scaled,
)
