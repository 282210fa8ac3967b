"""Structure checks of Keras files: legacy ``.h5``, Keras 3 ``.weights.h5`` and ``.keras`` archives.

The HDF5 file must be readable throughout: its superblock matches the file's length, every group,
attribute and dataset can be read (datasets stored contiguously are checked to lie inside the
file; the tensor pass reads their bytes), so damage outside the tensors ckptkit lists is found
too. A ``.keras`` archive must also have every member intact (CRC-32) and its JSON members parse.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckptkit.core.errors import CorruptCheckpointError, UnsupportedError
from ckptkit.core.findings import Finding, error, relocated
from ckptkit.formats.keras.archive import CONFIG, METADATA, WEIGHTS, ArchiveReader
from ckptkit.formats.keras.code import code_problems
from ckptkit.formats.keras.hdf5 import DataReader, h5py_module
from ckptkit.io.jsonfile import loads_noting_repeats
from ckptkit.io.source import Source

_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)
_READ_BYTES = 16 * 1024 * 1024


def check_structure(path: Path | Source) -> list[Finding]:
    """Every fault found in the Keras file at ``path``, and the code its model config carries.

    A file at a URL is checked on a temporary local copy: the checks read every dataset."""
    if isinstance(path, Source):
        with path.local_copy() as copy:
            return relocated(check_structure(copy), copy, path.name) if path.remote else check_structure(copy)
    archive = zipfile.is_zipfile(path)
    code: list[Finding] = []
    if archive:
        findings = _archive_members(path)
        code = [f for f in findings if f.check in ("keras.code", "keras.member")]
        if len(code) < len(findings):
            return findings
    try:
        reader = ArchiveReader(path) if archive else DataReader(path)
    except (CorruptCheckpointError, UnsupportedError) as err:
        return [*code, error("keras.archive", err.message, path)]
    try:
        h5 = reader.open_h5()
    except CorruptCheckpointError as err:
        reader.close()
        return [*code, error("hdf5.unreadable", err.message, path)]
    try:
        if not archive:
            code = list(_legacy_config_code(path, h5))
        return code + list(_hdf5_throughout(path, h5, reader.length))
    finally:
        h5.close()
        reader.close()


def _legacy_config_code(path: Path, h5: Any) -> Iterator[Finding]:
    """Code in a legacy ``.h5`` file's ``model_config`` and ``training_config`` attributes."""
    for attr in ("model_config", "training_config"):
        try:
            raw = h5.attrs.get(attr)
        except _H5_ERRORS:
            continue  # the walk over every attribute reports it
        if raw is None:
            continue
        yield from _config_findings(path, raw, f"the {attr} attribute")


def _config_findings(path: Path, raw: str | bytes, what: str, code: bool = True) -> list[Finding]:
    """``what`` parsed as JSON; with ``code``, the code it carries as ``keras.code`` errors."""
    try:
        config, _repeated = loads_noting_repeats(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return [error("keras.json", f"{what} is not valid JSON: {err}", path)]
    except RecursionError:
        return [error("keras.json", f"{what} nests JSON too deeply to be a model config", path)]
    if not code:
        return []
    return [
        error("keras.code", f"{what} holds {problem}" + (f" (at {where})" if where else ""), path)
        for where, problem in code_problems(config)
    ]


def _member_problem(name: str) -> str | None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"the archive member {name!r} has an absolute name: extracting it writes outside the target folder"
    if ".." in parts:
        return f"the archive member {name!r} climbs out of its folder with '..': extracting it writes elsewhere"
    return None


def _archive_members(path: Path) -> list[Finding]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        return [error("keras.zip", f"the archive's central directory is missing or damaged ({err}): truncated?", path)]
    findings: list[Finding] = []
    with zf:
        every = zf.namelist()
        names = set(every)
        for name in dict.fromkeys(every):
            problem = _member_problem(name)
            if problem:
                findings.append(error("keras.member", problem, path))
            if every.count(name) > 1:
                findings.append(error("keras.member", f"the archive holds {every.count(name)} members named {name}; "
                                      "zip readers disagree about which one counts", path))  # fmt: skip
        for required in (CONFIG, WEIGHTS):
            if required not in names:
                findings.append(error("keras.record", f"the archive has no {required}", path))
        for info in zf.infolist():
            try:
                with zf.open(info) as member:
                    while member.read(_READ_BYTES):
                        pass  # zipfile checks the CRC-32 when the member has been read to its end
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
                findings.append(error("keras.crc", f"member {info.filename} is damaged: {err}", path))
        for name in (CONFIG, METADATA):
            if name in names and not any(f.check == "keras.crc" and name in f.message for f in findings):
                findings.extend(_config_findings(path, zf.read(name), name, code=name == CONFIG))
    return findings


def _hdf5_throughout(path: Path, h5: Any, length: int) -> Iterator[Finding]:
    h5py = h5py_module()
    names: list[str] = []
    try:
        h5.visit(names.append)
    except _H5_ERRORS as err:
        yield error("hdf5.unreadable", f"the HDF5 tree cannot be walked to its end: {err}", path)
    for obj_name in ["/", *names]:
        try:
            obj = h5[obj_name]
            for attr in list(obj.attrs):
                obj.attrs[attr]
        except _H5_ERRORS as err:
            yield error("hdf5.unreadable", f"{obj_name} or its attributes cannot be read: {err}", path, obj_name)
            continue
        if isinstance(obj, h5py.Dataset):
            problem = _dataset_problem(obj, length)
            if problem:
                yield error("hdf5.unreadable", f"dataset {obj_name}: {problem}", path, obj_name)


def _dataset_problem(ds: Any, length: int) -> str | None:
    """Why a dataset cannot be read in full, or ``None``."""
    try:
        if ds.chunks is None and not ds.compression and ds.id.get_offset() is not None:
            end = ds.id.get_offset() + ds.id.get_storage_size()
            # Contiguous data: the tensor pass reads these bytes; here only check they are in the file.
            return f"its data ends at byte {end}, past the end of the file ({length})" if end > length else None
        if ds.shape is None or ds.size == 0:
            return None
        if not ds.shape:
            ds[()]
            return None
        row_bytes = max(1, ds.dtype.itemsize * ds.size // ds.shape[0])
        rows = max(1, _READ_BYTES // row_bytes)
        for start in range(0, ds.shape[0], rows):
            ds[start : start + rows]  # decompresses and checks each chunk, a slab at a time
    except _H5_ERRORS as err:
        return f"cannot be read: {err}"
    return None
