"""PyTorch state_dict -> Keras 3 (channels-last): rules chosen from names, ranks and hints.

A module is recognised by its parameters: ``running_mean`` makes a BatchNorm, ``weight_ih_l0`` an
RNN (LSTM, GRU or plain by the gate count; with ``_reverse`` weights a Keras Bidirectional layer per
PyTorch layer), a 2-D ``weight`` with a bias a Linear, a 3-5-D one a
convolution, a 1-D one with a bias a normalization. What cannot be told apart is reported, with
the hint that settles it, instead of guessed: a 2-D weight without bias (Linear or Embedding?), a
convolution with one input channel (or depthwise?), a Linear after a feature map (flattened from
what shape?).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ckptkit.core.model import TensorInfo
from ckptkit.formats.keras import naming
from ckptkit.layout import attention, ops
from ckptkit.layout.attention import Source, TorchAttention
from ckptkit.layout.hints import ATTENTION_KINDS, NO_RULE, Hint, find, hint_help
from ckptkit.layout.ops import Step, moved, rename
from ckptkit.layout.plan import LayoutPlan, Planner

_RNN = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")
_PROJECTION = re.compile(r"^weight_hr_l\d+(_reverse)?$")
_RNN_KINDS = {4: ("LSTM", "lstm_cell"), 3: ("GRU", "gru_cell"), 1: ("SimpleRNN", "simple_rnn_cell")}
_GRU_TORCH_TO_KERAS = (1, 0, 2)  # PyTorch gates r, z, n; Keras z, r, h
_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


@dataclass
class Module:
    name: str
    params: dict[str, TensorInfo] = field(default_factory=dict)

    def tensor(self, param: str) -> str:
        return f"{self.name}.{param}" if self.name else param


def group_modules(infos: list[TensorInfo]) -> list[Module]:
    modules: dict[str, Module] = {}
    for ti in infos:
        module, _, param = ti.name.rpartition(".")
        modules.setdefault(module, Module(module)).params[param] = ti
    return list(modules.values())


def conv_perm(rank: int) -> tuple[int, ...]:
    """PyTorch (O, I, *k) -> Keras (*k, I, O); also (I, O, *k) -> (*k, O, I) for transposed ones."""
    return (*range(2, rank), 1, 0)


class _Planner(Planner):
    def __init__(self, infos: list[TensorInfo], hints: list[Hint], aliases: dict[str, str]) -> None:
        super().__init__(infos, hints, "torch", "keras")
        self.aliases = aliases  # tied name -> the tensor it shares
        self.assumed_conv: list[str] = []  # convolutions that might be transposed ones

    def run(self) -> LayoutPlan:
        modules = group_modules(self.infos)
        separable = self._separable_groups(modules)
        units = self._attention_units(modules)
        done: set[str] = set()
        for module in modules:
            if module.name in done:
                continue
            group = separable.get(module.name)
            if group:
                self._separable(*group)
                done.update(m.name for m in group[1])
                continue
            unit = units.get(module.name)
            if unit:
                att, members = unit
                attention.to_keras(att, find(self.hints, att.name), self.plan, self.ask)
                done.update(members)
                self.spatial = False
                continue
            self._module(module)
        self._note_linear_attention(modules, {m for _, members in units.values() for m in members})
        self.finish()
        if self.assumed_conv:
            few = ", ".join(self.assumed_conv[:5]) + (
                f" and {len(self.assumed_conv) - 5} more" if len(self.assumed_conv) > 5 else ""
            )
            self.plan.notes.append(
                f"{len(self.assumed_conv)} convolution(s) taken as regular ones ({few}); a transposed convolution "
                "has the same layout rule, hint NAME=conv_transpose for one so that Keras .weights.h5 files name "
                "its class right"
            )
        return self.plan

    # -- attention ----------------------------------------------------------------------------------

    def _attention_units(self, modules: list[Module]) -> dict[str, tuple[TorchAttention, set[str]]]:
        """Attention layers, by the first of their modules: nn.MultiheadAttention, and modules hinted as one."""
        by_name = {m.name: m for m in modules}
        units: dict[str, tuple[TorchAttention, set[str]]] = {}
        claimed: set[str] = set()
        for m in modules:
            if not any(p in m.params for p in ("in_proj_weight", *attention.MHA_SEPARATE)):
                continue
            hint = find(self.hints, m.name)
            if hint and hint.kind == "keep":
                continue
            unit = self._nn_multihead(m, by_name.get(f"{m.name}.out_proj"))
            if unit is not None:
                units[m.name] = unit
                claimed.update(unit[1])
        prefixes = sorted(
            {p for m in modules for p in _ancestors(m.name) if self._attention_hint(p)}, key=len, reverse=True
        )
        for prefix in prefixes:
            if prefix in claimed:
                continue
            members = [m for m in modules if m.name.startswith(prefix + ".") and m.name not in claimed]
            unit = self._linear_attention(prefix, members)
            if unit is not None:
                first = next(m.name for m in modules if m.name in unit[1])
                units[first] = unit
                claimed.update(unit[1])
        return units

    def _attention_hint(self, name: str) -> Hint | None:
        hint = find(self.hints, name)
        return hint if hint and hint.pattern and hint.kind in ATTENTION_KINDS and hint.matches(name) else None

    def _nn_multihead(self, m: Module, out: Module | None) -> tuple[TorchAttention, set[str]] | None:
        params = m.params
        extra = set(params) - {*attention.MHA_PACKED, *attention.MHA_SEPARATE}
        if extra & {"bias_k", "bias_v"}:
            self.ask(f"{m.name} is an nn.MultiheadAttention with add_bias_kv, which Keras attention layers lack")
            return None
        if extra:
            self.ask(f"{m.name} has {', '.join(sorted(extra))} besides nn.MultiheadAttention's parameters")
            return None
        if out is None or "weight" not in out.params or set(out.params) - {"weight", "bias"}:
            self.ask(f"{m.name} is an nn.MultiheadAttention without an out_proj Linear ({m.name}.out_proj.weight)")
            return None
        weights: dict[str, Source] = {}
        biases: dict[str, Source] = {}
        packed = params.get("in_proj_weight")
        if packed is not None:
            if len(packed.shape) != 2 or packed.shape[0] % 3 or set(params) & set(attention.MHA_SEPARATE):
                self.ask(f"{packed.name} {list(packed.shape)} is not nn.MultiheadAttention's (3E, E) in_proj_weight")
                return None
            weights = {p: Source(packed, i) for i, p in enumerate(attention.QKV)}
        else:
            if any(n not in params or len(params[n].shape) != 2 for n in attention.MHA_SEPARATE):
                self.ask(f"{m.name} needs q_proj_weight, k_proj_weight and v_proj_weight, each 2-D")
                return None
            weights = {p: Source(params[n]) for p, n in zip(attention.QKV, attention.MHA_SEPARATE, strict=True)}
        bias = params.get("in_proj_bias")
        if bias is not None:
            if len(bias.shape) != 1 or bias.shape[0] % 3:
                self.ask(f"{bias.name} {list(bias.shape)} is not nn.MultiheadAttention's (3E,) in_proj_bias")
                return None
            biases = {p: Source(bias, i) for i, p in enumerate(attention.QKV)}
        weights["attention_output"] = Source(out.params["weight"])
        if "bias" in out.params:
            biases["attention_output"] = Source(out.params["bias"])
        bad = [f"{p} {list(src.shape)}" for p, src in weights.items() if len(src.shape) != 2]
        if bad:
            self.ask(f"{m.name}: projections {', '.join(bad)} are not 2-D")
            return None
        return TorchAttention(m.name, weights, biases, "nn.MultiheadAttention"), {m.name, out.name}

    def _linear_attention(self, prefix: str, members: list[Module]) -> tuple[TorchAttention, set[str]] | None:
        found: dict[str, Module] = {}
        for m in members:
            rel = m.name[len(prefix) + 1 :]
            part = next((p for p, names in attention.TORCH_NAMES.items() if rel in names), None)
            if part is None:
                continue
            if part in found:
                self.ask(
                    f"{prefix} is hinted as attention but has two {part} projections, {found[part].name} and {m.name}"
                )
                return None
            found[part] = m
        missing = [p for p in attention.PARTS if p not in found]
        if missing:
            names = " or ".join("/".join(attention.TORCH_NAMES[p][:3]) for p in missing)
            self.ask(f"{prefix} is hinted as attention, but no Linear module under it is named {names}")
            return None
        for m in found.values():
            w = m.params.get("weight")
            if w is None or len(w.shape) != 2 or set(m.params) - {"weight", "bias"}:
                self.ask(f"{m.name} is not a Linear module (weight and bias), so it is no attention projection")
                return None
        weights = {p: Source(m.params["weight"]) for p, m in found.items()}
        biases = {p: Source(m.params["bias"]) for p, m in found.items() if "bias" in m.params}
        return TorchAttention(prefix, weights, biases, "Linear modules"), {m.name for m in found.values()}

    def _note_linear_attention(self, modules: list[Module], claimed: set[str]) -> None:
        children: dict[str, set[str]] = {}
        for m in modules:
            if m.name not in claimed and set(m.params) <= {"weight", "bias"} and "." in m.name:
                parent, _, leaf = m.name.rpartition(".")
                children.setdefault(parent, set()).add(leaf)
        for parent, leaves in children.items():
            if {"q_proj", "k_proj", "v_proj"} <= leaves and leaves & {"out_proj", "o_proj"}:
                self.plan.notes.append(
                    f"{parent}: q_proj, k_proj, v_proj and its output projection became Dense layers; for one Keras "
                    f"MultiHeadAttention layer hint '{parent}=mha:HEADS' ('gqa:HEADSxKV_HEADS' for grouped-query "
                    "attention) or pass --template"
                )

    # -- one module -------------------------------------------------------------------------------

    def _module(self, m: Module) -> None:
        hint = find(self.hints, m.name)
        self.keep_hinted(m.name, m.params, hint)
        if not m.params:
            return
        params = m.params
        if hint and hint.kind == NO_RULE and hint.matches(m.name):
            keep = hint_help(m.name, ("keep",))
            self.ask(f"{m.name}: the template's layer is a Keras {hint.cls}, which no rule translates ({keep})")
        elif not m.name:
            self.ask(f"{', '.join(params)} belong to no module ({hint_help(next(iter(params)), ('keep',))})")
        elif self._reverse_projection(m, hint):
            return
        elif "running_mean" in params or "running_var" in params:
            self._batchnorm(m)
        elif any(_RNN.match(p) or _PROJECTION.match(p) for p in params):
            self._rnn(m)
        elif "weight" in params:
            self._weighted(m, hint)
        else:
            self.ask(f"{m.name} has {', '.join(params)}, which no rule knows ({hint_help(m.name, ('keep',))})")

    def _weighted(self, m: Module, hint: Hint | None) -> None:
        w = m.params["weight"]
        bias = m.params.get("bias")
        if not self.only(m.name, m.params, {"weight", "bias"}):
            return
        kind = hint.kind if hint else None
        rank = len(w.shape)
        if rank == 1:
            if kind in ("norm", "group_norm", "rms_norm") or (
                kind is None and bias is not None and bias.shape == w.shape
            ):
                self._norm(m, kind or "norm")
            else:
                self.ask(
                    f"{w.name} {list(w.shape)} has no bias: a normalization scale? "
                    f"({hint_help(m.name, ('norm', 'rms_norm', 'keep'))})"
                )
            return
        if rank == 2:
            self._two_d(m, w, bias, hint)
            return
        if 3 <= rank <= 5:
            self._conv(m, w, bias, hint)
            return
        self.ask(f"{w.name} has rank {rank}, which no rule knows ({hint_help(m.name, ('keep',))})")

    def _reverse_projection(self, m: Module, hint: Hint | None) -> bool:
        """A bias-less Linear tied to a ReversibleEmbedding's table: no Keras tensor, the tie is recorded."""
        w = m.params.get("weight")
        if hint is not None or w is None or set(m.params) != {"weight"}:
            return False
        for table_weight in self._tied_with(w.name):
            table = table_weight.rpartition(".")[0]
            table_hint = find(self.hints, table)
            if table != m.name and table_hint is not None and table_hint.kind == "reversible":
                self.plan.dropped[w.name] = (
                    f"tied to {table_weight}: the Keras ReversibleEmbedding {table} projects back with its own "
                    "table (tie_weights=True); the tie is kept in the layout record"
                )
                return True
        return False

    def _tied_with(self, name: str) -> list[str]:
        """The other names of a tied weight (either way round: which name is the alias is the reader's choice)."""
        target = self.aliases.get(name, name)
        return [n for n in (target, *(a for a, t in self.aliases.items() if t == target)) if n != name]

    def _two_d(self, m: Module, w: TensorInfo, bias: TensorInfo | None, hint: Hint | None) -> None:
        kind = hint.kind if hint else None
        if kind in ("embedding", "reversible") or (
            kind is None and bias is None and "emb" in m.name.rsplit(".", 1)[-1].lower()
        ):
            if bias is not None:
                self.ask(f"{m.name} is hinted as an Embedding but has a bias")
                return
            cls = "ReversibleEmbedding" if kind == "reversible" else "Embedding"
            self.plan.steps.append(rename(f"{m.name}/embeddings", w.name, w.shape, w.dtype, m.name, cls))
            self.plan.classes[m.name] = cls
            self.spatial = False
            return
        if kind is None and bias is None:
            tied = self._tied_with(w.name)
            table = tied[0].rpartition(".")[0] if tied else ""
            also = (
                f", or, tied to {tied[0]}, the reverse projection of a Keras ReversibleEmbedding '{table}=reversible'"
                if tied
                else ""
            )
            self.ask(
                f"{w.name} {list(w.shape)} has no bias: Linear or Embedding? "
                f"({hint_help(m.name, ('dense', 'embedding'))}{also})"
            )
            return
        if bias is not None and bias.shape != (w.shape[0],):
            self.ask(f"{m.name}: bias {list(bias.shape)} does not fit a Linear weight {list(w.shape)}")
            return
        in_features = w.shape[1]
        if kind == "flatten":
            assert hint is not None
            self._flatten_dense(m, w, hint.dims)
        elif kind in (None, "dense"):
            if (
                kind is None
                and self.spatial
                and self.channels
                and in_features != self.channels
                and in_features % self.channels == 0
            ):
                c = self.channels
                self.ask(
                    f"{w.name} takes {in_features} inputs after a {c}-channel feature map: if they were flattened "
                    f"from it, give its shape ('{m.name}=flatten:{c}xHxW'), else '{m.name}=dense'"
                )
                return
            why = "Linear -> Dense"
            self.plan.steps.append(
                moved(f"{m.name}/kernel", w.name, w.shape, w.dtype, (("transpose", (1, 0)),), m.name, why)
            )
        else:
            self.ask(f"{m.name} is hinted as {kind}, but its weight is 2-D")
            return
        if bias is not None:
            self.plan.steps.append(rename(f"{m.name}/bias", bias.name, bias.shape, bias.dtype, m.name, "Dense bias"))
        self.plan.classes[m.name] = "Dense"
        self.spatial = False

    def _flatten_dense(self, m: Module, w: TensorInfo, dims: tuple[int, ...]) -> None:
        post = self.flatten_ops(m.name, dims, w.shape[1], w.shape[0])
        if post is None:
            return
        shape = "x".join(map(str, dims))
        why = f"Linear after Flatten of {shape} (channels first) -> Dense after Flatten (channels last)"
        self.plan.steps.append(moved(f"{m.name}/kernel", w.name, w.shape, w.dtype, post, m.name, why))

    def _conv(self, m: Module, w: TensorInfo, bias: TensorInfo | None, hint: Hint | None) -> None:
        rank = len(w.shape)
        dim = rank - 2
        kind = hint.kind if hint else None
        if kind is None:
            if bias is not None and bias.shape[0] != w.shape[0]:
                kind = "conv_transpose" if bias.shape[0] == w.shape[1] else None
                if kind is None:
                    self.ask(
                        f"{m.name}: bias {list(bias.shape)} fits neither a convolution nor a transposed one "
                        f"of weight {list(w.shape)}"
                    )
                    return
            elif w.shape[1] == 1 and w.shape[0] > 1:
                self.ask(
                    f"{w.name} {list(w.shape)} is a convolution with one input channel or a depthwise one "
                    f"({hint_help(m.name, ('conv', 'depthwise'))})"
                )
                return
            else:
                kind = "conv"
        if kind == "depthwise":
            self._depthwise(m, w, bias, hint.dims[0] if hint and hint.dims else 1)
            return
        if kind not in ("conv", "conv_transpose"):
            self.ask(f"{m.name} is hinted as {kind}, but its weight is {rank}-D")
            return
        transposed = kind == "conv_transpose"
        cls = f"Conv{dim}D" + ("Transpose" if transposed else "")
        why = f"ConvTranspose{dim}d -> {cls}" if transposed else f"Conv{dim}d -> {cls}"
        self.plan.steps.append(
            moved(f"{m.name}/kernel", w.name, w.shape, w.dtype, (("transpose", conv_perm(rank)),), m.name, why)
        )
        if bias is not None:
            self.plan.steps.append(rename(f"{m.name}/bias", bias.name, bias.shape, bias.dtype, m.name, f"{cls} bias"))
        if not transposed and hint is None and (bias is None or w.shape[0] == w.shape[1]):
            self.assumed_conv.append(m.name)
        self.plan.classes[m.name] = cls
        self.channels = w.shape[1] if transposed else w.shape[0]
        self.spatial = True

    def _depthwise(self, m: Module, w: TensorInfo, bias: TensorInfo | None, multiplier: int) -> None:
        rank = len(w.shape)
        if w.shape[1] != 1 or w.shape[0] % multiplier:
            self.ask(
                f"{w.name} {list(w.shape)} is not a depthwise weight with multiplier {multiplier} "
                "(channels*multiplier, 1, ...)"
            )
            return
        if rank == 5:
            self.ask(f"{m.name}: Keras has no 3-D depthwise convolution")
            return
        channels = w.shape[0] // multiplier
        kernel = w.shape[2:]
        post = (("reshape", (channels, multiplier, *kernel)), ("transpose", (*range(2, rank), 0, 1)))
        cls = f"DepthwiseConv{rank - 2}D"
        self.plan.steps.append(
            moved(f"{m.name}/kernel", w.name, w.shape, w.dtype, post, m.name, f"depthwise Conv{rank - 2}d -> {cls}")
        )
        if bias is not None:
            self.plan.steps.append(rename(f"{m.name}/bias", bias.name, bias.shape, bias.dtype, m.name, f"{cls} bias"))
        self.plan.classes[m.name] = cls
        self.channels = w.shape[0]
        self.spatial = True

    def _separable_groups(self, modules: list[Module]) -> dict[str, tuple[str, list[Module], int]]:
        """Modules under a prefix hinted as separable: first module -> (prefix, [depthwise, pointwise])."""
        groups: dict[str, tuple[str, list[Module], int]] = {}
        for hint in self.hints:
            if hint.kind != "separable":
                continue
            multiplier = hint.dims[0] if hint.dims else 1
            members: dict[str, list[Module]] = {}
            for m in modules:
                parts = m.name.split(".")
                for i in range(1, len(parts)):
                    prefix = ".".join(parts[:i])
                    if hint.matches(prefix):
                        members.setdefault(prefix, []).append(m)
                        break
            for prefix, group in members.items():
                groups[group[0].name] = (prefix, group, multiplier)
        return groups

    def _separable(self, prefix: str, group: list[Module], multiplier: int) -> None:
        if len(group) != 2 or any("weight" not in m.params for m in group):
            self.ask(
                f"{prefix} is hinted as separable but holds {len(group)} modules, "
                "not a depthwise and a pointwise convolution"
            )
            return
        dw_m, pw_m = group
        dw, pw = dw_m.params["weight"], pw_m.params["weight"]
        rank = len(dw.shape)
        fits = (
            len(pw.shape) == rank
            and dw.shape[1] == 1
            and all(k == 1 for k in pw.shape[2:])
            and pw.shape[1] == dw.shape[0]
        )
        if "bias" in dw_m.params or not fits or dw.shape[0] % multiplier:
            self.ask(
                f"{prefix}: a separable convolution needs a depthwise weight (C*M, 1, k...) without bias, "
                f"M={multiplier}, "
                f"and a 1x1 pointwise weight taking C*M channels; found {list(dw.shape)}"
                f"{' with bias' if 'bias' in dw_m.params else ''} and {list(pw.shape)}"
            )
            return
        channels = dw.shape[0] // multiplier
        cls = f"SeparableConv{rank - 2}D"
        dw_post = (("reshape", (channels, multiplier, *dw.shape[2:])), ("transpose", (*range(2, rank), 0, 1)))
        steps = self.plan.steps
        steps.append(
            moved(
                f"{prefix}/depthwise_kernel", dw.name, dw.shape, dw.dtype, dw_post, prefix, f"depthwise part of {cls}"
            )
        )
        steps.append(
            moved(
                f"{prefix}/pointwise_kernel",
                pw.name,
                pw.shape,
                pw.dtype,
                (("transpose", conv_perm(rank)),),
                prefix,
                f"pointwise part of {cls}",
            )
        )
        if "bias" in pw_m.params:
            b = pw_m.params["bias"]
            steps.append(rename(f"{prefix}/bias", b.name, b.shape, b.dtype, prefix, f"{cls} bias"))
        self.plan.classes[prefix] = cls
        self.channels = pw.shape[0]
        self.spatial = True

    def _norm(self, m: Module, kind: str) -> None:
        cls, names = {
            "norm": ("LayerNormalization", {"weight": "gamma", "bias": "beta"}),
            "group_norm": ("GroupNormalization", {"weight": "gamma", "bias": "beta"}),
            "rms_norm": ("RMSNormalization", {"weight": "scale"}),
        }[kind]
        for param, ti in m.params.items():
            if param not in names:
                self.ask(f"{m.name}: {cls} has no place for {param}")
                return
            self.plan.steps.append(rename(f"{m.name}/{names[param]}", ti.name, ti.shape, ti.dtype, m.name, cls))
        self.plan.classes[m.name] = cls
        if self.spatial and self.channels != m.params["weight"].shape[0]:
            self.spatial = False

    def _batchnorm(self, m: Module) -> None:
        for param, ti in m.params.items():
            if param == "num_batches_tracked":
                self.plan.dropped[ti.name] = (
                    "Keras BatchNormalization keeps no batch counter; its value is kept in the layout record"
                )
            elif param in _BN:
                self.plan.steps.append(
                    rename(
                        f"{m.name}/{_BN[param]}", ti.name, ti.shape, ti.dtype, m.name, "BatchNorm -> BatchNormalization"
                    )
                )
            else:
                self.ask(f"{m.name}: BatchNormalization has no place for {param}")
                return
        self.plan.classes[m.name] = "BatchNormalization"
        size = m.params["running_mean"].shape[0] if "running_mean" in m.params else None
        if self.spatial and size != self.channels:
            self.spatial = False

    def _rnn(self, m: Module) -> None:
        layers: dict[tuple[int, bool], dict[str, TensorInfo]] = {}
        for param, ti in m.params.items():
            match = _RNN.match(param)
            if not match:
                if _PROJECTION.match(param):
                    self.ask(
                        f"{m.name} is an LSTM with proj_size ({param}); Keras has no projected LSTM, "
                        "so it has no Keras layout"
                    )
                else:
                    self.ask(f"{m.name}: {param} does not belong to an LSTM, GRU or RNN this rule knows")
                return
            layers.setdefault((int(match.group(2)), bool(match.group(3))), {})[match.group(1)] = ti
        bidirectional = any(reverse for _, reverse in layers)
        if bidirectional:
            one_way = sorted({k for k, _ in layers if (k, True) not in layers or (k, False) not in layers})
            if one_way:
                self.ask(f"{m.name} is bidirectional, but layer {one_way[0]} lacks one of its two directions")
                return
        for (k, reverse), params in sorted(layers.items()):
            self._rnn_layer(m, k, params, ("backward" if reverse else "forward") if bidirectional else None)
        self.spatial = False

    def _rnn_layer(self, m: Module, k: int, p: dict[str, TensorInfo], direction: str | None) -> None:
        """Layer ``k`` of ``m``, or one ``direction`` of it: a half of a Keras Bidirectional layer."""
        if "weight_ih" not in p or "weight_hh" not in p:
            self.ask(f"{m.name} layer {k} lacks weight_ih or weight_hh")
            return
        w_ih, w_hh = p["weight_ih"], p["weight_hh"]
        hidden = w_hh.shape[1]
        gates = w_hh.shape[0] // hidden if hidden else 0
        if gates not in _RNN_KINDS or w_hh.shape[0] != gates * hidden:
            self.ask(f"{w_hh.name} {list(w_hh.shape)} is not an LSTM, GRU or RNN weight (it may have a projection)")
            return
        cls, cell = _RNN_KINDS[gates]
        layer = m.name if k == 0 else f"{m.name}_l{k}"
        owner = f"{layer}/{direction}_{naming.snake_case(cls)}" if direction else layer
        base = f"{owner}/{cell}"
        gate_ops: tuple[ops.Op, ...] = (("gates", 0, _GRU_TORCH_TO_KERAS),) if cls == "GRU" else ()
        why = f"{cls} layer {k}" + (f", {direction} half of Bidirectional" if direction else "")
        steps = self.plan.steps
        steps.append(
            moved(f"{base}/kernel", w_ih.name, w_ih.shape, w_ih.dtype, (*gate_ops, ("transpose", (1, 0))), layer, why)
        )
        steps.append(
            moved(
                f"{base}/recurrent_kernel",
                w_hh.name,
                w_hh.shape,
                w_hh.dtype,
                (*gate_ops, ("transpose", (1, 0))),
                layer,
                why,
            )
        )
        b_ih, b_hh = p.get("bias_ih"), p.get("bias_hh")
        if (b_ih is None) != (b_hh is None):
            self.ask(f"{m.name} layer {k} has only one of bias_ih and bias_hh")
            return
        if b_ih is not None and b_hh is not None:
            if b_ih.dtype != b_hh.dtype or b_ih.shape != b_hh.shape:
                self.ask(f"{m.name} layer {k}: bias_ih and bias_hh differ in dtype or shape")
                return
            if cls == "GRU":
                # Keras GRU(reset_after=True) keeps both biases, as PyTorch does: rows input, recurrent.
                why_bias = f"{why}: input and recurrent biases stacked (reset_after=True)"
                step = Step(f"{base}/bias", (b_ih.name, b_hh.name), (2, b_ih.shape[0]), b_ih.dtype, combine="stack",
                            pre=gate_ops, layer=layer, why=why_bias, in_shapes=(b_ih.shape, b_hh.shape))  # fmt: skip
            else:
                why_bias = f"{why}: Keras has one bias, the sum of PyTorch's two"
                step = Step(f"{base}/bias", (b_ih.name, b_hh.name), b_ih.shape, b_ih.dtype, combine="sum", layer=layer,
                            why=why_bias, in_shapes=(b_ih.shape, b_hh.shape))  # fmt: skip
            steps.append(step)
        if direction:
            self.plan.classes[layer] = naming.BIDIRECTIONAL
        self.plan.classes[owner] = cls
        self.plan.classes[base] = f"{cls}Cell"


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def plan_to_keras(infos: list[TensorInfo], hints: list[Hint], aliases: dict[str, str] | None = None) -> LayoutPlan:
    return _Planner(infos, hints, aliases or {}).run()
