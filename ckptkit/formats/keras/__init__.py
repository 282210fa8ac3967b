"""Keras weights files: legacy HDF5 (``keras-h5``) and Keras 3 ``.weights.h5``/``.keras`` (``keras``)."""
