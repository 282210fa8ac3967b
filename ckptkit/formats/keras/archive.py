"""The ``.keras`` archive: a zip of ``metadata.json``, ``config.json`` and ``model.weights.h5``.

Keras stores the weights member uncompressed, so the reader opens it in place inside the zip
(h5py through a window on the file, tensor data through a memory map) instead of extracting it.
A compressed member is extracted to a temporary file first.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from ckptkit.core import limits
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, UnsupportedError
from ckptkit.formats.keras.hdf5 import DataReader
from ckptkit.io.source import Source
from ckptkit.io.ziparchive import ZIP_ERRORS, member_data_offset, open_zip, read_member

WEIGHTS = "model.weights.h5"
CONFIG = "config.json"
METADATA = "metadata.json"
COPY_CHUNK = 16 * 1024 * 1024


def is_archive(path: Path | Source) -> bool:
    """A zip holding config.json and Keras weights (cheap: reads the central directory only)."""
    try:
        with _opened(path) as (f, size), open_zip(f, size) as zf:
            names = set(zf.namelist())
    except (CkptkitError, *ZIP_ERRORS):
        return False
    return CONFIG in names and bool({WEIGHTS, "model.weights.npz"} & names)


@contextlib.contextmanager
def _opened(path: Path | Source) -> Iterator[tuple[BinaryIO, int]]:
    """The archive as a file and its size: a local file, or exact range reads of one at a URL."""
    if isinstance(path, Source) and path.remote:
        with path.ranges() as f:
            yield cast(BinaryIO, f), path.size
        return
    local = path.local_path if isinstance(path, Source) else path
    assert local is not None
    with open(local, "rb") as f:
        yield f, os.fstat(f.fileno()).st_size


class ArchiveReader(DataReader):
    """The weights member of a .keras archive, with the archive's config.json and metadata.json."""

    def __init__(self, path: Path | Source) -> None:
        with _opened(path) as (f, size), open_zip(f, size) as zf:
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
                start = member_data_offset(f, info, size)
                super().__init__(path, start, info.file_size)
            else:
                # Extracted no further than its declared size, which must fit the limit.
                limits.check(f"{WEIGHTS} in the archive (compressed, {info.compress_size:,} bytes)", info.file_size,
                             "member_bytes")  # fmt: skip
                fd, temp = tempfile.mkstemp(suffix=".weights.h5", prefix="ckptkit-")
                self._temp = Path(temp)
                try:
                    with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                        while chunk := src.read(COPY_CHUNK):
                            out.write(chunk)
                except ZIP_ERRORS as err:
                    self._temp.unlink(missing_ok=True)
                    raise CorruptCheckpointError(f"{WEIGHTS} in the archive cannot be extracted: {err}") from None
                except BaseException:
                    self._temp.unlink(missing_ok=True)
                    raise
                super().__init__(self._temp)

    def close(self) -> None:
        super().close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)


def _read_json_text(zf: zipfile.ZipFile, name: str) -> str:
    if name not in zf.namelist():
        raise CorruptCheckpointError(f"the archive has no {name}")
    try:
        text = read_member(zf, zf.getinfo(name), "header_bytes").decode("utf-8")
        json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CorruptCheckpointError(f"{name} in the archive is not valid JSON") from None
    except RecursionError:
        raise CorruptCheckpointError(f"{name} in the archive nests JSON too deeply") from None
    return text


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
