"""Reading JSON that ckptkit checks: repeated keys noticed, and user-given files read with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ckptkit.core.errors import UsageError


def dumps_text(data: Any, **options: Any) -> str:
    """JSON text that can be written as UTF-8: non-ASCII kept as is, unless a string holds a lone
    surrogate (a name read from bytes that are not UTF-8), which only ``\\u`` escapes can carry."""
    text = json.dumps(data, ensure_ascii=False, **options)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(data, ensure_ascii=True, **options)
    return text


def loads_noting_repeats(text: str | bytes) -> tuple[Any, list[str]]:
    """Parse JSON, also returning every key written twice in one object (``json`` keeps the last).

    JSON nested past Python's recursion limit raises :class:`RecursionError` (json recurses once per
    level and checks the limit): callers refuse it as too deep.
    """
    repeated: list[str] = []

    def keep_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                repeated.append(key)
            out[key] = value
        return out

    return json.loads(text, object_pairs_hook=keep_repeats), repeated


def read_user_json(path: Path, what: str, how_to_make: str) -> Any:
    """A JSON file named on the command line; unreadable or invalid is a usage error (exit 2)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"cannot read the {what}: {err.strerror or err}", path) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"the {what} is not valid JSON; make one with {how_to_make}", path) from None
