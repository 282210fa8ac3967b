"""Keras (channels-last) -> PyTorch state_dict: rules chosen from Keras classes, names and ranks.

A layer's class comes from the Keras file (config, or the class-derived group names of Keras 3
files: ``keras:classes`` metadata), else from an auto-generated layer name (``conv2d_3``), else
from its variable names and shapes. Ambiguities (a kernel that may be depthwise, a Dense after a
feature map) are reported with the hint that settles them. The two halves of a Bidirectional RNN
layer become one PyTorch layer's weights and its ``_reverse`` ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ckptkit.core import dtypes
from ckptkit.core.model import TensorInfo
from ckptkit.formats.keras import naming
from ckptkit.layout import attention
from ckptkit.layout.attention import KerasPart
from ckptkit.layout.hints import Hint, find, hint_help
from ckptkit.layout.ops import Op, Step, inverse_ops, moved, rename
from ckptkit.layout.plan import LayoutPlan, Planner

_GRU_KERAS_TO_TORCH = (1, 0, 2)  # Keras gates z, r, h; PyTorch r, z, n
_NORMS = {"LayerNormalization", "GroupNormalization", "RMSNormalization"}
_TORCH_NAMES = {
    "gamma": "weight", "beta": "bias", "scale": "weight", "moving_mean": "running_mean",
    "moving_variance": "running_var", "embeddings": "weight", "kernel": "weight", "bias": "bias",
}  # fmt: skip


@dataclass
class Owner:
    """A Keras layer (or RNN cell) and its variables."""

    path: str
    vars: dict[str, TensorInfo] = field(default_factory=dict)


def group_owners(infos: list[TensorInfo]) -> list[Owner]:
    owners: dict[str, Owner] = {}
    for ti in infos:
        path, _, var = ti.name.rpartition("/")
        if path.endswith("/vars") or path == "vars":
            path, var = path[: -len("vars")].rstrip("/"), f"vars/{var}"
        owners.setdefault(path, Owner(path)).vars[var] = ti
    return list(owners.values())


def conv_perm(rank: int) -> tuple[int, ...]:
    """Keras (*k, I, O) -> PyTorch (O, I, *k); also (*k, O, I) -> (I, O, *k) for transposed ones."""
    return (rank - 1, rank - 2, *range(rank - 2))


class _Planner(Planner):
    def __init__(
        self, infos: list[TensorInfo], hints: list[Hint], classes: dict[str, str], equations: dict[str, str]
    ) -> None:
        super().__init__(infos, hints, "keras", "torch")
        self.classes = classes
        self.equations = equations  # EinsumDense layer path -> its equation (and bias axes after a space)
        self.rnn_kinds: dict[str, tuple[str, tuple[int, ...], bool]] = {}  # module -> class, size, bidirectional
        self.halves: dict[tuple[str, int], set[str]] = {}  # (module, layer) -> "forward", "backward"

    def run(self) -> LayoutPlan:
        optimizer = [ti for ti in self.infos if ti.name.startswith("optimizer/")]
        for ti in optimizer:
            self.plan.dropped[ti.name] = "PyTorch keeps optimizer state apart from the state_dict"
        owners = group_owners([ti for ti in self.infos if not ti.name.startswith("optimizer/")])
        units = self._attention_units(owners)
        done: set[str] = set()
        for owner in owners:
            if owner.path in done:
                continue
            unit = units.get(owner.path)
            if unit:
                layer, parts = unit
                self._attention(layer, parts)
                done.update(o.path for o in parts.values())
                continue
            self._owner(owner)
        self._check_halves()
        return self.finish()

    def _class(self, owner: Owner) -> str | None:
        last = owner.path.rsplit("/", 1)[-1]
        return self.classes.get(owner.path) or naming.class_from_auto_name(last) or _class_from_variables(owner)

    def _layer_class(self, path: str) -> str | None:
        return self.classes.get(path) or naming.class_from_auto_name(path.rsplit("/", 1)[-1])

    def _attention_units(self, owners: list[Owner]) -> dict[str, tuple[str, dict[str, Owner]]]:
        """Attention layers by their first sub-layer's path: (layer path, Keras part -> sub-layer).

        A layer counts by its class, or, where the file does not say, by having exactly the four
        projections MultiHeadAttention names ``query``, ``key``, ``value``, ``attention_output``.
        """
        below: dict[str, dict[str, Owner]] = {}
        for o in owners:
            parent, _, part = o.path.rpartition("/")
            if parent and part in (*attention.PARTS, "gate"):
                below.setdefault(parent, {})[part] = o
        units: dict[str, tuple[str, dict[str, Owner]]] = {}
        for parent, parts in below.items():
            cls = self._layer_class(parent)
            if cls in attention.CLASSES or (cls is None and set(parts) == set(attention.PARTS)):
                first = next(o.path for o in owners if o in parts.values())
                units[first] = (parent, parts)
        return units

    def _attention(self, layer: str, parts: dict[str, Owner]) -> None:
        cls = self._layer_class(layer)
        module = layer.replace("/", ".")
        hint = find(self.hints, layer, module)
        found: dict[str, KerasPart] = {}
        for part, o in parts.items():
            if set(o.vars) - {"kernel", "bias"} or "kernel" not in o.vars:
                what = f"{cls or 'attention'} {part} projection"
                self.ask(f"{o.path} ({what}) has {', '.join(o.vars)}; expected kernel and bias")
                return
            found[part] = KerasPart(o.vars["kernel"], o.vars.get("bias"))
        attention.to_torch(layer, module, found, cls, hint, self.plan, self.ask)
        self.spatial = False

    def _owner(self, o: Owner) -> None:
        module = o.path.replace("/", ".")
        hint = find(self.hints, o.path, module)
        self.keep_hinted(o.path, o.vars, hint)
        if not o.vars:
            return
        if not o.path or any(v.startswith("vars/") for v in o.vars):
            self.ask(
                f"{o.path or 'the model'} has unnamed variables {', '.join(o.vars)} "
                f"({hint_help(o.path or 'vars/*', ('keep',))})"
            )
            return
        cls = self._class(o)
        kind = hint.kind if hint else None
        if cls and cls.endswith("Cell") and cls[:-4] in naming.SUBLAYERS:
            self._rnn(o, cls[:-4], module.rsplit(".", 1)[0] if "." in module else module)
        elif cls == "BatchNormalization":
            self._batchnorm(o, module)
        elif cls in _NORMS or kind in ("norm", "group_norm", "rms_norm"):
            self._renames(o, module, cls or "normalization")
            self._after_norm(o)
        elif cls in ("Embedding", "ReversibleEmbedding") or kind in ("embedding", "reversible"):
            self._renames(o, module, "Embedding")
            self.spatial = False
        elif cls and cls.startswith("SeparableConv"):
            self._separable(o, module, cls)
        elif cls == "EinsumDense" and "kernel" in o.vars and kind not in ("dense", "keep"):
            self._einsum(o, module)
        elif "kernel" in o.vars and (kind or not cls or _kernel_rule(cls)):
            self._kernel(o, module, cls, hint)
        elif cls and kind is None:
            self.ask(f"{o.path} is a Keras {cls}, which no rule translates ({hint_help(o.path, ('keep',))})")
        else:
            self.ask(
                f"{o.path} ({cls or 'class unknown'}) has {', '.join(o.vars)}, which no rule knows "
                f"({hint_help(o.path, ('keep',))})"
            )

    def _einsum(self, o: Owner, module: str) -> None:
        """An EinsumDense layer of its own: a Linear when its equation is Dense's, else refused."""
        recorded = self.equations.get(o.path)
        if recorded is None:
            self.ask(
                f"{o.path} is a Keras EinsumDense and the file does not record its equation, so its layout is "
                f"unknown ('{o.path}=dense' if it computes x @ kernel on the last axis, or '{o.path}=keep')"
            )
            return
        equation, _, bias_axes = recorded.partition(" ")
        if not naming.is_dense_equation(equation, bias_axes or None):
            self.ask(
                f"{o.path} is a Keras EinsumDense computing {equation!r}"
                + (f" with bias on {bias_axes!r}" if bias_axes else "")
                + f", which no PyTorch module holds ({hint_help(o.path, ('keep',))})"
            )
            return
        self._kernel(o, module, "Dense", None)

    def _torch_name(self, o: Owner, module: str, var: str) -> str | None:
        name = _TORCH_NAMES.get(var)
        if name is None:
            self.ask(f"{o.path}: no PyTorch name for variable {var!r} ({hint_help(o.path, ('keep',))})")
            return None
        return f"{module}.{name}"

    def _renames(self, o: Owner, module: str, why: str) -> None:
        for var, ti in o.vars.items():
            name = self._torch_name(o, module, var)
            if name:
                self.plan.steps.append(rename(name, ti.name, ti.shape, ti.dtype, o.path, why))

    def _after_norm(self, o: Owner) -> None:
        size = next(iter(o.vars.values())).shape
        if self.spatial and size != (self.channels,):
            self.spatial = False

    def _batchnorm(self, o: Owner, module: str) -> None:
        self._renames(o, module, "BatchNormalization -> BatchNorm")
        counter = f"{module}.num_batches_tracked"
        why = "PyTorch BatchNorm counts batches; Keras does not, so it starts at 0"
        self.plan.steps.append(Step(counter, (), (), dtypes.by_name("int64"), combine="zeros", layer=o.path, why=why))
        self._after_norm(o)

    def _kernel(self, o: Owner, module: str, cls: str | None, hint: Hint | None) -> None:
        k = o.vars["kernel"]
        bias = o.vars.get("bias")
        if not self.only(o.path, o.vars, {"kernel", "bias"}):
            return
        kind = hint.kind if hint else None
        rank = len(k.shape)
        if rank == 2 and kind in (None, "dense", "flatten"):
            self._dense(o, module, k, hint)
        elif 3 <= rank <= 5:
            if kind is None:
                kind = _conv_kind(cls, k, bias)
            if kind is None and bias is not None and len(bias.shape) != 1:
                self.ask(
                    f"{k.name} {list(k.shape)} has a bias of shape {list(bias.shape)}, which no convolution has; "
                    f"its layer's class is unknown ({hint_help(o.path, ('keep',))})"
                )
                return
            if kind is None:
                self.ask(
                    f"{k.name} {list(k.shape)} may be a convolution or a depthwise one "
                    f"({hint_help(o.path, ('conv', 'depthwise'))})"
                )
                return
            if kind == "depthwise":
                self._depthwise(o, module, k)
            elif kind in ("conv", "conv_transpose"):
                why = f"{cls or 'convolution'} -> {'ConvTranspose' if kind == 'conv_transpose' else 'Conv'}{rank - 2}d"
                self.plan.steps.append(
                    moved(f"{module}.weight", k.name, k.shape, k.dtype, (("transpose", conv_perm(rank)),), o.path, why)
                )
                self.channels = k.shape[-2] if kind == "conv_transpose" else k.shape[-1]
                self.spatial = True
            else:
                self.ask(f"{o.path} is hinted as {kind}, but its kernel is {rank}-D")
                return
        else:
            self.ask(f"{o.path}: a {rank}-D kernel hinted as {kind} fits no rule")
            return
        if bias is not None:
            self.plan.steps.append(rename(f"{module}.bias", bias.name, bias.shape, bias.dtype, o.path, "bias"))

    def _dense(self, o: Owner, module: str, k: TensorInfo, hint: Hint | None) -> None:
        inputs, outputs = k.shape
        post: tuple[Op, ...] = (("transpose", (1, 0)),)
        why = "Dense -> Linear"
        if hint and hint.kind == "flatten":
            forward = self.flatten_ops(o.path, hint.dims, inputs, outputs)
            if forward is None:
                return
            post = inverse_ops((outputs, inputs), forward)
            dims = "x".join(map(str, hint.dims))
            why = f"Dense after Flatten (channels last) -> Linear after Flatten of {dims}"
        elif (
            hint is None and self.spatial and self.channels and inputs != self.channels and inputs % self.channels == 0
        ):
            c = self.channels
            self.ask(
                f"{k.name} takes {inputs} inputs after a {c}-channel feature map: if they were flattened from it, give "
                f"the PyTorch shape ('{o.path}=flatten:{c}xHxW'), else '{o.path}=dense'"
            )
            return
        self.plan.steps.append(moved(f"{module}.weight", k.name, k.shape, k.dtype, post, o.path, why))
        self.spatial = False

    def _depthwise(self, o: Owner, module: str, k: TensorInfo, name: str = "weight") -> None:
        rank = len(k.shape)
        channels, multiplier = k.shape[-2], k.shape[-1]
        post = (
            ("transpose", (rank - 2, rank - 1, *range(rank - 2))),
            ("reshape", (channels * multiplier, 1, *k.shape[:-2])),
        )
        self.plan.steps.append(
            moved(f"{module}.{name}", k.name, k.shape, k.dtype, post, o.path, "depthwise -> Conv with groups=channels")
        )
        self.channels = channels * multiplier
        self.spatial = True

    def _separable(self, o: Owner, module: str, cls: str) -> None:
        if set(o.vars) - {"depthwise_kernel", "pointwise_kernel", "bias"} or "pointwise_kernel" not in o.vars:
            self.ask(f"{o.path} ({cls}) has {', '.join(o.vars)}; expected depthwise_kernel, pointwise_kernel, bias")
            return
        self._depthwise(o, f"{module}.depthwise", o.vars["depthwise_kernel"])
        pw = o.vars["pointwise_kernel"]
        rank = len(pw.shape)
        why = f"pointwise part of {cls} -> Conv{rank - 2}d 1x1"
        self.plan.steps.append(
            moved(
                f"{module}.pointwise.weight",
                pw.name,
                pw.shape,
                pw.dtype,
                (("transpose", conv_perm(rank)),),
                o.path,
                why,
            )
        )
        if "bias" in o.vars:
            b = o.vars["bias"]
            self.plan.steps.append(rename(f"{module}.pointwise.bias", b.name, b.shape, b.dtype, o.path, f"{cls} bias"))
        self.channels = pw.shape[-1]
        self.spatial = True

    def _rnn(self, o: Owner, cls: str, module: str) -> None:
        if set(o.vars) - {"kernel", "recurrent_kernel", "bias"} or {"kernel", "recurrent_kernel"} - set(o.vars):
            self.ask(f"{o.path} ({cls}) has {', '.join(o.vars)}; expected kernel, recurrent_kernel and bias")
            return
        k, rk = o.vars["kernel"], o.vars["recurrent_kernel"]
        module, half = self._half(module)
        kind = (cls, rk.shape, half is not None)  # what every layer and half of one PyTorch RNN shares
        # Layer k>0 of a stacked PyTorch RNN comes to Keras as a layer named <name>_l<k>; it goes back.
        layer = 0
        stacked = re.fullmatch(r"(.+)_l(\d+)", module)
        if stacked and self.rnn_kinds.get(stacked.group(1)) == kind:
            module, layer = stacked.group(1), int(stacked.group(2))
        if self.rnn_kinds.setdefault(module, kind) != kind:
            self.ask(
                f"{o.path} ({cls}, recurrent kernel {list(rk.shape)}) differs from the other half of Bidirectional "
                f"{module}; a PyTorch RNN has one class and size in both directions"
            )
            return
        direction = "_reverse" if half == "backward" else ""
        if half:
            self.halves.setdefault((module, layer), set()).add(half)
        gates: tuple[Op, ...] = (("gates", 0, _GRU_KERAS_TO_TORCH),) if cls == "GRU" else ()
        why = f"{cls} -> torch.nn.{'RNN' if cls == 'SimpleRNN' else cls}" + (
            f", {half} half of Bidirectional" if half else ""
        )
        suffix = f"l{layer}{direction}"
        steps = self.plan.steps
        steps.append(
            moved(
                f"{module}.weight_ih_{suffix}", k.name, k.shape, k.dtype, (("transpose", (1, 0)), *gates), o.path, why
            )
        )
        steps.append(
            moved(
                f"{module}.weight_hh_{suffix}",
                rk.name,
                rk.shape,
                rk.dtype,
                (("transpose", (1, 0)), *gates),
                o.path,
                why,
            )
        )
        b = o.vars.get("bias")
        if b is not None:
            ih, hh = f"{module}.bias_ih_{suffix}", f"{module}.bias_hh_{suffix}"
            if cls == "GRU":
                if len(b.shape) != 2 or b.shape[0] != 2:
                    self.ask(f"{b.name} {list(b.shape)}: a GRU with reset_after=False has no PyTorch equivalent")
                    return
                size = (b.shape[1],)
                for row, name in enumerate((ih, hh)):
                    why_row = f"{why}: {'input' if row == 0 else 'recurrent'} bias"
                    steps.append(Step(name, (b.name,), size, b.dtype, combine=f"row:{row}", post=gates, layer=o.path,
                                      why=why_row, in_shapes=(b.shape,)))  # fmt: skip
            else:
                steps.append(rename(ih, b.name, b.shape, b.dtype, o.path, f"{why}: Keras's one bias goes to bias_ih"))
                steps.append(Step(hh, (), b.shape, b.dtype, combine="zeros", layer=o.path, why=f"{why}: bias_hh = 0"))
                self.plan.splits[b.name] = (ih, hh)
        self.spatial = False

    def _half(self, module: str) -> tuple[str, str | None]:
        """For a half of a Bidirectional layer, its PyTorch module and "forward" or "backward"."""
        parent, _, name = module.rpartition(".")
        if not parent:
            return module, None
        path = parent.replace(".", "/")
        cls = self.classes.get(path) or naming.class_from_auto_name(path.rsplit("/", 1)[-1])
        if cls not in (None, naming.BIDIRECTIONAL):
            return module, None
        for attr, prefix in naming.HALVES.items():
            if name.startswith(prefix):
                return parent, attr.split("_")[0]
        # A backward_layer given to Bidirectional keeps its own name; the forward half is always prefixed.
        return (parent, "backward") if cls == naming.BIDIRECTIONAL else (module, None)

    def _check_halves(self) -> None:
        for (module, layer), halves in self.halves.items():
            if len(halves) != 2:
                self.ask(f"Bidirectional layer {module} (PyTorch layer {layer}) has only its {halves.pop()} half")


def _kernel_rule(cls: str) -> bool:
    """Whether a rule translates the kernel of a layer of this class (else the class is refused)."""
    return cls == "Dense" or cls.startswith(("Conv", "Depthwise"))


def _conv_kind(cls: str | None, k: TensorInfo, bias: TensorInfo | None) -> str | None:
    if bias is not None and len(bias.shape) != 1:
        return None  # a convolution's bias has one value per channel; others (EinsumDense) have no rule here
    if cls:
        if cls.startswith("Depthwise"):
            return "depthwise"
        if cls.endswith("Transpose"):
            return "conv_transpose"
        if cls.startswith("Conv"):
            return "conv"
        return None  # a class of its own: never taken for a convolution by its shape
    channels, last = k.shape[-2], k.shape[-1]
    if bias is not None:
        if bias.shape[0] == channels * last and channels > 1 and last > 1:
            return "depthwise"
        if bias.shape[0] == last:
            return "conv" if last != 1 or channels == 1 else None
        if bias.shape[0] == channels:
            return "conv_transpose" if last != 1 else None
        return None
    return None if last == 1 else "conv"


def _class_from_variables(o: Owner) -> str | None:
    names = set(o.vars)
    if names == {"gamma", "beta", "moving_mean", "moving_variance"} or names == {"moving_mean", "moving_variance"}:
        return "BatchNormalization"
    if names == {"embeddings"}:
        return "Embedding"
    if names <= {"gamma", "beta"} and names:
        return "LayerNormalization"
    if {"kernel", "recurrent_kernel"} <= names:
        rk = o.vars["recurrent_kernel"]
        ratio = rk.shape[1] // rk.shape[0] if len(rk.shape) == 2 and rk.shape[0] else 0
        return {4: "LSTMCell", 3: "GRUCell", 1: "SimpleRNNCell"}.get(ratio)
    if {"depthwise_kernel", "pointwise_kernel"} <= names:
        return f"SeparableConv{len(o.vars['pointwise_kernel'].shape) - 2}D"
    return None


def plan_to_torch(
    infos: list[TensorInfo], hints: list[Hint], classes: dict[str, str], equations: dict[str, str] | None = None
) -> LayoutPlan:
    return _Planner(infos, hints, classes, equations or {}).run()
