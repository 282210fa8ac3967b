"""The ``.keras`` archive: a zip of ``metadata.json``, ``config.json`` and ``model.weights.h5``.

Keras stores the weights member uncompressed, so the reader opens it in place inside the zip
(h5py through a window on the file, tensor data through a memory map) instead of extracting it.
A compressed member is extracted to a temporary file first.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

from ckptkit.errors import CorruptCheckpointError, UnsupportedError
from ckptkit.formats.keras.hdf5 import DataReader

WEIGHTS = "model.weights.h5"
CONFIG = "config.json"
METADATA = "metadata.json"
MAX_JSON_BYTES = 256 * 1024 * 1024
COPY_CHUNK = 16 * 1024 * 1024


def is_archive(path: Path) -> bool:
    """A zip holding config.json and Keras weights (cheap: reads the central directory only)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return CONFIG in names and bool({WEIGHTS, "model.weights.npz"} & names)


class ArchiveReader(DataReader):
    """The weights member of a .keras archive, with the archive's config.json and metadata.json."""

    def __init__(self, path: Path) -> None:
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise CorruptCheckpointError("not a readable zip archive (truncated or damaged)") from None
        with zf:
            names = set(zf.namelist())
            if WEIGHTS not in names:
                if "model.weights.npz" in names:
                    raise UnsupportedError(
                        "this .keras archive keeps its weights as .npz; ckptkit reads .h5 weights only"
                    )
                raise CorruptCheckpointError(f"the archive has no {WEIGHTS}")
            self.config = _read_json_text(zf, CONFIG)
            self.archive_metadata = _read_json_text(zf, METADATA) if METADATA in names else None
            info = zf.getinfo(WEIGHTS)
            self._temp: Path | None = None
            if info.compress_type == zipfile.ZIP_STORED:
                start = _data_offset(path, info)
                super().__init__(path, start, info.file_size)
            else:
                fd, temp = tempfile.mkstemp(suffix=".weights.h5", prefix="ckptkit-")
                self._temp = Path(temp)
                with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                    shutil.copyfileobj(src, out, COPY_CHUNK)
                super().__init__(self._temp)

    def close(self) -> None:
        super().close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)


def _read_json_text(zf: zipfile.ZipFile, name: str) -> str:
    if name not in zf.namelist():
        raise CorruptCheckpointError(f"the archive has no {name}")
    if zf.getinfo(name).file_size > MAX_JSON_BYTES:
        raise CorruptCheckpointError(f"{name} in the archive is larger than {MAX_JSON_BYTES} bytes")
    text = zf.read(name).decode("utf-8")
    try:
        json.loads(text)
    except json.JSONDecodeError:
        raise CorruptCheckpointError(f"{name} in the archive is not valid JSON") from None
    return text


def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise CorruptCheckpointError(f"the zip entry of {info.filename} is damaged")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > path.stat().st_size:
        raise CorruptCheckpointError(f"{info.filename} ends past the end of the archive: truncated?")
    return start


def write_archive(target: Path, config: str, metadata: str | None, weights: Path, keras_version: str) -> None:
    """A .keras archive as Keras writes it (members stored uncompressed), the weights copied in chunks."""
    if metadata is None:
        saved = datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")
        metadata = json.dumps({"keras_version": keras_version, "date_saved": saved})
    size = weights.stat().st_size
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(METADATA, metadata)
        zf.writestr(CONFIG, config)
        with open(weights, "rb") as src, zf.open(WEIGHTS, "w", force_zip64=size >= 2**31) as dst:
            shutil.copyfileobj(src, dst, COPY_CHUNK)
