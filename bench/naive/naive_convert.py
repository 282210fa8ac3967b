"""Naive conversion between PyTorch and safetensors: load it all, save it all."""

import sys

import torch
from naive_load import load
from safetensors.torch import save_file

src, dst = sys.argv[1], sys.argv[2]
state = load(src)
if dst.endswith(".safetensors"):
    save_file({k: v.contiguous() for k, v in state.items()}, dst, metadata={"format": "pt"})
else:
    torch.save(state, dst)
