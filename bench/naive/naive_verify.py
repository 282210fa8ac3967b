"""Naive verify: load every tensor and check that its values are finite."""

import sys

import torch
from naive_load import load

bad = [name for name, t in load(sys.argv[1]).items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
print("non-finite:", bad)
sys.exit(1 if bad else 0)
