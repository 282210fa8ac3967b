"""Naive inspect: load the checkpoint and print each tensor's name, dtype and shape."""

import sys

from naive_load import load

for name, t in load(sys.argv[1]).items():
    print(name, t.dtype, tuple(t.shape))
