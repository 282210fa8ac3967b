"""Findings are data: what a check found, how bad it is, and where (file, tensor)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ckptkit.core.errors import CkptkitError, CorruptCheckpointError

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    """One problem. ``check`` is a stable dotted id whose first part names the check group."""

    severity: str
    check: str
    message: str
    file: str = ""
    tensor: str = ""

    @property
    def group(self) -> str:
        return self.check.split(".", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def relocated(findings: list[Finding], old: object, new: str) -> list[Finding]:
    """``findings`` about the file (or the files in the folder) ``old`` told of ``new`` instead: a local
    copy's, of its URL."""
    was = str(old)
    return [
        replace(f, file=new + f.file[len(was) :], message=f.message.replace(was, new))
        if f.file == was or f.file.startswith(was + "/")
        else f
        for f in findings
    ]


def error(check: str, message: str, file: object = "", tensor: str = "") -> Finding:
    return Finding(ERROR, check, message, str(file), tensor)


def warning(check: str, message: str, file: object = "", tensor: str = "") -> Finding:
    return Finding(WARNING, check, message, str(file), tensor)


class ProblemSink:
    """Where a parser reports what is wrong with a file: raised when reading, collected when verifying.

    One parser serves both: it reports each problem with the finding id ``verify`` shows and the
    error class a reader raises. With ``strict=True`` (reading) :meth:`error` raises the first
    problem; with ``strict=False`` (verifying) every problem becomes a finding in
    :attr:`findings` and the parser goes on where it can. :meth:`tolerated` reports what readers
    accept but a structure check flags (bytes belonging to no tensor, say): only collected.
    """

    def __init__(self, file: object = "", *, strict: bool) -> None:
        self.file = str(file)
        self.strict = strict
        self.findings: list[Finding] = []

    def error(
        self, check: str, message: str, tensor: str = "", kind: type[CkptkitError] = CorruptCheckpointError
    ) -> None:
        """A problem that stops a reader: raised as ``kind`` when strict, else collected."""
        if self.strict:
            raise kind(message)
        self.findings.append(error(check, message, self.file, tensor))

    def tolerated(self, check: str, message: str, tensor: str = "") -> None:
        """A problem readers accept but a structure check reports; collected only when not strict."""
        if not self.strict:
            self.findings.append(error(check, message, self.file, tensor))


@dataclass
class NonFinite:
    """NaN and Inf counts of one tensor (a finding only with ``--no-nan``)."""

    file: str
    tensor: str
    nan: int
    inf: int


@dataclass
class TargetReport:
    """Everything verify learned about one checkpoint named on the command line."""

    path: str
    format: str = ""
    tensors: int = 0
    bytes: int = 0
    files: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # check groups that ran, for JUnit test cases
    findings: list[Finding] = field(default_factory=list)
    nonfinite: list[NonFinite] = field(default_factory=list)

    def ran(self, group: str) -> None:
        if group not in self.groups:
            self.groups.append(group)

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)
        self.ran(finding.group)

    def has_errors_for(self, file: str) -> bool:
        return any(f.severity == ERROR and f.file == file for f in self.findings)


@dataclass
class Report:
    """The result of one verify run over one or more checkpoints."""

    targets: list[TargetReport]
    strict: bool = False

    @property
    def findings(self) -> list[Finding]:
        return [f for t in self.targets for f in t.findings]

    def failing(self, finding: Finding) -> bool:
        return finding.severity == ERROR or self.strict

    @property
    def ok(self) -> bool:
        return not any(self.failing(f) for f in self.findings)

    @property
    def exit_code(self) -> int:
        """0 clean, 1 findings (errors, or warnings too when strict)."""
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        counts = {ERROR: 0, WARNING: 0}
        for f in self.findings:
            counts[f.severity] += 1
        return {
            "schema": "ckptkit.verify/1",
            "ok": self.ok,
            "exit_code": self.exit_code,
            "strict": self.strict,
            "counts": counts,
            "targets": [
                {
                    "path": t.path,
                    "format": t.format,
                    "tensors": t.tensors,
                    "bytes": t.bytes,
                    "files": t.files,
                    "checks": t.groups,
                    "ok": not any(self.failing(f) for f in t.findings),
                }
                for t in self.targets
            ],
            "findings": [f.to_dict() for f in self.findings],
            "nonfinite": [asdict(n) for t in self.targets for n in t.nonfinite],
        }
