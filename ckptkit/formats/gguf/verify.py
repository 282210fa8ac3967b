"""Structure checks of a GGUF file: every problem :mod:`.header` finds, not only the first."""

from __future__ import annotations

import mmap
from pathlib import Path

from ckptkit.core.findings import Finding, ProblemSink
from ckptkit.formats.gguf.header import FIRST_READ, parse
from ckptkit.io.source import Source


def check_structure(path: Path | Source) -> list[Finding]:
    """Every structural fault of the GGUF file at ``path``: counts, strings, value types, offsets, overlaps.

    ``path`` may be a file at a URL: its header is then fetched as the parse reaches it."""
    if isinstance(path, Source) and path.remote:
        sink = ProblemSink(path.name, strict=False)
        parse(path.read_at(0, FIRST_READ), path.size, sink, more=path.read_at)
        return sink.findings
    if isinstance(path, Source):
        assert path.local_path is not None
        path = path.local_path
    sink = ProblemSink(path, strict=False)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size == 0:
            parse(b"", 0, sink)
        else:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                parse(buf, size, sink)
    return sink.findings
