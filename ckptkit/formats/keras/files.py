"""Opening any Keras HDF5 file and writing one, shared by the ``keras`` and ``keras-h5`` formats."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ckptkit.core.dtypes import dtype_names
from ckptkit.core.errors import UnknownFormatError
from ckptkit.core.format import TEMPLATE_OPTION, OptionSpec, WriteContext
from ckptkit.core.model import Checkpoint
from ckptkit.formats.keras import structure
from ckptkit.formats.keras.archive import ArchiveReader
from ckptkit.formats.keras.checkpoint import KerasCheckpoint
from ckptkit.formats.keras.h5write import FileSpec, write_hdf5
from ckptkit.formats.keras.hdf5 import DataReader, hdf5_errors
from ckptkit.formats.keras.read_legacy import is_legacy, not_keras_message, read_legacy
from ckptkit.formats.keras.read_v3 import is_v3, read_v3
from ckptkit.formats.keras.template import fill
from ckptkit.io.source import Source

# HDF5 holds every ckptkit dtype: numpy's natively, the ml_dtypes ones (bfloat16, float8, int4, ...)
# as opaque elements of their width plus a dtype attribute (see h5write.storage_dtype).
DTYPES_HELD = frozenset(dtype_names())

WRITE_OPTIONS = (
    TEMPLATE_OPTION,  # Keras: the template's variables filled by name or order, every shape checked
    OptionSpec(
        "template_match",
        "With --template: match variables to tensors by 'name' or 'order' (default: name if all match).",
    ),
)


def open_file(
    path: Path | Source, archive: bool, names_hint: Mapping[str, str] | None = None, expect: str | None = None
) -> KerasCheckpoint:
    """Read a Keras HDF5 file, or the weights of a .keras archive, whichever layout it has.

    ``names_hint`` names objects (by HDF5 group path) whose name the file leaves out. ``expect``
    ("keras" or "keras-h5") refuses a file of the other layout, as reading with ``--from`` must.
    """
    reader: DataReader = ArchiveReader(path) if archive else DataReader(path)
    try:
        with hdf5_errors():
            h5 = reader.open_h5()
    except BaseException:
        reader.close()
        raise
    try:
        with hdf5_errors():
            if expect is not None:
                _refuse_other_layout(reader.name, h5, archive, expect)
            return _read(reader, h5, names_hint or {})
    except BaseException:
        with contextlib.suppress(Exception):
            h5.close()
        reader.close()
        raise


_LAYOUTS = {"keras": "a Keras 3 weights file", "keras-h5": "a legacy Keras HDF5 file"}


def _refuse_other_layout(path: str, h5: Any, archive: bool, expect: str) -> None:
    found = "keras" if archive or (not is_legacy(h5) and is_v3(h5)) else "keras-h5" if is_legacy(h5) else None
    if found is not None and found != expect:
        raise UnknownFormatError(
            f"this is {_LAYOUTS[found]}, not {expect}; read it as {found} (leave out --from, or pass --from {found})",
            path,
        )


def _read(reader: DataReader, h5: Any, names_hint: Mapping[str, str]) -> KerasCheckpoint:
    if isinstance(reader, ArchiveReader):
        ckpt = KerasCheckpoint(reader, h5, "keras", names_hint)
        extra = {structure.ARCHIVE_CONFIG: reader.config}
        if reader.archive_metadata is not None:
            extra[structure.ARCHIVE_METADATA] = reader.archive_metadata
        config = structure.load_json(reader.config, "config.json")
        read_v3(ckpt, "keras", config, extra)
    elif is_legacy(h5):
        ckpt = KerasCheckpoint(reader, h5, "keras-h5")
        read_legacy(ckpt)
    elif is_v3(h5):
        ckpt = KerasCheckpoint(reader, h5, "keras", names_hint)
        read_v3(ckpt, "weights.h5")
    else:
        raise UnknownFormatError(not_keras_message(h5))
    return ckpt


def write_with(spec_for: Callable[[Checkpoint, list[str]], FileSpec], ckpt: Checkpoint, ctx: WriteContext) -> Path:
    """Fill the template if asked, then write the HDF5 file laid out by ``spec_for``; returns its path."""
    view = prepare(ckpt, ctx)
    target = ctx.output.temp_for()
    write_hdf5(spec_for(view, ctx.notes), view, target, ctx.progress)
    return target


def prepare(ckpt: Checkpoint, ctx: WriteContext) -> Checkpoint:
    options: Mapping[str, Any] = ctx.options
    template = options.get("template")
    if template is None:
        if options.get("template_match"):
            ctx.notes.append("--template-match has no effect without --template")
        return ckpt
    view = fill(ckpt, Path(template), options.get("template_match"), ctx.notes)
    ctx.expected = view
    return view
