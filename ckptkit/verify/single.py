"""Verifying one checkpoint file: what it is, its format's structure checks, then its tensors."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ckptkit import registry
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, UnsupportedError
from ckptkit.core.findings import Finding, TargetReport, error
from ckptkit.core.format import Format
from ckptkit.core.model import ProgressFn
from ckptkit.formats.sharded import FORMAT_NAME as FOLDER_FORMAT
from ckptkit.formats.sharded import resolve_folder
from ckptkit.registry import LFS_POINTER_PREFIX
from ckptkit.verify.content import check_contents
from ckptkit.verify.seen import Seen

StructureCheck = Callable[[Path], list[Finding]]


@dataclass(frozen=True)
class Settings:
    """What the content pass needs to know; shared by single files and shards."""

    hashes: bool = False
    no_nan: bool = False
    workers: int | None = None
    progress: ProgressFn | None = None


def structure_check(fmt: Format) -> StructureCheck | None:
    """The format's structure check, imported from its ``verify`` path; ``None`` if it has none."""
    if not fmt.verify:
        return None
    module, _, func = fmt.verify.partition(":")
    check: StructureCheck = getattr(importlib.import_module(module), func)
    return check


def not_a_checkpoint(path: Path) -> Finding | None:
    """An empty file or a Git LFS pointer left where the checkpoint should be."""
    size = path.stat().st_size
    if size == 0:
        return error("file.empty", "the file is empty", path)
    with open(path, "rb") as f:
        head = f.read(1024)
    if head.startswith(LFS_POINTER_PREFIX):
        text = head.decode("utf-8", "replace")
        oid = re.search(r"oid sha256:([0-9a-f]{64})", text)
        real = re.search(r"size (\d+)", text)
        what = f" for {real.group(1)} bytes with sha256 {oid.group(1)}" if oid and real else ""
        return error(
            "file.lfs-pointer",
            f"this is a Git LFS pointer{what}, not the checkpoint; fetch it with 'git lfs pull' "
            "(in CI: actions/checkout with lfs: true)",
            path,
        )
    return None


def check_file(path: Path, report: TargetReport, settings: Settings) -> dict[str, Seen] | None:
    """Verify one file into ``report``; the tensors seen, or ``None`` if it could not be opened.

    A file no format recognises raises :class:`~ckptkit.core.errors.UnknownFormatError`: the caller
    decides whether that means verify cannot run (the file it was given) or is a finding (a shard).
    """
    report.ran("file")
    if path.is_dir() and registry.detect(path).name == FOLDER_FORMAT:
        try:
            path = resolve_folder(path)  # a folder holding one checkpoint file is verified as that file
        except CkptkitError as err:
            report.files.append(str(path))
            report.add(error("file.unreadable", err.message, path))
            return None
    file = str(path)
    report.files.append(file)
    problem = None if path.is_dir() else not_a_checkpoint(path)
    if problem is not None:
        report.add(problem)
        return None
    fmt = registry.detect(path)
    report.format = report.format or fmt.name
    check = structure_check(fmt)
    if check is not None:
        report.ran(fmt.name)
        for finding in check(path):
            report.add(finding)
    try:
        ckpt = registry.open_checkpoint(path, fmt.name)
    except (CorruptCheckpointError, UnsupportedError) as err:
        if not report.has_errors_for(file):
            report.add(error("file.unreadable", err.message, path))
        return None
    with ckpt:
        report.tensors += len(ckpt)
        report.bytes += ckpt.total_bytes
        return check_contents(
            ckpt, file, report,
            hashes=settings.hashes, no_nan=settings.no_nan, workers=settings.workers, progress=settings.progress,
        )  # fmt: skip
