"""Naive conversion between PyTorch, safetensors and sharded safetensors: load it all, save it all."""

import sys
from pathlib import Path

import torch
from naive_load import load
from safetensors.torch import save_file

src, dst = sys.argv[1], sys.argv[2]
state = load(src)
if dst.endswith(".index.json"):
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict(state, Path(dst).parent, max_shard_size=int(sys.argv[3]))
elif dst.endswith(".safetensors"):
    save_file({k: v.contiguous() for k, v in state.items()}, dst, metadata={"format": "pt"})
else:
    torch.save(state, dst)
