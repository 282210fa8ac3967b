"""Relative paths that a checkpoint names for its other files (shards, external data).

Two rules, for two kinds of reference:

- :func:`is_inside_name` judges a name as written: shard indexes and DCP metadata may name only
  files inside their folder, but those files may be symbolic links to anywhere, as every file of a
  Hugging Face cache snapshot is (``snapshots/<rev>/model.safetensors -> ../../blobs/<sha>``).
- :func:`escapes_folder` also follows symbolic links: ONNX external data must really lie in the
  model's folder, because a model file alone (a download) can name any file a link reaches.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from ckptkit.errors import CorruptCheckpointError


def is_inside_name(name: str) -> bool:
    """Whether ``name`` names a file inside the folder it is relative to, judged from the text alone.

    Refused: an empty name, an absolute path, a drive or any colon, a ``..`` component, a NUL, and
    backslashes on every platform (a separator on Windows, so ``..\\x`` would climb out there).
    """
    if not name or "\\" in name or ":" in name or "\0" in name:
        return False
    pure = PurePosixPath(name)
    return bool(pure.parts) and not pure.is_absolute() and ".." not in pure.parts


def check_relative_name(name: str, named_by: str) -> None:
    """Refuse a file name that could leave the folder of the file that names it (see :func:`is_inside_name`)."""
    if not is_inside_name(name):
        raise CorruptCheckpointError(
            f"{named_by} names the file {name!r}, which is not a file inside its folder; refusing to read it"
        )


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
