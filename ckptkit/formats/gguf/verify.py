"""Structure checks of a GGUF file: every problem :mod:`.header` finds, not only the first."""

from __future__ import annotations

import mmap
from pathlib import Path

from ckptkit.core.findings import Finding, ProblemSink
from ckptkit.formats.gguf.header import parse


def check_structure(path: Path) -> list[Finding]:
    """Every structural fault of the GGUF file at ``path``: counts, strings, value types, offsets, overlaps."""
    sink = ProblemSink(path, strict=False)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size == 0:
            parse(b"", 0, sink)
        else:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                parse(buf, size, sink)
    return sink.findings
