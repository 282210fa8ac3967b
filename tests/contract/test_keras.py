"""The format contract for Keras 3 weights (.weights.h5)."""

from ckptkit.testing import FormatContract


class TestKeras(FormatContract):
    format_name = "keras"
    # Keras writes HDF5 datasets without the fletcher32 filter, so nothing checks their bytes: a
    # changed data byte is found only by `ckptkit verify --manifest` against `ckptkit hash`'s manifest.
    detects_flipped_data = False
