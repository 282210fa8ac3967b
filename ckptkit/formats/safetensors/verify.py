"""Structure checks of a safetensors file: every problem :mod:`.header` finds, not only the first."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, cast

from ckptkit.core.findings import Finding, ProblemSink
from ckptkit.formats.safetensors.header import parse
from ckptkit.io.source import Source


def check_structure(path: Path | Source) -> list[Finding]:
    """Every structural fault of the safetensors file at ``path`` (a local path, or a file at a URL,
    whose header is read by range requests)."""
    if isinstance(path, Source) and path.remote:
        sink = ProblemSink(path.name, strict=False)
        with path.ranges() as f:
            parse(cast(BinaryIO, f), path.size, sink)
        return sink.findings
    local = path.local_path if isinstance(path, Source) else path
    assert local is not None
    sink = ProblemSink(local, strict=False)
    with open(local, "rb") as f:
        parse(f, local.stat().st_size, sink)
    return sink.findings
