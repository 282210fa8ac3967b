"""How a user loads a checkpoint in a script: everything into memory with the library of its format."""

import sys

import torch
from safetensors.torch import load_file


def load(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        return load_file(path)
    return torch.load(path, weights_only=True, map_location="cpu")


if __name__ == "__main__":
    sys.exit("import this module")
