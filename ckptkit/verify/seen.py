"""What verify found in a checkpoint, per tensor name, for comparing with a manifest or schema."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Seen:
    """One tensor (or alias) as found: its header facts, content hash when computed, and its file."""

    dtype: str
    shape: tuple[int, ...]
    file: str
    sha256: str | None = None
    readable: bool = True
    alias_of: str | None = None  # tied weights: the name whose data this one shares
