"""Comparing what was found with what was expected: a manifest of hashes, or a schema of names."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ckptkit.core.errors import UsageError
from ckptkit.core.findings import Finding, error
from ckptkit.core.views import name_matches
from ckptkit.hashing.manifest import SCHEMA as MANIFEST_SCHEMA
from ckptkit.hashing.manifest import Manifest
from ckptkit.io.jsonfile import read_user_json
from ckptkit.verify.seen import Seen

INSPECT_SCHEMA = "ckptkit.inspect/1"

Expected = dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, shape)


def compare_manifest(manifest: Manifest, seen: Mapping[str, Seen], where: str) -> list[Finding]:
    """Every manifest tensor present with the same content hash; none missing, none extra.

    Tensors the manifest was made without (``ckptkit hash --exclude``) are not extra.
    """
    findings: list[Finding] = []
    for name, want in manifest.tensors.items():
        got = seen.get(name)
        if got is None:
            findings.append(error("manifest.missing", f"tensor {name!r} of the manifest is missing", where, name))
        elif got.readable and got.sha256 != want.sha256:
            change = ""
            if (got.dtype, got.shape) != (want.dtype, want.shape):
                change = f"; it is {got.dtype} {list(got.shape)}, the manifest has {want.dtype} {list(want.shape)}"
            findings.append(
                error(
                    "manifest.hash",
                    f"tensor {name!r} differs from the manifest: sha256 {got.sha256}, expected {want.sha256}{change}",
                    got.file,
                    name,
                )
            )
    for name, got in seen.items():
        if name not in manifest.tensors and not name_matches(name, manifest.excluded):
            findings.append(error("manifest.extra", f"tensor {name!r} is not in the manifest", got.file, name))
    return findings


def load_schema(path: Path) -> Expected:
    """Names, dtypes and shapes from ``ckptkit inspect --json`` output (or a manifest)."""
    data = read_user_json(path, "schema", "ckptkit inspect --json")
    kind = data.get("schema") if isinstance(data, dict) else None
    if kind == MANIFEST_SCHEMA:
        return {n: (e.dtype, e.shape) for n, e in Manifest.load(path).tensors.items()}
    if kind != INSPECT_SCHEMA:
        raise UsageError(f"not a schema: expected the output of ckptkit inspect --json ({INSPECT_SCHEMA})", path)
    try:
        expected: Expected = {
            str(t["name"]): (str(t["dtype"]), tuple(int(d) for d in t["shape"])) for t in data["tensors"]
        }
        for alias, target in (data.get("aliases") or {}).items():
            expected[str(alias)] = expected[target]
    except (KeyError, TypeError, ValueError):
        raise UsageError("the schema's tensors need name, dtype and shape each", path) from None
    return expected


def compare_schema(expected: Expected, seen: Mapping[str, Seen], where: str) -> list[Finding]:
    """Expected names present with their dtypes and shapes; no names the schema lacks."""
    findings: list[Finding] = []
    for name, (dtype, shape) in expected.items():
        got = seen.get(name)
        if got is None:
            findings.append(error("schema.missing", f"tensor {name!r} is missing", where, name))
            continue
        if got.dtype != dtype:
            findings.append(error("schema.dtype", f"tensor {name!r} is {got.dtype}, expected {dtype}", got.file, name))
        if got.shape != shape:
            findings.append(
                error(
                    "schema.shape",
                    f"tensor {name!r} has shape {list(got.shape)}, expected {list(shape)}",
                    got.file,
                    name,
                )
            )
    for name, got in seen.items():
        if name not in expected:
            findings.append(error("schema.extra", f"tensor {name!r} is not in the schema", got.file, name))
    return findings
