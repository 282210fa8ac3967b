"""Keras weights files, two formats in one folder: Keras 3 ``.weights.h5`` files and ``.keras``
archives (``keras``, declared in :mod:`.v3`) and legacy HDF5 files (``keras-h5``, in :mod:`.legacy`).

Each claims only its own layout, by content. They share reading (:mod:`.files`, :mod:`.hdf5`,
:mod:`.read_v3`, :mod:`.read_legacy`, :mod:`.checkpoint`), writing (:mod:`.h5write` with the
layouts of :mod:`.write_v3` and :mod:`.write_legacy`, :mod:`.archive` for ``.keras``), what Keras
names things (:mod:`.naming`, :mod:`.structure`), ``--template`` (:mod:`.template`) and the
structure checks (:mod:`.verify`). Their dtype column, ``files.DTYPES_HELD``, is every dtype.
"""
