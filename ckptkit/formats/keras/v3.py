"""The ``keras`` format: Keras 3 ``.weights.h5`` files and ``.keras`` archives.

Writing ``.keras`` needs the model's config.json: from ``--template`` or from a checkpoint read
out of a .keras archive (its config travels in the ``keras:config`` metadata).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckptkit.core.errors import UsageError
from ckptkit.core.format import Format, WriteContext
from ckptkit.core.model import Checkpoint
from ckptkit.core.views import TransformedCheckpoint
from ckptkit.formats.keras import archive, structure
from ckptkit.formats.keras.files import DTYPES_HELD, WRITE_OPTIONS, open_file, prepare
from ckptkit.formats.keras.h5write import write_hdf5
from ckptkit.formats.keras.hdf5 import REMOTE_READAHEAD, h5py_module, signature_offset
from ckptkit.formats.keras.read_legacy import is_legacy
from ckptkit.formats.keras.read_v3 import is_v3
from ckptkit.formats.keras.write_v3 import v3_spec
from ckptkit.io.source import Source
from ckptkit.io.ziparchive import LOCAL_HEADER_MAGIC


def sniff(head: bytes, path: Path) -> bool:
    if head.startswith(LOCAL_HEADER_MAGIC):
        # A damaged .keras archive is still claimed, so that the error says what is wrong with it.
        return path.name.lower().endswith(".keras") or archive.is_archive(path)
    if signature_offset(head) is None:
        return False
    # By content, whatever the name: Keras 2 wrote legacy files named .weights.h5 too, and those
    # (and HDF5 files h5py cannot open) are the keras-h5 format's to read or to report.
    with contextlib.suppress(Exception), h5py_module().File(path, "r", locking=False) as h5:
        return is_v3(h5) and not is_legacy(h5)
    return False


def sniff_remote(head: bytes, source: Source) -> bool:
    """:func:`sniff` for a file at a URL: a zip's directory by range reads, HDF5 through a file object."""
    if head.startswith(LOCAL_HEADER_MAGIC):
        return source.basename.lower().endswith(".keras") or archive.is_archive(source)
    return signature_offset(head) is not None and _h5_layout(source) == "keras"


def _h5_layout(source: Source) -> str | None:
    """ "keras" for a Keras 3 weights file, "keras-h5" for a legacy one, ``None`` when h5py cannot tell."""
    with contextlib.suppress(Exception), source.open(REMOTE_READAHEAD) as f, h5py_module().File(f, "r") as h5:
        return "keras-h5" if is_legacy(h5) else "keras" if is_v3(h5) else None
    return None


def open_remote_keras(source: Source, options: Mapping[str, Any]) -> Checkpoint:
    """Open a Keras 3 file at a URL: h5py reads it through a file object over range requests."""
    zipped = source.read_at(0, len(LOCAL_HEADER_MAGIC)) == LOCAL_HEADER_MAGIC
    return open_file(source, archive=zipped, expect="keras")


def open_keras(path: Path, options: Mapping[str, Any]) -> Checkpoint:
    with open(path, "rb") as f:
        zipped = f.read(4) == LOCAL_HEADER_MAGIC
    return open_file(path, archive=zipped, expect="keras")


def write_keras(ckpt: Checkpoint, ctx: WriteContext) -> None:
    view = prepare(ckpt, ctx)
    renamed: dict[str, str] = {}
    archive_out = ctx.output.path.name.lower().endswith(".keras")
    spec = v3_spec(view, ctx.notes, renamed, archive=archive_out)
    if renamed:
        new_name = {old: new for new, old in renamed.items()}
        ctx.expected = TransformedCheckpoint(view, {new_name.get(n, n): n for n in view.names()}, None, {}, [])
    if not archive_out:
        write_hdf5(spec, view, ctx.output.temp_for(), ctx.progress)
        return
    config = view.metadata.get(structure.ARCHIVE_CONFIG)
    if config is None:
        raise UsageError(
            "a .keras archive needs the model's config.json: pass --template MODEL.keras, "
            "or write weights only to a .weights.h5 file"
        )
    target = ctx.output.temp_for()
    weights = target.parent / (target.name + ".weights.h5")
    write_hdf5(spec, view, weights, ctx.progress)
    version = view.metadata.get(structure.KERAS_VERSION, "3.0.0")
    archive.write_archive(target, config, view.metadata.get(structure.ARCHIVE_METADATA), weights, version)
    weights.unlink()


FORMAT = Format(
    name="keras",
    description="Keras 3 weights (.weights.h5) and models (.keras archives)",
    extensions=(".weights.h5", ".keras"),
    sniff=sniff,
    open=open_keras,
    open_remote=open_remote_keras,
    sniff_remote=sniff_remote,
    write=write_keras,
    write_options=WRITE_OPTIONS,
    default_extension=".weights.h5",
    verify="ckptkit.formats.keras.verify:check_structure",
    dtypes=DTYPES_HELD,
)
