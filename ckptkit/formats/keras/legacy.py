"""The ``keras-h5`` format: legacy Keras HDF5 files (``model.save('x.h5')``, ``save_weights('x.h5')``).

Any HDF5 file that the ``keras`` format does not claim comes here, so that an HDF5 file which is
not a Keras file gets a message saying so rather than "unknown format". A Keras 3 weights file is
the ``keras`` format's: this one neither claims nor reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckptkit.core.format import Format, WriteContext
from ckptkit.core.model import Checkpoint
from ckptkit.formats.keras import v3
from ckptkit.formats.keras.files import DTYPES_HELD, WRITE_OPTIONS, open_file, write_with
from ckptkit.formats.keras.hdf5 import signature_offset
from ckptkit.formats.keras.write_legacy import legacy_spec
from ckptkit.io.source import Source


def sniff(head: bytes, path: Path) -> bool:
    return signature_offset(head) is not None and not v3.sniff(head, path)


def sniff_remote(head: bytes, source: Source) -> bool:
    """:func:`sniff` for a file at a URL: an HDF5 file that is not a Keras 3 weights file."""
    return signature_offset(head) is not None and not v3.sniff_remote(head, source)


def open_remote_legacy(source: Source, options: Mapping[str, Any]) -> Checkpoint:
    """Open a legacy Keras HDF5 file at a URL: h5py reads it through a file object over range requests."""
    return open_file(source, archive=False, expect="keras-h5")


def open_legacy(path: Path, options: Mapping[str, Any]) -> Checkpoint:
    return open_file(path, archive=False, expect="keras-h5")


def write_legacy(ckpt: Checkpoint, ctx: WriteContext) -> None:
    write_with(legacy_spec, ckpt, ctx)


FORMAT = Format(
    name="keras-h5",
    description="legacy Keras HDF5 (.h5): full models and weights, Keras 1-3 and tf.keras",
    extensions=(".h5", ".hdf5"),
    sniff=sniff,
    open=open_legacy,
    open_remote=open_remote_legacy,
    sniff_remote=sniff_remote,
    write=write_legacy,
    write_options=WRITE_OPTIONS,
    default_extension=".h5",
    verify="ckptkit.formats.keras.verify:check_structure",
    dtypes=DTYPES_HELD,
)
