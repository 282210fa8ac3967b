"""Structure checks of an ONNX model: the ONNX checker, and every external-data reference.

Each tensor stored outside the model must name a file inside the model's folder (no absolute
path, no ``..``, no symlink out), the file must exist, and the offset and length must be numbers
that lie inside it. The model is then given to ``onnx.checker`` when the onnx package is installed.
"""

from __future__ import annotations

import contextlib
import math
import mmap
from contextlib import nullcontext
from pathlib import Path

from ckptkit.core.dtypes import by_onnx
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, UnsafeCheckpointError
from ckptkit.core.findings import Finding, error, relocated, warning
from ckptkit.formats.onnx.elements import stored_nbytes
from ckptkit.formats.onnx.graph import TensorRecord, scan_model
from ckptkit.formats.onnx.reader import ExternalDataTruncated, external_file, external_offset
from ckptkit.io.paths import is_inside_url_name
from ckptkit.io.source import Source, open_source, sibling_exists


def check_structure(path: Path | Source) -> list[Finding]:
    """Every fault found in the ONNX model at ``path`` and its external data.

    A model at a URL is checked on a temporary local copy, with the external data files it names
    fetched from beside it (onnx.checker reads a model from a file): the same findings, of its URLs."""
    if isinstance(path, Source):
        if path.local_path is not None:
            return check_structure(path.local_path)
        return _remote(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            model = scan_model(mm)
        except CkptkitError as err:
            return [error("onnx.parse", err.message, path)]
        findings = [
            finding
            for slot in model.slots
            if slot.tensor is not None and slot.tensor.is_external
            for finding in _external(path, slot.name, slot.tensor)
        ]
    return findings + _checker(path)


def _remote(source: Source) -> list[Finding]:
    folder_url = source.name.rsplit("/", 1)[0]
    with source.local_copy() as copy:
        with contextlib.suppress(CkptkitError), open(copy, "rb") as f:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if copy.stat().st_size else nullcontext(b"") as mm:
                locations = {
                    slot.tensor.external.get("location", "")
                    for slot in scan_model(mm).slots
                    if slot.tensor is not None and slot.tensor.is_external
                }
            for location in sorted(locations):
                # Only names inside the folder are fetched; the check reports the others as locally.
                if (
                    location
                    and "\0" not in location
                    and is_inside_url_name(location)
                    and sibling_exists(f"{folder_url}/{location}")
                ):
                    (copy.parent / location).parent.mkdir(parents=True, exist_ok=True)
                    open_source(f"{folder_url}/{location}").download(copy.parent / location)
        findings = check_structure(copy)
        return relocated(relocated(findings, copy, source.name), copy.parent, folder_url)


def _external(model: Path, name: str, t: TensorRecord) -> list[Finding]:
    location = t.external.get("location", "")
    try:
        data = external_file(model.parent, name, location)  # the check reading makes, so both agree
    except UnsafeCheckpointError as err:
        return [error("onnx.external-escape", f"{err.message}; not opened", model, name)]
    except CkptkitError as err:
        return [error("onnx.external", err.message, model, name)]
    dtype = by_onnx(t.data_type)
    length = t.external.get("length", "0")
    need = stored_nbytes(dtype, math.prod(t.dims)) if dtype is not None else (int(length) if length.isdigit() else 0)
    try:
        external_offset(name, t, need, data.stat().st_size)
    except ExternalDataTruncated as err:
        return [error("onnx.external-truncated", err.message, model, name)]
    except CorruptCheckpointError as err:
        return [error("onnx.external", err.message, model, name)]
    return []


def _checker(path: Path) -> list[Finding]:
    try:
        import onnx
        import onnx.checker
    except ImportError:
        return [warning("onnx.checker", "the onnx package is not installed, so onnx.checker was not run", path)]
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "it gives no reason"
        return [error("onnx.checker", f"onnx.checker rejects the model: {first}", path)]
    return []
