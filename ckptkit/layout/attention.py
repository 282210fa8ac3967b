"""Attention layers: PyTorch projections <-> Keras ``MultiHeadAttention`` / ``GroupedQueryAttention``.

PyTorch keeps each projection as a ``(out, in)`` matrix: ``nn.MultiheadAttention`` packs the query,
key and value ones into ``in_proj_weight`` ``(3E, E)`` (or keeps ``q_proj_weight``, ``k_proj_weight``,
``v_proj_weight`` apart when the key and value inputs have other widths), its output one in
``out_proj``; other models use four ``nn.Linear`` modules. Keras keeps them in EinsumDense
sub-layers with the heads as an axis of their own: ``query``/``key``/``value`` kernels
``(in, heads, head_dim)`` with biases ``(heads, head_dim)``, the ``attention_output`` kernel
``(heads, head_dim, out)``. Head ``h`` is the ``h``-th block of ``head_dim`` rows of the PyTorch
matrix in both frameworks, so a projection moves by a transpose and a reshape, and the head count
is what PyTorch weights cannot tell: it comes from a ``--layout-hint NAME=mha:HEADS`` or the
``--template`` model. Grouped-query attention (fewer key/value heads, each shared by a group of
query heads, in Keras's order and ``torch.repeat_interleave``'s) has no PyTorch module of its own;
its PyTorch side is four Linear modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ckptkit.core.model import TensorInfo
from ckptkit.layout.hints import ATTENTION_KINDS, Hint, hint_help
from ckptkit.layout.ops import Op, Step, moved, op_shapes, rename
from ckptkit.layout.plan import LayoutPlan

# Keras's sub-layers, in the order Keras lists their weights.
PARTS = ("query", "key", "value", "attention_output")
QKV = PARTS[:3]
MHA = "MultiHeadAttention"
GQA = "GroupedQueryAttention"
CLASSES = {MHA: MHA, GQA: GQA, "GroupQueryAttention": GQA}  # the config calls GQA by its exported name
# Child modules holding each projection as an nn.Linear, by the names models give them.
TORCH_NAMES = {
    "query": ("q_proj", "q", "query", "to_q", "wq", "q_lin", "self.query"),
    "key": ("k_proj", "k", "key", "to_k", "wk", "k_lin", "self.key"),
    "value": ("v_proj", "v", "value", "to_v", "wv", "v_lin", "self.value"),
    "attention_output": ("out_proj", "o_proj", "o", "out", "to_out.0", "wo", "out_lin", "output.dense"),
}
LINEARS = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "attention_output": "out_proj"}
MHA_PACKED = ("in_proj_weight", "in_proj_bias")
MHA_SEPARATE = ("q_proj_weight", "k_proj_weight", "v_proj_weight")

Ask = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    """One PyTorch projection tensor: a whole tensor, or row ``row`` of a packed one (q, k, v = 0, 1, 2)."""

    info: TensorInfo
    row: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The projection's own shape, ``(out, in)`` or ``(out,)``."""
        if self.row is None:
            return self.info.shape
        return (self.info.shape[0] // 3, *self.info.shape[1:])


@dataclass(frozen=True)
class TorchAttention:
    """A PyTorch attention module's projections: weight and bias source per Keras part."""

    name: str
    weights: dict[str, Source]
    biases: dict[str, Source]
    module_kind: str  # "nn.MultiheadAttention" or "Linear modules"


def _step(out: str, src: Source, post: tuple[Op, ...], layer: str, why: str) -> Step:
    ti = src.info
    if src.row is None:
        return moved(out, ti.name, ti.shape, ti.dtype, post, layer, why)
    pre: tuple[Op, ...] = (("reshape", (3, *src.shape)),)
    final = op_shapes(src.shape, post)[-1]
    return Step(
        out,
        (ti.name,),
        final,
        ti.dtype,
        combine=f"row:{src.row}",
        pre=pre,
        post=post,
        layer=layer,
        why=why,
        in_shapes=(ti.shape,),
    )


def to_keras(att: TorchAttention, hint: Hint | None, plan: LayoutPlan, ask: Ask) -> None:
    """Plan the Keras MultiHeadAttention (or GroupedQueryAttention) layer ``att.name`` from PyTorch's projections."""
    name = att.name
    if hint is None or hint.kind not in ATTENTION_KINDS or not hint.dims:
        ask(
            f"{name} is an attention layer ({att.module_kind}); its weights do not say how many heads it has "
            f"({hint_help(name, ('mha:HEADS',))}, or --template a Keras model with a MultiHeadAttention layer "
            f"named {name})"
        )
        return
    if len(att.biases) not in (0, len(PARTS)):
        ask(
            f"{name} has biases on {', '.join(sorted(att.biases))} only; Keras attention layers have a bias on "
            "all four projections or on none (use_bias)"
        )
        return
    (out_q, in_q), (out_k, in_k), (out_v, in_v), (out_o, in_o) = (att.weights[p].shape for p in PARTS)
    wrong = [f"{b.info.name} {list(b.shape)}" for p, b in att.biases.items() if b.shape != (att.weights[p].shape[0],)]
    if wrong:
        ask(f"{name}: biases {', '.join(wrong)} do not fit their projections")
        return
    heads = hint.dims[0]
    if out_q % heads:
        ask(f"{name}: {out_q} query features do not split into {heads} heads")
        return
    head_dim = out_q // heads
    grouped = hint.kind == "gqa"
    kv_heads = hint.dims[1] if grouped else heads
    if not grouped and out_k != out_q:
        groups = out_k // head_dim if out_k % head_dim == 0 else 0
        fix = (
            f"; grouped-query attention has {groups} key/value heads: '{name}=gqa:{heads}x{groups}'"
            if groups and heads % groups == 0
            else ""
        )
        ask(f"{name}: the key projection gives {out_k} features, the query one {out_q}{fix}")
        return
    if grouped and (out_k != kv_heads * head_dim or out_v != out_k or in_o != out_q or out_o != in_q):
        ask(
            f"{name} is not grouped-query attention with {heads} query and {kv_heads} key/value heads of "
            f"{head_dim}: projections give {out_q}, {out_k}, {out_v} features, the output one takes {in_o} "
            f"and gives {out_o} for {in_q} inputs"
        )
        return
    if out_v % kv_heads or in_o != heads * (out_v // kv_heads):
        ask(
            f"{name}: the value projection gives {out_v} features and the output one takes {in_o}; "
            f"with {heads} heads they must be {heads} x value_dim"
        )
        return
    value_dim = out_v // kv_heads
    cls = GQA if grouped else MHA
    why = f"{att.module_kind} -> {cls}"
    per_head = {
        "query": (in_q, heads, head_dim),
        "key": (in_k, kv_heads, head_dim),
        "value": (in_v, kv_heads, value_dim),
    }
    for part in PARTS:
        w = att.weights[part]
        if part == "attention_output":
            post: tuple[Op, ...] = (("transpose", (1, 0)), ("reshape", (heads, value_dim, out_o)))
        else:
            post = (("transpose", (1, 0)), ("reshape", per_head[part]))
        plan.steps.append(_step(f"{name}/{part}/kernel", w, post, name, f"{why}: {part} projection"))
        bias = att.biases.get(part)
        if bias is None:
            continue
        if part == "attention_output":
            b = bias.info
            plan.steps.append(rename(f"{name}/{part}/bias", b.name, b.shape, b.dtype, name, f"{why}: output bias"))
        else:
            b_post: tuple[Op, ...] = (("reshape", per_head[part][1:]),)
            plan.steps.append(_step(f"{name}/{part}/bias", bias, b_post, name, f"{why}: {part} bias"))
    for part in PARTS:
        plan.classes[f"{name}/{part}"] = "EinsumDense"
    plan.classes[name] = cls


@dataclass(frozen=True)
class KerasPart:
    kernel: TensorInfo
    bias: TensorInfo | None


def to_torch(
    layer: str, module: str, parts: dict[str, KerasPart], cls: str | None, hint: Hint | None, plan: LayoutPlan, ask: Ask
) -> None:
    """Plan PyTorch tensors for the Keras attention layer ``layer``: nn.MultiheadAttention, or four Linear modules."""
    if "gate" in parts:
        ask(f"{layer} ({cls or 'attention'}) has a gate projection (use_gate=True), which PyTorch attention lacks")
        return
    missing = [p for p in PARTS if p not in parts]
    if missing:
        ask(f"{layer} ({cls or 'attention'}) lacks the {', '.join(missing)} projection(s)")
        return
    q, k, v, o = (parts[p].kernel for p in PARTS)
    if any(len(t.shape) != 3 for t in (q, k, v)) or len(o.shape) < 3:
        ask(
            f"{layer}: attention kernels of shapes {', '.join(str(list(t.shape)) for t in (q, k, v, o))} are not "
            "(in, heads, head_dim) projections and a (heads, head_dim, out) output"
        )
        return
    (d_q, heads, head_dim), (d_k, kv_heads, key_dim), (d_v, v_heads, value_dim) = q.shape, k.shape, v.shape
    out_heads, out_dim, *out = o.shape
    if key_dim != head_dim or v_heads != kv_heads or out_heads != heads or out_dim != value_dim:
        ask(
            f"{layer}: kernels query {list(q.shape)}, key {list(k.shape)}, value {list(v.shape)}, output "
            f"{list(o.shape)} do not fit one attention layer"
        )
        return
    if len(out) != 1:
        ask(f"{layer}: an output of shape {out} (output_shape with several axes) has no PyTorch Linear")
        return
    if kv_heads != heads and (heads % kv_heads or value_dim != head_dim or CLASSES.get(cls or "") == MHA):
        ask(f"{layer}: {heads} query heads and {kv_heads} key/value heads fit no attention layer")
        return
    biases = {p: b for p in PARTS if (b := parts[p].bias) is not None}
    if len(biases) not in (0, len(PARTS)):
        ask(f"{layer} has biases on {', '.join(sorted(biases))} only; PyTorch attention has all four or none")
        return
    want = {
        "query": (heads, head_dim),
        "key": (kv_heads, head_dim),
        "value": (kv_heads, value_dim),
        "attention_output": tuple(out),
    }
    wrong = [f"{b.name} {list(b.shape)}" for p, b in biases.items() if b.shape != want[p]]
    if wrong:
        ask(f"{layer}: biases {', '.join(wrong)} do not fit the kernels")
        return
    kind = hint.kind if hint and hint.kind in ATTENTION_KINDS else None
    if kind and hint and hint.dims and (hint.dims[0] != heads or (kind == "gqa" and hint.dims[1:] != (kv_heads,))):
        ask(f"{layer} has {heads} heads ({kv_heads} for keys and values), not what the hint '{hint.pattern}' says")
        return
    grouped = CLASSES.get(cls or "") == GQA or kv_heads != heads
    if kind in ("mha_linears", "gqa") or grouped:
        _linears(layer, module, parts, plan, cls or (GQA if grouped else MHA))
        return
    embed = heads * head_dim
    reasons = []
    if embed != d_q:
        reasons.append(f"heads x key_dim = {embed} differs from the query width {d_q}")
    if value_dim != head_dim:
        reasons.append(f"value_dim {value_dim} differs from key_dim {head_dim}")
    if out[0] != d_q:
        reasons.append(f"the output width {out[0]} differs from the query width {d_q}")
    if reasons:
        ask(
            f"{layer}: torch.nn.MultiheadAttention cannot hold it ({'; '.join(reasons)}); "
            f"{hint_help(layer, ('mha_linears',))} gives four Linear modules q_proj, k_proj, v_proj, out_proj"
        )
        return
    _nn_multihead(layer, module, parts, plan, cls or MHA, packed=d_k == d_q and d_v == d_q)


def _nn_multihead(
    layer: str, module: str, parts: dict[str, KerasPart], plan: LayoutPlan, cls: str, packed: bool
) -> None:
    """``torch.nn.MultiheadAttention``'s parameters, in its state_dict's order."""
    q = parts["query"].kernel
    embed = q.shape[1] * q.shape[2]
    why = f"{cls} -> torch.nn.MultiheadAttention"
    steps = plan.steps

    def flat(kernel: TensorInfo) -> tuple[Op, ...]:
        return (("reshape", (kernel.shape[0], embed)), ("transpose", (1, 0)))

    if packed:
        kernels = [parts[p].kernel for p in QKV]
        steps.append(
            Step(
                f"{module}.in_proj_weight",
                tuple(k.name for k in kernels),
                (3 * embed, q.shape[0]),
                q.dtype,
                combine="stack",
                pre=flat(q),
                post=(("reshape", (3 * embed, q.shape[0])),),
                layer=layer,
                why=f"{why}: query, key and value projections packed",
                in_shapes=tuple(k.shape for k in kernels),
            )
        )
    else:
        for p in QKV:
            k = parts[p].kernel
            steps.append(
                moved(
                    f"{module}.{p[0]}_proj_weight",
                    k.name,
                    k.shape,
                    k.dtype,
                    flat(k),
                    layer,
                    f"{why}: {p} projection (its input is {k.shape[0]} wide)",
                )
            )
    biases = [parts[p].bias for p in QKV]
    if all(b is not None for b in biases):
        bs = [b for b in biases if b is not None]
        steps.append(
            Step(
                f"{module}.in_proj_bias",
                tuple(b.name for b in bs),
                (3 * embed,),
                bs[0].dtype,
                combine="stack",
                pre=(("reshape", (embed,)),),
                post=(("reshape", (3 * embed,)),),
                layer=layer,
                why=f"{why}: query, key and value biases packed",
                in_shapes=tuple(b.shape for b in bs),
            )
        )
    o = parts["attention_output"]
    post = (("reshape", (embed, o.kernel.shape[-1])), ("transpose", (1, 0)))
    steps.append(
        moved(
            f"{module}.out_proj.weight",
            o.kernel.name,
            o.kernel.shape,
            o.kernel.dtype,
            post,
            layer,
            f"{why}: output projection",
        )
    )
    if o.bias is not None:
        b = o.bias
        steps.append(rename(f"{module}.out_proj.bias", b.name, b.shape, b.dtype, layer, f"{why}: output bias"))


def _linears(layer: str, module: str, parts: dict[str, KerasPart], plan: LayoutPlan, cls: str) -> None:
    """Four ``nn.Linear`` modules ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``."""
    why = f"{CLASSES.get(cls, cls)} -> Linear modules"
    for p in PARTS:
        k, b = parts[p].kernel, parts[p].bias
        if p == "attention_output":
            inputs = k.shape[0] * k.shape[1]
            post: tuple[Op, ...] = (("reshape", (inputs, k.shape[-1])), ("transpose", (1, 0)))
        else:
            post = (("reshape", (k.shape[0], k.shape[1] * k.shape[2])), ("transpose", (1, 0)))
        target = f"{module}.{LINEARS[p]}"
        plan.steps.append(moved(f"{target}.weight", k.name, k.shape, k.dtype, post, layer, f"{why}: {p} projection"))
        if b is not None:
            b_post: tuple[Op, ...] = (("reshape", (b.shape[0] * b.shape[1],)),) if p != "attention_output" else ()
            plan.steps.append(moved(f"{target}.bias", b.name, b.shape, b.dtype, b_post, layer, f"{why}: {p} bias"))
