"""The built-in checkpoint formats: one folder each.

A format's folder holds its reader, its writer and its structure checks (``verify.py``, named by
``Format.verify``), and its ``__init__`` (or, where a folder holds two formats, the module the
registry names) ends by declaring ``FORMAT = Format(...)``: name, extensions, sniffer, reader,
writer, options, and the dtype column ``dtypes``. The registry lists each format by one line in
:data:`ckptkit.registry._BUILTIN_MODULES`; tests/contract holds one test file per format that
runs :class:`ckptkit.testing.FormatContract` against it.

- ``safetensors/``, ``onnx/``: one format each.
- ``torch/``: ``torch.save`` files, and torch.distributed.checkpoint folders (``dcp.py``, whose
  chunks are ``torch.save`` archives).
- ``keras/``: Keras 3 weights and ``.keras`` archives (``v3.py``: the ``keras`` format) and legacy
  HDF5 (``legacy.py``: ``keras-h5``), sharing the HDF5 reader and writer.
- ``sharded/``: shard indexes over shards of any readable format, and folders holding a checkpoint.

What two formats share lives in :mod:`ckptkit.core` or :mod:`ckptkit.io`, not in either folder:
no format imports another's (tests/test_architecture.py checks). Heavy libraries (h5py, onnx) load
inside functions, so listing formats and detecting a file import no framework.
"""
