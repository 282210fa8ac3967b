"""Naive diff: load both checkpoints and compare tensor by tensor in float32."""

import sys

import torch
from naive_load import load

a, b = load(sys.argv[1]), load(sys.argv[2])
for name in sorted(set(a) | set(b)):
    if name not in a or name not in b:
        print(name, "only in one")
        continue
    x, y = a[name].float(), b[name].float()
    d = (x - y).abs()
    cos = torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0)
    print(name, float(d.max()), float(d.mean()), float(cos))
