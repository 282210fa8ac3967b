"""The format contract for legacy Keras HDF5 files (.h5)."""

from ckptkit.testing import FormatContract


class TestKerasH5(FormatContract):
    format_name = "keras-h5"
    # HDF5 datasets without the fletcher32 filter carry no checksum: a changed data byte is found
    # only by `ckptkit verify --manifest` against a manifest that `ckptkit hash` made.
    detects_flipped_data = False
