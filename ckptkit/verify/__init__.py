"""``ckptkit verify``: integrity checks of checkpoints, as data.

:func:`verify` checks each path (a checkpoint file, a shard index, or a folder holding one) and
returns a :class:`Report` of :class:`Finding` objects; it raises only when it cannot run at all
(missing path, unknown format, unreadable manifest or schema). Formats contribute structure checks
through :attr:`ckptkit.registry.Format.verify`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ckptkit.core.errors import CorruptCheckpointError, UsageError
from ckptkit.core.findings import ERROR, WARNING, Finding, Report, TargetReport
from ckptkit.core.model import ProgressFn
from ckptkit.core.trust import trusting
from ckptkit.hashing.manifest import Manifest
from ckptkit.io.shards.index import ShardIndex, is_index, read_index, read_remote_index, single_index
from ckptkit.io.source import Source, is_url, open_source
from ckptkit.registry import locate, require_exists
from ckptkit.verify.expect import compare_manifest, compare_schema, load_schema
from ckptkit.verify.shards import check_sharded
from ckptkit.verify.single import Settings, check_file, check_remote

__all__ = ["ERROR", "WARNING", "Finding", "Report", "TargetReport", "Verification", "VerifyOptions", "verify"]


@dataclass(frozen=True)
class VerifyOptions:
    """``--manifest``, ``--schema``, ``--no-nan``, ``--strict`` and ``--allow-global``; ``workers``
    threads to read on (default: :func:`ckptkit.io.workers.worker_count`'s policy)."""

    manifest: Path | None = None
    schema: Path | None = None
    no_nan: bool = False
    strict: bool = False
    workers: int | None = None
    allow_globals: tuple[str, ...] = ()


def verify(
    paths: Sequence[str | Path], options: VerifyOptions | None = None, progress: ProgressFn | None = None
) -> Report:
    """Check every path; the report's ``exit_code`` is 0 when clean and 1 when something was found."""
    return Verification(paths, options).run(progress)


@dataclass(frozen=True)
class _Target:
    path: Path
    index_path: Path | None  # the shard index the path stands for, if any
    index: ShardIndex | CorruptCheckpointError | None  # that index, read once, or why it cannot be
    source: Source | None = None  # a file at a URL, read by range requests (``path`` is then unused)


class Verification:
    """A :func:`verify` run, prepared: the paths are checked, the manifest and schema loaded and
    each path's shard index read (once) before anything is verified, so that :attr:`nbytes` is
    known before :meth:`run` reads anything. Raises when verify cannot run at all."""

    def __init__(self, paths: Sequence[str | Path], options: VerifyOptions | None = None) -> None:
        self.options = options or VerifyOptions()
        sources = [open_source(p) if is_url(p) else None for p in paths]
        # a file:// URL is a local path, verified as one
        targets: list[str | Path] = [
            s.local_path if s is not None and s.local_path is not None else p
            for p, s in zip(paths, sources, strict=True)
        ]
        if not targets:
            raise UsageError("name at least one checkpoint to verify")
        remote = {str(p): s for p, s in zip(targets, sources, strict=True) if s is not None and s.remote}
        local = [locate(Path(p)) for p in targets if str(p) not in remote]
        for p in local:
            require_exists(p)
        if (self.options.manifest or self.options.schema) and len(targets) > 1:
            raise UsageError("--manifest and --schema describe one checkpoint; verify one path at a time with them")
        self.manifest = Manifest.load(self.options.manifest) if self.options.manifest else None
        self.schema = load_schema(self.options.schema) if self.options.schema else None
        self.targets = [
            _remote_target(remote[str(p)]) if str(p) in remote else _target(locate(Path(p))) for p in targets
        ]

    @property
    def nbytes(self) -> int:
        """Bytes of the files the run reads: each checkpoint file, or the shards each index names."""
        total = 0
        for t in self.targets:
            if isinstance(t.index, ShardIndex):
                total += t.index.shard_bytes()
            elif t.source is not None:
                total += t.source.size
            elif t.index_path is None and t.path.is_file():
                total += t.path.stat().st_size
        return total

    def run(self, progress: ProgressFn | None = None) -> Report:
        """Verify every path; ``progress`` is called with byte counts as tensors are read."""
        opts = self.options
        settings = Settings(
            hashes=self.manifest is not None, no_nan=opts.no_nan, workers=opts.workers, progress=progress
        )
        with trusting(opts.allow_globals):
            return Report([self._verify_one(t, settings) for t in self.targets], strict=opts.strict)

    def _verify_one(self, target: _Target, settings: Settings) -> TargetReport:
        name = target.source.name if target.source is not None else str(target.path)
        report = TargetReport(name)
        if target.source is not None and target.index is not None:
            seen = check_sharded(target.source.name, target.index, report, settings)
        elif target.source is not None:
            seen = check_remote(target.source, report, settings)
        elif target.index_path is not None and target.index is not None:
            seen = check_sharded(target.index_path, target.index, report, settings)
        else:
            seen = check_file(target.path, report, settings)
        if seen is not None and self.manifest is not None:
            report.ran("manifest")
            for finding in compare_manifest(self.manifest, seen, name):
                report.add(finding)
        if seen is not None and self.schema is not None:
            report.ran("schema")
            for finding in compare_schema(self.schema, seen, name):
                report.add(finding)
        return report


def _remote_target(source: Source) -> _Target:
    """A file at a URL; a shard index there is read once, as a local one is."""
    if not is_index(Path(source.basename)):
        return _Target(Path(), None, None, source)
    try:
        return _Target(Path(), Path(source.basename), read_remote_index(source), source)
    except CorruptCheckpointError as err:
        return _Target(Path(), Path(source.basename), err, source)


def _target(path: Path) -> _Target:
    index_path = single_index(path)
    if index_path is None:
        return _Target(path, None, None)
    try:
        return _Target(path, index_path, read_index(index_path))
    except CorruptCheckpointError as err:
        return _Target(path, index_path, err)
