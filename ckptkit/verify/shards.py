"""Consistency of a sharded checkpoint: its index, its shard files, and the tensors in them.

Checked: the index parses and maps names to shard files; no shard name leaves the folder (judged
as written: a shard may be a symbolic link, as in the Hugging Face cache); every named shard
exists and verifies; numbered shard series (``model-00002-of-00005.safetensors``) are complete in
the index; no shard of the series lies in the folder unnamed; every tensor the index names is in
its shard and in no other; no shard holds tensors the index does not name; every tied name the
index records (metadata ``ckptkit:aliases``) shares a tensor a shard holds and is seen under its
name; and ``metadata.total_size`` equals the bytes of the tensors.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from ckptkit.core.dtypes import by_name
from ckptkit.core.errors import CorruptCheckpointError, UnknownFormatError
from ckptkit.core.findings import TargetReport, error, warning
from ckptkit.io.shards.index import INDEX_SUFFIX, ShardIndex
from ckptkit.io.source import open_source
from ckptkit.io.workers import shard_executor
from ckptkit.verify.content import UNSUPPORTED
from ckptkit.verify.seen import Seen
from ckptkit.verify.single import Settings, check_file, check_remote, file_finding

_SERIES = re.compile(r"^(?P<prefix>.+)-(?P<num>\d+)-of-(?P<total>\d+)(?P<ext>\.[^/]+)$")


def check_sharded(
    index_path: Path | str, index: ShardIndex | CorruptCheckpointError, report: TargetReport, settings: Settings
) -> dict[str, Seen] | None:
    """Verify the index at ``index_path`` (as :func:`~ckptkit.io.shards.index.read_index` read it,
    or the error it raised) and every shard; the tensors seen, ``None`` if incomplete."""
    report.ran("index")
    report.format = "sharded"
    report.files.append(str(index_path))
    if isinstance(index, CorruptCheckpointError):
        report.add(error("index.invalid", index.message, index_path))
        return None
    for fault in index.repeat_faults():
        report.add(error(f"index.{fault.kind}", fault.message, index_path, fault.tensor))
    expected_size = _check_total_size_field(index, report)
    found: dict[str, dict[str, Seen]] = {}  # shard -> tensors seen in it
    complete = True
    # Locally, one shard after another, each on all threads; on a cluster, a shard per task.
    runner = shard_executor(concurrent=False, workers=1)
    task_settings = replace(settings, progress=None, workers=None) if runner.remote else settings
    tasks = [_ShardCheck(index, shard, str(report.path), task_settings) for shard in index.shard_names]
    for shard, (shard_report, contents) in zip(index.shard_names, runner.map(check_shard, tasks), strict=True):
        _merge(report, shard_report)
        if contents is None:
            complete = False
        else:
            found[shard] = contents
    _check_series(index, report)
    seen = _check_placement(index, found, report)
    _add_aliases(index, found, seen, report)
    if not complete:
        return None
    if expected_size is not None and not any(f.check == UNSUPPORTED for f in report.findings):
        actual = sum(_nbytes(s) for s in seen.values() if s.alias_of is None)
        if actual != expected_size:
            report.add(
                error(
                    "index.total-size",
                    f"metadata.total_size is {expected_size}, but the shards' tensors hold {actual} bytes",
                    index_path,
                )
            )
    return seen


def _check_total_size_field(index: ShardIndex, report: TargetReport) -> int | None:
    value = index.metadata.get("total_size")
    if value is None:
        report.add(warning("index.total-size", "the index has no metadata.total_size to check against", index.where))
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        report.add(error("index.total-size", f"metadata.total_size {value!r} is not a byte count", index.where))
        return None
    return int(value)


@dataclass(frozen=True)
class _ShardCheck:
    """Verifying one shard: a plain record, so that it can run on another process."""

    index: ShardIndex
    shard: str
    target: str
    settings: Settings


def check_shard(task: _ShardCheck) -> tuple[TargetReport, dict[str, Seen] | None]:
    """One shard's findings (in a report of their own) and the tensors seen, ``None`` if unreadable."""
    report = TargetReport(task.target)
    return report, _check_shard(task.index, task.shard, report, task.settings)


def _merge(report: TargetReport, part: TargetReport) -> None:
    for group in part.groups:
        report.ran(group)
    report.findings.extend(part.findings)
    report.files.extend(part.files)
    report.nonfinite.extend(part.nonfinite)
    report.tensors += part.tensors
    report.bytes += part.bytes


def _check_shard(index: ShardIndex, shard: str, report: TargetReport, settings: Settings) -> dict[str, Seen] | None:
    fault = index.fault(shard)
    if fault is not None:
        report.add(error(f"index.{fault.kind}", fault.message, index.where))
        return None
    if index.url:
        url = index.shard_location(shard)
        try:
            return check_remote(open_source(url), report, settings)
        except UnknownFormatError as err:
            report.add(file_finding(err, url))
            return None
    path = index.shard_path(shard)
    try:
        return check_file(path, report, settings)
    except UnknownFormatError as err:
        report.add(file_finding(err, path))
        return None


def _check_series(index: ShardIndex, report: TargetReport) -> None:
    """Numbered shard series: every number named, none left unnamed in the folder."""
    named = set(index.shard_names)
    series: dict[tuple[str, str, str], set[int]] = defaultdict(set)  # (prefix, total, ext) -> numbers named
    widths: dict[tuple[str, str, str], int] = {}
    for shard in named:
        m = _SERIES.match(shard)
        if m:
            key = (m["prefix"], m["total"], m["ext"])
            series[key].add(int(m["num"]))
            widths[key] = len(m["num"])
    for (prefix, total, ext), numbers in sorted(series.items()):
        for num in range(1, int(total) + 1):
            if num not in numbers:
                name = f"{prefix}-{num:0{widths[prefix, total, ext]}d}-of-{total}{ext}"
                message = f"the index names no tensor in {name!r}, shard {num} of {int(total)}"
                report.add(error("index.series-gap", message, index.where))
    prefixes = {(p, e) for p, _t, e in series}
    beside = sorted(index.sibling_names())
    for name in beside:
        m = _SERIES.match(name)
        if m and (m["prefix"], m["ext"]) in prefixes and name not in named:
            report.add(
                error(
                    "index.orphan-shard", f"shard file {name!r} is in the folder but not in the index",
                    index.shard_location(name),
                )
            )  # fmt: skip
    whole = index.path.name.removesuffix(INDEX_SUFFIX)
    if whole in beside:
        report.add(
            warning(
                "index.orphan-shard",
                f"an unsharded {whole!r} lies beside the index; loaders may take it instead of the shards",
                index.shard_location(whole),
            )
        )


def _check_placement(index: ShardIndex, found: dict[str, dict[str, Seen]], report: TargetReport) -> dict[str, Seen]:
    """Every indexed tensor in its shard and only there; nothing unindexed. Returns the union."""
    contents: dict[str, list[str]] = {}
    for shard, seen_in_shard in found.items():
        # A tensor ckptkit cannot read is in its shard too (it has a finding of its own).
        file = index.shard_location(shard)
        unsupported = [f.tensor for f in report.findings if f.check == UNSUPPORTED and f.file == file]
        contents[shard] = [*seen_in_shard, *unsupported]
    for fault in index.placement_faults(contents):
        report.add(error(f"index.{fault.kind}", fault.message, index.where, fault.tensor))
    seen: dict[str, Seen] = {}
    for seen_in_shard in found.values():
        for name, s in seen_in_shard.items():
            seen.setdefault(name, s)
    return seen


def _add_aliases(
    index: ShardIndex, found: dict[str, dict[str, Seen]], seen: dict[str, Seen], report: TargetReport
) -> None:
    """The index's tied names, judged against the shards and added to ``seen`` with their tensor's facts."""
    tensors = {shard: [n for n, s in in_shard.items() if s.alias_of is None] for shard, in_shard in found.items()}
    faults = index.alias_faults(tensors)
    for fault in faults:
        report.add(error(f"index.{fault.kind}", fault.message, index.where, fault.tensor))
    faulty = {f.tensor for f in faults}
    for alias, target in index.aliases.items():
        if alias not in faulty and target in seen:
            seen[alias] = replace(seen[target], alias_of=target)


def _nbytes(s: Seen) -> int:
    return by_name(s.dtype).itemsize * math.prod(s.shape)
