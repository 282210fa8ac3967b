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

from ckptkit.core.errors import CkptkitError, UsageError
from ckptkit.core.findings import ERROR, WARNING, Finding, Report, TargetReport
from ckptkit.core.model import ProgressFn
from ckptkit.hashing.manifest import Manifest
from ckptkit.io.shards.index import single_index
from ckptkit.verify.expect import Expected, compare_manifest, compare_schema, load_schema
from ckptkit.verify.shards import check_sharded
from ckptkit.verify.single import Settings, check_file

__all__ = ["ERROR", "WARNING", "Finding", "Report", "TargetReport", "VerifyOptions", "verify"]


@dataclass(frozen=True)
class VerifyOptions:
    """``--manifest``, ``--schema``, ``--no-nan`` and ``--strict``; ``workers`` threads (default: all cores)."""

    manifest: Path | None = None
    schema: Path | None = None
    no_nan: bool = False
    strict: bool = False
    workers: int | None = None


def verify(
    paths: Sequence[str | Path], options: VerifyOptions | None = None, progress: ProgressFn | None = None
) -> Report:
    """Check every path; the report's ``exit_code`` is 0 when clean and 1 when something was found."""
    opts = options or VerifyOptions()
    targets = [Path(p) for p in paths]
    if not targets:
        raise UsageError("name at least one checkpoint to verify")
    for p in targets:
        if not p.exists():
            raise CkptkitError("no such file or directory", p)
    if (opts.manifest or opts.schema) and len(targets) > 1:
        raise UsageError("--manifest and --schema describe one checkpoint; verify one path at a time with them")
    manifest = Manifest.load(opts.manifest) if opts.manifest else None
    schema = load_schema(opts.schema) if opts.schema else None
    settings = Settings(hashes=manifest is not None, no_nan=opts.no_nan, workers=opts.workers, progress=progress)
    return Report([_verify_one(p, settings, manifest, schema) for p in targets], strict=opts.strict)


def _verify_one(path: Path, settings: Settings, manifest: Manifest | None, schema: Expected | None) -> TargetReport:
    report = TargetReport(str(path))
    index = single_index(path)
    seen = check_sharded(index, report, settings) if index else check_file(path, report, settings)
    if seen is not None and manifest is not None:
        report.ran("manifest")
        for finding in compare_manifest(manifest, seen, str(path)):
            report.add(finding)
    if seen is not None and schema is not None:
        report.ran("schema")
        for finding in compare_schema(schema, seen, str(path)):
            report.add(finding)
    return report
