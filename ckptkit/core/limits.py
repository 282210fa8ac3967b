"""Bounds every reader checks before it trusts a size a file claims.

A checkpoint's header can claim a terabyte of tensor data, a million nested levels or a billion
tensors; readers compare such claims with these limits (and with the file's real size) before
they allocate memory or loop over what the header announces. Each limit has a safe default and
can be raised or lowered with an environment variable (``CKPTKIT_MAX_HEADER_BYTES=500MB``);
sizes are written like ``500MB``, ``2GiB`` or a plain byte count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from ckptkit.core.errors import CorruptCheckpointError, UsageError

ENV_PREFIX = "CKPTKIT_MAX_"


@dataclass(frozen=True)
class Limits:
    """The bounds in force; read them with :func:`current`.

    * ``header_bytes``: a format's header or index held in memory (safetensors JSON header, a zip
      archive's central directory, an ONNX graph without its weights, a Keras config).
    * ``tensors``: tensors in one checkpoint.
    * ``pickle_bytes``: a PyTorch pickle (``data.pkl``, or the pickles of a legacy file).
    * ``pickle_depth``: nesting of containers in a pickle, and of any other nested header data.
    * ``pickle_objects``: containers a pickle may build, and objects walked to name its tensors.
    * ``member_bytes``: the decompressed size of a compressed archive member read into memory.
    * ``expanded_bytes``: memory a tensor may take beyond the bytes it reads from the file (a
      tensor with a zero stride repeats its data; reading it makes a full-size copy).
    """

    header_bytes: int = 100 * 1024 * 1024
    tensors: int = 1_000_000
    pickle_bytes: int = 512 * 1024 * 1024
    pickle_depth: int = 200
    pickle_objects: int = 5_000_000
    member_bytes: int = 1024 * 1024 * 1024
    expanded_bytes: int = 1024 * 1024 * 1024

    @staticmethod
    def env_name(field: str) -> str:
        return ENV_PREFIX + field.upper()


_COUNTS = frozenset({"tensors", "pickle_depth", "pickle_objects"})


def current() -> Limits:
    """The limits in force: the defaults, overridden by ``CKPTKIT_MAX_*`` environment variables."""
    values: dict[str, int] = {}
    for f in fields(Limits):
        text = os.environ.get(Limits.env_name(f.name))
        if text:
            values[f.name] = _parse(f.name, text)
    return Limits(**values)


def _parse(field: str, text: str) -> int:
    from ckptkit.core.model import parse_size

    name = Limits.env_name(field)
    if field in _COUNTS:
        try:
            value = int(text.strip().replace("_", ""))
        except ValueError:
            raise UsageError(f"{name}={text!r} is not a whole number") from None
        if value <= 0:
            raise UsageError(f"{name}={text!r} must be positive")
        return value
    try:
        return parse_size(text)
    except UsageError:
        raise UsageError(f"{name}={text!r} is not a size; write it like 500MB or 2GiB") from None


def exceeded(what: str, found: int, field: str, unit: str = "bytes") -> CorruptCheckpointError:
    """The error for a claim over a limit, naming the variable that raises it."""
    limit = getattr(current(), field)
    return CorruptCheckpointError(
        f"{what} is {found:,} {unit}, over ckptkit's limit of {limit:,} {unit}; if the file is trusted, "
        f"raise the limit with {Limits.env_name(field)}"
    )


def check(what: str, found: int, field: str, unit: str = "bytes") -> None:
    """Raise :func:`exceeded` when ``found`` is over the limit ``field``."""
    if found > getattr(current(), field):
        raise exceeded(what, found, field, unit)
