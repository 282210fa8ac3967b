"""Structure checks of an ONNX model: the ONNX checker, and every external-data reference.

Each tensor stored outside the model must name a file inside the model's folder (no absolute
path, no ``..``, no symlink out), the file must exist, and the offset and length must be numbers
that lie inside it. The model is then given to ``onnx.checker`` when the onnx package is installed.
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path

from ckptkit.core.dtypes import by_onnx
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, UnsafeCheckpointError
from ckptkit.core.findings import Finding, error, warning
from ckptkit.formats.onnx.elements import stored_nbytes
from ckptkit.formats.onnx.graph import TensorRecord, scan_model
from ckptkit.formats.onnx.reader import ExternalDataTruncated, external_file, external_offset


def check_structure(path: Path) -> list[Finding]:
    """Every fault found in the ONNX model at ``path`` and its external data."""
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
