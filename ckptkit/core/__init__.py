"""The ground floor: the types and rules every other part of ckptkit builds on.

- :mod:`.model`: the checkpoint model (``Checkpoint``, ``TensorInfo``, ``RawExtent``,
  ``MemoryCheckpoint``, ``Receipt``); readers list tensors from headers and read one at a time.
- :mod:`.format`: what a format is (``Format``, with its dtype column; ``OptionSpec``,
  ``WriteContext``, ``OutputTarget``); the registry holds these.
- :mod:`.dtypes`: the one table of element types and their name in every format.
- :mod:`.errors`: ``CkptkitError`` and its subclasses, one per kind of condition.
- :mod:`.views`: select, rename and cast views of a checkpoint; :mod:`.metadata`: the
  ``ckptkit:`` metadata keys and their JSON; :mod:`.findings`: what ``verify`` reports.
- :mod:`.names`, :mod:`.limits`, :mod:`.compare`, :mod:`.values`, :mod:`.stats`: tensor names,
  the bounds readers check before trusting a size, bit-exact comparison, NaN/Inf counting and
  summary statistics; :mod:`.torch_interop`: numpy <-> torch without copying.

Nothing here imports the rest of ckptkit, and no framework is imported at module level (torch
loads inside :mod:`.torch_interop`'s functions).
"""
