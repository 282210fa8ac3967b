"""Synthetic transformer-like checkpoints of a chosen size, written the way users' files are made.

Shapes: an embedding and an untied output head of 32000 x 2304 (147 MB each in 16-bit: the
largest tensors at every size), a final norm, and 22 blocks of attention (q, k, v, o: d x d), MLP
(gate, up: f x d; down: d x f, f = 8d/3) and two norms, with d chosen so the tensors add up to the
requested size: 201 tensors whatever the size. Values are normal(0, 0.02) from a fixed seed.
Smoke-test sizes under 0.4 GB get a 500 x 288 embedding instead, so that they stay small.

The PyTorch file is written with ``torch.save``, the safetensors file with
``safetensors.torch.save_file`` and the DCP folder with ``torch.distributed.checkpoint.save`` (one
process, so each tensor is one chunk), all from the same in-memory state dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

VOCAB = 32000
EMBED_DIM = 2304
LAYERS = 22
DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class Layout:
    """The shapes of a synthetic checkpoint."""

    shapes: dict[str, tuple[int, ...]]

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    @property
    def largest(self) -> int:
        return max(math.prod(s) for s in self.shapes.values())


def layout(total_bytes: int, itemsize: int = 2) -> Layout:
    """Shapes whose tensors add up to about ``total_bytes``."""
    vocab, dim = (VOCAB, EMBED_DIM) if total_bytes >= 400_000_000 else (VOCAB // 64, EMBED_DIM // 8)
    fixed = 2 * vocab * dim + dim
    per_layer_budget = max(total_bytes // itemsize - fixed, LAYERS * 64) / LAYERS
    # per block: 4 d^2 (attention) + 3 f d (MLP) + 2 d (norms), f = 8d/3  ->  12 d^2 + 2 d
    d = max(8, int((-2 + math.sqrt(4 + 48 * per_layer_budget)) / 24) // 8 * 8)
    f = (8 * d // 3) // 8 * 8
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, dim)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{name}.weight"] = (d, d)
        shapes[p + "mlp.gate_proj.weight"] = (f, d)
        shapes[p + "mlp.up_proj.weight"] = (f, d)
        shapes[p + "mlp.down_proj.weight"] = (d, f)
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
    shapes["model.norm.weight"] = (dim,)
    shapes["lm_head.weight"] = (vocab, dim)
    return Layout(shapes)


def make(
    total_bytes: int, dtype: str, pt_path: Path, st_path: Path, dcp_path: Path | None = None, seed: int = 0
) -> Layout:
    """Write the same synthetic state dict to ``pt_path`` (torch.save), ``st_path`` (safetensors)
    and, if given, ``dcp_path`` (torch.distributed.checkpoint.save from one process)."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = getattr(torch, DTYPES[dtype])
    shape_plan = layout(total_bytes, torch.tensor([], dtype=torch_dtype).element_size())
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shape_plan.shapes.items():
        t = torch.empty(shape, dtype=torch_dtype)
        if len(shape) == 1:
            t.fill_(1.0)
        else:
            rows = max(1, (16 << 20) // (4 * shape[-1]))  # fill in 16 MB float32 pieces
            for start in range(0, shape[0], rows):
                piece = torch.randn((min(rows, shape[0] - start), *shape[1:]), generator=gen) * 0.02
                t[start : start + rows].copy_(piece)
        state[name] = t
    torch.save(state, pt_path)
    save_file(state, st_path, metadata={"format": "pt"})
    if dcp_path is not None:
        import warnings

        import torch.distributed.checkpoint as dcp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
            dcp.save(state, checkpoint_id=dcp_path)
    return shape_plan
