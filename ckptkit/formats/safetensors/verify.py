"""Structure checks of a safetensors file: every problem :mod:`.header` finds, not only the first."""

from __future__ import annotations

from pathlib import Path

from ckptkit.core.findings import Finding, ProblemSink
from ckptkit.formats.safetensors.header import parse


def check_structure(path: Path) -> list[Finding]:
    """Every structural fault of the safetensors file at ``path``."""
    sink = ProblemSink(path, strict=False)
    with open(path, "rb") as f:
        parse(f, path.stat().st_size, sink)
    return sink.findings
