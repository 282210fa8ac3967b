"""safetensors (Hugging Face): an 8-byte header length, a JSON header, then raw tensor bytes.

The format parses its header itself (:mod:`.header`, one parser for reading and for ``verify``),
reads lazily from a memory map (:mod:`.read`) and writes tensor by tensor in the library's own
layout (:mod:`.write`); :mod:`.verify` reports every structural fault. Spec:
https://github.com/huggingface/safetensors#format.

The dtype column is every dtype that has a safetensors code in :mod:`ckptkit.core.dtypes`.
"""

from __future__ import annotations

from ckptkit.core.dtypes import DTYPES
from ckptkit.core.format import Format
from ckptkit.formats.safetensors.header import sniff
from ckptkit.formats.safetensors.read import SafetensorsCheckpoint, open_remote_safetensors, open_safetensors
from ckptkit.formats.safetensors.write import build_header, write_safetensors
from ckptkit.io.shards.write import SHARD_SIZE_OPTION, shardable

__all__ = ["FORMAT", "SafetensorsCheckpoint", "build_header", "open_safetensors", "sniff", "write_safetensors"]

FORMAT = Format(
    name="safetensors",
    description="safetensors (Hugging Face): header + raw tensors, memory-mapped",
    extensions=(".safetensors",),
    sniff=sniff,
    open=open_safetensors,
    open_remote=open_remote_safetensors,
    write=shardable(write_safetensors),
    write_options=(SHARD_SIZE_OPTION,),
    default_extension=".safetensors",
    verify="ckptkit.formats.safetensors.verify:check_structure",
    dtypes=frozenset(d.name for d in DTYPES if d.safetensors),
)
