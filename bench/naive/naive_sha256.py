"""sha256 of a file in one thread, 1 MB reads: what `hashlib` gives a user."""

import hashlib
import sys

h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    while chunk := f.read(1 << 20):
        h.update(chunk)
print(h.hexdigest())
