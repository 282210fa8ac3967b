"""GGUF (llama.cpp, ollama, LM Studio): a typed metadata header, tensor infos, then aligned tensor data.

:mod:`.header` parses and bounds the header (one parser for reading and for ``verify``), :mod:`.read`
reads lazily from a memory map, dequantizing quantized tensors on read (:mod:`.dequant` for the
common block types, gguf-py for the others), :mod:`.write` writes tensor by tensor. gguf-py (the
``gguf`` package, ``pip install 'ckptkit[gguf]'``) is needed only for the block types ckptkit does
not decode itself and for writing quantized tensors, and imported when one is read or written. Spec:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md.
"""

from __future__ import annotations

from ckptkit.core.format import Format
from ckptkit.formats.gguf.header import sniff
from ckptkit.formats.gguf.read import GGUFCheckpoint, open_gguf, open_remote_gguf
from ckptkit.formats.gguf.write import DTYPES_HELD, QUANTIZE_OPTION, write_gguf

__all__ = ["FORMAT", "GGUFCheckpoint", "open_gguf", "sniff", "write_gguf"]

FORMAT = Format(
    name="gguf",
    description="GGUF (llama.cpp): typed metadata + aligned tensors, quantized ones dequantized on read",
    extensions=(".gguf",),
    sniff=sniff,
    open=open_gguf,
    open_remote=open_remote_gguf,
    write=write_gguf,
    write_options=(QUANTIZE_OPTION,),
    default_extension=".gguf",
    verify="ckptkit.formats.gguf.verify:check_structure",
    dtypes=DTYPES_HELD,
)
