"""Publishing a checkpoint written locally to an object store (``s3://``, ``gs://``, ``az://``, ``hf://``).

A checkpoint bound for a URL is written and checked in a local staging folder first (the same
writers, the same verification), then uploaded by :func:`publish`: the data files (shards, external
data) first, the main file (the shard index, or the single checkpoint file) last.

Why this order and not a temporary prefix renamed at the end: object stores have no rename (a
"move" is a server-side copy of every byte plus a delete, which for an 800 GB checkpoint costs
as much again as the upload), but they do publish each object only when its upload completes, so
no reader ever sees a partial object. A set of shards is not a checkpoint until its index names
them; loaders open the index (or the single file) and nothing else. Uploading the index last
therefore makes the checkpoint appear at one instant, complete. Before any upload every final
name is checked: one that exists stops the write unless ``force``. With ``force`` over an earlier
checkpoint, its index is deleted before the first upload, so that it never points at a mix of old
and new shards, and so is the main file of a checkpoint of several files (a TensorFlow index, an
ONNX model), whose data files keep their names from one write to the next; its files that the new
checkpoint does not overwrite are deleted after the new main file is in place. A failed upload
deletes every object it uploaded; a process killed outright leaves its shards, named by no index,
for the next write with ``force`` to replace.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptkit.core.errors import CkptkitError, OutputExistsError, UploadError, UsageError
from ckptkit.io.shards.index import INDEX_SUFFIX
from ckptkit.io.source import _filesystem
from ckptkit.io.workers import default_executor

# Stores that publish an object only when its upload completes; http(s) servers take no writes.
READ_ONLY_PROTOCOLS = ("http", "https")


@dataclass(frozen=True)
class RemoteTarget:
    """Where an output goes: the filesystem, the folder (as the filesystem names it) and the URL
    prefix that folder has for the user."""

    fs: Any
    folder: str
    url_folder: str
    name: str  # the main file's name in the folder

    def path(self, name: str) -> str:
        return f"{self.folder}/{name}" if self.folder else name

    def url(self, name: str) -> str:
        return f"{self.url_folder}/{name}"


def remote_target(url: str, default_name: str | None) -> RemoteTarget:
    """The target a destination URL names: a file, or with a trailing ``/`` a folder in which the
    output takes ``default_name``."""
    protocol = url.split("://", 1)[0].lower()
    if protocol in READ_ONLY_PROTOCOLS:
        raise UsageError(f"{protocol}:// URLs cannot be written to; upload to an object store (s3://, gs://, hf://)")
    if url.endswith("/"):
        if not default_name:
            raise UsageError("the destination ends in '/', a folder; name the file to write", url)
        url_folder, name = url.rstrip("/"), default_name
    else:
        url_folder, _, name = url.rpartition("/")
        if "://" not in url_folder or not name:
            raise UsageError("name a file (or a folder ending in '/') under the bucket", url)
    fs, folder = _filesystem(url_folder + "/", None)
    return RemoteTarget(fs, folder.rstrip("/"), url_folder, name)


def check_free(target: RemoteTarget, names: Sequence[str], force: bool) -> None:
    """Refuse when one of ``names`` exists in the target folder and ``force`` is not given."""
    if force:
        return
    for name in names:
        if _exists(target, name):
            raise OutputExistsError("exists already; pass --force to overwrite it", target.url(name))


def previous_files(target: RemoteTarget) -> list[str]:
    """The files of the checkpoint an earlier write left under the target's main name: the single
    file, its index, the shards that index names and numbered shards of the same series."""
    base = target.name.removesuffix(INDEX_SUFFIX)
    index = base + INDEX_SUFFIX
    stem, dot, suffix = base.partition(".")
    series = re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}" + re.escape(dot + suffix))
    target.fs.invalidate_cache(target.folder)
    try:
        listed = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in target.fs.ls(target.folder or "", detail=False)]
    except FileNotFoundError:
        return []
    except OSError as err:
        raise UsageError(f"cannot list {target.url_folder}: {err}") from None
    present = set(listed)
    found = [n for n in (base, index) if n in present]
    if index in present:
        try:
            weight_map = json.loads(target.fs.cat_file(target.path(index))).get("weight_map", {})
            found += [n for n in dict.fromkeys(weight_map.values()) if isinstance(n, str) and n in present]
        except (OSError, ValueError, AttributeError):
            pass  # an unreadable index is still replaced; its shards go by name
    found += sorted(n for n in listed if series.fullmatch(n))
    return list(dict.fromkeys(found))


def publish(target: RemoteTarget, staged: Path, files: Sequence[Path], force: bool) -> list[str]:
    """Upload ``files`` (paths under ``staged``, the main file last) into the target folder under
    the same relative names; the URLs written, the main file last. See the module's description for
    the order, the checks and what a failure leaves."""
    names = [f.relative_to(staged).as_posix() for f in files]
    main = names[-1]
    check_free(target, names, force)
    stale = [n for n in previous_files(target) if n not in names]
    if stale and not force:
        shown = target.url(stale[0])
        raise OutputExistsError(
            "exists already, from an earlier checkpoint this output replaces; pass --force to replace it", shown
        )
    uploaded: list[str] = []
    lock = threading.Lock()

    def upload(i: int) -> None:
        remote = target.path(names[i])
        target.fs.put_file(str(files[i]), remote)
        with lock:
            uploaded.append(remote)

    index = target.name.removesuffix(INDEX_SUFFIX) + INDEX_SUFFIX
    try:
        # Never leave an earlier index (or main file: a TensorFlow index, an ONNX model) pointing at
        # files this upload replaces under the same names, such as a data file that keeps its name.
        for name in dict.fromkeys([index, *([main] if len(names) > 1 else [])]):
            if force and _exists(target, name):
                target.fs.rm_file(target.path(name))
        default_executor().map(upload, list(range(len(names) - 1)))
        upload(len(names) - 1)
    except BaseException as err:
        _remove(target, uploaded)
        if isinstance(err, CkptkitError) or not isinstance(err, Exception):
            raise
        removed = f"; removed the {len(uploaded)} files it had uploaded" if uploaded else ""
        raise UploadError(f"upload failed ({err}){removed}", target.url(main)) from None
    _remove(target, [target.path(n) for n in stale])
    return [target.url(n) for n in names]


def _exists(target: RemoteTarget, name: str) -> bool:
    try:
        return bool(target.fs.exists(target.path(name)))
    except OSError as err:
        raise UsageError(f"cannot reach {target.url(name)}: {err}") from None


def _remove(target: RemoteTarget, paths: Sequence[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):  # already gone, or the store refuses: nothing more to do here
            target.fs.rm_file(path)
