"""Hints read off a Keras model (``--template`` with ``--layout keras``): its layer classes decide.

A PyTorch module is matched to the template's layer of the same name, or, when no name matches,
to the layer at the same position among the layers with weights. The layer's class then says
what names and shapes cannot: a transposed or depthwise convolution (and its multiplier), an
Embedding, a separable convolution, an attention layer's heads (read off its kernels). A layer of a
class no rule translates (an EinsumDense whose equation is not Dense's, a custom layer) makes the
translation stop there rather than fill it by shape. Hints given on the command line still win.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ckptkit.core.model import TensorInfo
from ckptkit.formats.keras import naming, structure
from ckptkit.layout import attention
from ckptkit.layout.hints import NO_RULE, Hint

_KINDS = {
    "Embedding": "embedding",
    "LayerNormalization": "norm",
    "GroupNormalization": "group_norm",
    "RMSNormalization": "rms_norm",
}
# Classes whose layer needs no hint: the rules read them off names and shapes.
_BY_RULES = ("Dense", "BatchNormalization", "LSTM", "GRU", "SimpleRNN", naming.BIDIRECTIONAL, *naming.MODEL_CLASSES)


def template_hints(template: Path, torch_infos: list[TensorInfo]) -> list[Hint]:
    """Hints for the PyTorch modules of ``torch_infos`` from the Keras model in ``template``."""
    from ckptkit import registry

    with registry.open_checkpoint(template) as tpl:
        classes = json.loads(tpl.metadata.get("keras:classes", "{}") or "{}")
        shapes = {ti.name: ti.shape for ti in tpl.tensor_infos()}
        configs = structure.layer_configs(structure.model_config(tpl.metadata))
    layers: dict[str, str] = {}
    for name in shapes:
        top = name.split("/", 1)[0]
        if top != "optimizer" and top in classes:
            layers.setdefault(top, classes[top])
    params: dict[str, set[str]] = {}
    for ti in torch_infos:
        module, _, param = ti.name.rpartition(".")
        if module:
            params.setdefault(module, set()).add(param)
    # nn.MultiheadAttention keeps its output projection in a module of its own: one Keras layer.
    packed = {m for m, names in params.items() if names & {"in_proj_weight", *attention.MHA_SEPARATE}}
    modules = [m for m in params if not (m.endswith(".out_proj") and m[: -len(".out_proj")] in packed)]
    pairs = [(m, m) for m in modules if m in layers]
    # A separable convolution, or attention made of Linear modules, is one Keras layer over the modules under its name.
    pairs += [
        (layer, layer)
        for layer, cls in layers.items()
        if (cls.startswith("SeparableConv") or cls in attention.CLASSES) and layer not in params
        if any(m.startswith(layer + ".") for m in modules)
    ]
    if not pairs and len(modules) == len(layers):
        pairs = list(zip(modules, layers, strict=True))
    return [h for module, layer in pairs if (h := _hint(module, layers[layer], shapes, layer, configs)) is not None]


def _hint(
    module: str, cls: str, shapes: dict[str, tuple[int, ...]], layer: str, configs: dict[str, tuple[str, Any]]
) -> Hint | None:
    if cls in attention.CLASSES:
        query, key = shapes.get(f"{layer}/query/kernel"), shapes.get(f"{layer}/key/kernel")
        if query is None or key is None or len(query) != 3 or len(key) != 3:
            return Hint(module, NO_RULE, cls=f"{cls} whose projections are not (in, heads, head_dim) kernels")
        if attention.CLASSES[cls] == attention.GQA:
            return Hint(module, "gqa", (query[1], key[1]))
        return Hint(module, "mha", (query[1],))
    if cls == "EinsumDense":
        cfg = configs.get(layer, ("", {}))[1]
        equation, bias_axes = cfg.get("equation"), cfg.get("bias_axes")
        if isinstance(equation, str) and naming.is_dense_equation(equation, bias_axes):
            return Hint(module, "dense")
        what = f"computing {equation!r}" if isinstance(equation, str) else "whose equation the template does not record"
        return Hint(module, NO_RULE, cls=f"EinsumDense {what}")
    if cls == "ReversibleEmbedding":
        if f"{layer}/reverse_embeddings" in shapes:
            return Hint(module, NO_RULE, cls="ReversibleEmbedding with tie_weights=False")
        return Hint(module, "reversible")
    if cls in _KINDS:
        return Hint(module, _KINDS[cls])
    if cls.startswith("Conv") and cls.endswith("Transpose"):
        return Hint(module, "conv_transpose")
    if cls.startswith("DepthwiseConv"):
        kernel = shapes.get(f"{layer}/kernel")
        return Hint(module, "depthwise", (kernel[-1],)) if kernel else None
    if cls.startswith("SeparableConv"):
        kernel = shapes.get(f"{layer}/depthwise_kernel")
        return Hint(module, "separable", (kernel[-1],)) if kernel else None
    if cls.startswith("Conv"):
        return Hint(module, "conv")
    if cls in _BY_RULES:
        return None
    return Hint(module, NO_RULE, cls=cls)
