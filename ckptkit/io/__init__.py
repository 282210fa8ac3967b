"""Files: what formats and engines share to read and write them, above :mod:`ckptkit.core`.

- :mod:`.atomic`: ``AtomicOutput``, every write staged in a hidden folder and renamed into place.
- :mod:`.streaming`: ``TensorCopier``, tensor bytes copied chunk by chunk (in the kernel where it can).
- :mod:`.paths`: names a checkpoint gives its other files, judged before they are opened.
- :mod:`.jsonfile`, :mod:`.ziparchive`: JSON and zip archives read from strangers.
- :mod:`.workers`: the thread pool and its one worker policy.
- :mod:`.shards`: shard indexes (:mod:`.shards.index`) and writing a checkpoint as shards
  (:mod:`.shards.write`, the ``shardable`` wrapper a format's writer can take).

Imports go down only: this package uses :mod:`ckptkit.core` and nothing above it.
"""
