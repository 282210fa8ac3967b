"""Relative paths that a checkpoint names for its other files (shards, external data).

Two rules, for two kinds of reference:

- :func:`is_inside_name` judges a name as written: shard indexes and DCP metadata may name only
  files inside their folder, but those files may be symbolic links to anywhere, as every file of a
  Hugging Face cache snapshot is (``snapshots/<rev>/model.safetensors -> ../../blobs/<sha>``).
- :func:`resolve_inside` also follows symbolic links: ONNX external data must really lie in the
  model's folder, because a model file alone (a download) can name any file a link reaches.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from ckptkit.core.errors import CorruptCheckpointError, UnsafeCheckpointError


def is_inside_name(name: str) -> bool:
    """Whether ``name`` names a file inside the folder it is relative to, judged from the text alone.

    Refused: an empty name, an absolute path, a drive or any colon, a ``..`` component, a NUL, and
    backslashes on every platform (a separator on Windows, so ``..\\x`` would climb out there).
    """
    if not name or "\\" in name or ":" in name or "\0" in name:
        return False
    pure = PurePosixPath(name)
    return bool(pure.parts) and not pure.is_absolute() and ".." not in pure.parts


def is_inside_url_name(name: str) -> bool:
    """:func:`is_inside_name` for a name joined to the folder of a URL. A percent escape (``%2e%2e``
    is ``..`` to HTTP clients and servers), ``?`` and ``#`` (which end a URL's path) would name
    another URL than the file beside it, so they are refused too."""
    return is_inside_name(name) and not any(c in name for c in "%?#")


def check_relative_name(name: str, named_by: str) -> None:
    """Refuse a file name that could leave the folder of the file that names it (see :func:`is_inside_name`)."""
    if not is_inside_name(name):
        raise CorruptCheckpointError(
            f"{named_by} names the file {name!r}, which is not a file inside its folder; refusing to read it"
        )


def resolve_inside(folder: Path, name: str, what: str, where: str) -> Path:
    """The path ``name`` names relative to ``folder``, symbolic links followed, if it lies inside ``folder``.

    Refused with :class:`UnsafeCheckpointError`: an absolute path or a drive, and a name that
    leads outside ``folder`` through ``..`` or a symbolic link (judged on the resolved path, so
    ``sub/../w.bin`` stays allowed and a backslash counts as a separator where the platform
    says so). ``what`` starts the message ("tensor 'w': external data location"), ``where`` names
    the folder for people ("the model's folder").
    """
    windows = PureWindowsPath(name)
    if PurePosixPath(name).is_absolute() or windows.drive or windows.is_absolute():
        raise UnsafeCheckpointError(
            f"{what} {name!r} is an absolute path; ckptkit reads only files inside {where} {folder}"
        )
    base = folder.resolve()
    resolved = (base / name).resolve()
    if not resolved.is_relative_to(base):
        raise UnsafeCheckpointError(
            f"{what} {name!r} leads outside {where} (to {resolved}); ckptkit reads only files inside {folder}"
        )
    return resolved
