"""Hints read off a Keras model (``--template`` with ``--layout keras``): its layer classes decide.

A PyTorch module is matched to the template's layer of the same name, or, when no name matches,
to the layer at the same position among the layers with weights. The layer's class then says
what names and shapes cannot: a transposed or depthwise convolution (and its multiplier), an
Embedding, a separable convolution. Hints given on the command line still win.
"""

from __future__ import annotations

import json
from pathlib import Path

from ckptkit.core.model import TensorInfo
from ckptkit.layout.hints import Hint

_KINDS = {
    "Embedding": "embedding",
    "LayerNormalization": "norm",
    "GroupNormalization": "group_norm",
    "RMSNormalization": "rms_norm",
}


def template_hints(template: Path, torch_infos: list[TensorInfo]) -> list[Hint]:
    """Hints for the PyTorch modules of ``torch_infos`` from the Keras model in ``template``."""
    from ckptkit import registry

    with registry.open_checkpoint(template) as tpl:
        classes = json.loads(tpl.metadata.get("keras:classes", "{}") or "{}")
        shapes = {ti.name: ti.shape for ti in tpl.tensor_infos()}
    layers: dict[str, str] = {}
    for name in shapes:
        top = name.split("/", 1)[0]
        if top != "optimizer" and top in classes:
            layers.setdefault(top, classes[top])
    modules: list[str] = []
    for ti in torch_infos:
        module = ti.name.rpartition(".")[0]
        if module and module not in modules:
            modules.append(module)
    pairs = [(m, m) for m in modules if m in layers]
    # A separable convolution is one Keras layer over two PyTorch modules under its name.
    pairs += [(layer, layer) for layer, cls in layers.items()
              if cls.startswith("SeparableConv") and any(m.startswith(layer + ".") for m in modules)]  # fmt: skip
    if not pairs and len(modules) == len(layers):
        pairs = list(zip(modules, layers, strict=True))
    return [h for module, layer in pairs if (h := _hint(module, layers[layer], shapes, layer)) is not None]


def _hint(module: str, cls: str, shapes: dict[str, tuple[int, ...]], layer: str) -> Hint | None:
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
    return None
