"""Relative paths that a checkpoint names for its other files (shards, external data)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath


def escapes_folder(folder: Path, name: str) -> bool:
    """Whether ``name``, relative to ``folder``, points outside it: absolute, ``..``, or a symlink out."""
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive or PureWindowsPath(name).is_absolute():
        return True
    pure = PurePosixPath(name.replace("\\", "/"))
    if ".." in pure.parts:
        return True
    base = folder.resolve()
    target = (base / pure).resolve()
    return target != base and base not in target.parents
