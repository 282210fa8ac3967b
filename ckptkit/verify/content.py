"""Reading every tensor in full: unreadable and truncated tensors, NaN and Inf, all-zero tensors."""

from __future__ import annotations

from dataclasses import replace

from ckptkit.core.findings import NonFinite, TargetReport, error, warning
from ckptkit.core.model import Checkpoint, ProgressFn
from ckptkit.hashing.scan import scan
from ckptkit.verify.seen import Seen

UNSUPPORTED = "tensor.unsupported"


def check_contents(
    ckpt: Checkpoint,
    file: str,
    report: TargetReport,
    *,
    hashes: bool,
    no_nan: bool,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Seen]:
    """Read every tensor once; add findings to ``report``; return what was seen, aliases included.

    A tensor ckptkit cannot read (``ckpt.unsupported``) is an error: verify cannot vouch for it.
    """
    report.ran("tensor")
    for name, why in ckpt.unsupported.items():
        report.add(error(UNSUPPORTED, f"tensor {name!r} is {why}", file, name))
    result = scan(ckpt, hashes=hashes, values=True, workers=workers, progress=progress)
    seen: dict[str, Seen] = {}
    for name, r in result.tensors.items():
        seen[name] = Seen(r.dtype.name, r.shape, file, r.sha256, r.error is None)
        if r.error is not None:
            report.add(error("tensor.unreadable", f"tensor {name!r} cannot be read in full: {r.error}", file, name))
            continue
        counts = r.values
        if counts is not None and (counts.nan or counts.inf):
            report.nonfinite.append(NonFinite(file, name, counts.nan, counts.inf))
            if no_nan:
                report.add(
                    error(
                        "tensor.nonfinite",
                        f"tensor {name!r} holds {counts.nan} NaN and {counts.inf} Inf values",
                        file,
                        name,
                    )
                )
        if r.all_zero:
            report.add(warning("tensor.zero", f"every element of tensor {name!r} is zero", file, name))
    for alias, target in ckpt.aliases.items():
        if target in seen:
            seen[alias] = replace(seen[target], alias_of=target)
    return seen
