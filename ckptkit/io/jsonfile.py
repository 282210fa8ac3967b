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

    JSON nested past Python's recursion limit raises :class:`json.JSONDecodeError` like any other
    invalid JSON.
    """
    repeated: list[str] = []

    def keep_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                repeated.append(key)
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=keep_repeats), repeated
    except RecursionError:
        # json recurses once per level; past Python's stack it stops with RecursionError. Reported
        # as invalid JSON, so every caller refuses it the way it refuses a syntax error.
        raise json.JSONDecodeError("it nests arrays or objects too deeply", "", 0) from None


def read_user_json(path: Path, what: str, how_to_make: str) -> Any:
    """A JSON file named on the command line; unreadable or invalid is a usage error (exit 2)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"cannot read the {what}: {err.strerror or err}", path) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"the {what} is not valid JSON; make one with {how_to_make}", path) from None
