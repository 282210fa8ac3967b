"""PyTorch ``torch.save`` files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``), read and written without torch.

Reading parses the pickle with an allow-listed unpickler (:mod:`.unpickler`) that never runs the
file's code, names every tensor by its dotted path (:mod:`.structure`) and maps the file to read
one tensor at a time (:mod:`.reader`), from the zip format or the legacy one (:mod:`.archive`).
Writing (:mod:`.writer`, :mod:`.zipwriter`) produces the zip format of torch 2.x for a flat state
dict. :mod:`.verify` holds the structure and pickle-safety checks. The folder also holds the
``dcp`` format (:mod:`.dcp`: torch.distributed.checkpoint folders, whose chunks are ``torch.save``
archives read by the same code). The dtype column is every dtype but the sub-byte ones torch
cannot make tensors of (``writer.NOT_IN_TORCH``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, cast

from ckptkit.core.dtypes import dtype_names
from ckptkit.core.errors import CkptkitError
from ckptkit.core.format import Format
from ckptkit.core.model import Checkpoint
from ckptkit.formats.torch.archive import ZIP_MAGIC, first_member_name, is_legacy_head, zip_root
from ckptkit.formats.torch.reader import TorchCheckpoint, open_remote_torch, scan_findings
from ckptkit.formats.torch.writer import NOT_IN_TORCH, write_torch
from ckptkit.io.shards.write import SHARD_SIZE_OPTION, shardable
from ckptkit.io.source import Source
from ckptkit.io.unpickler import PickleFinding
from ckptkit.io.ziparchive import ZIP_ERRORS, open_zip


def sniff(head: bytes, path: Path) -> bool:
    """A zip holding ``<folder>/data.pkl`` (or TorchScript's ``constants.pkl``), or a legacy file."""
    if head.startswith(ZIP_MAGIC):
        with open(path, "rb") as f:
            return _sniff_zip(head, f, os.fstat(f.fileno()).st_size)
    return is_legacy_head(head)


def sniff_remote(head: bytes, source: Source) -> bool:
    """:func:`sniff` for a file at a URL: the zip's directory by range reads."""
    if head.startswith(ZIP_MAGIC):
        with source.ranges() as f:
            return _sniff_zip(head, cast(BinaryIO, f), source.size)
    return is_legacy_head(head)


def _sniff_zip(head: bytes, f: BinaryIO, size: int) -> bool:
    try:
        with open_zip(f, size) as zf:
            return zip_root(zf.namelist()) is not None
    except (CkptkitError, *ZIP_ERRORS):
        # A damaged archive: claim it when its first member is torch's, so opening reports it.
        return first_member_name(head).endswith("/data.pkl")


def open_torch(path: Path, options: Mapping[str, Any]) -> Checkpoint:
    return TorchCheckpoint(path)


FORMAT = Format(
    name="torch",
    description="PyTorch torch.save (zip or legacy), read without running pickled code",
    extensions=(".pt", ".pth", ".bin", ".ckpt"),
    sniff=sniff,
    open=open_torch,
    open_remote=open_remote_torch,
    sniff_remote=sniff_remote,
    write=shardable(write_torch),
    write_options=(SHARD_SIZE_OPTION,),
    default_extension=".pt",
    verify="ckptkit.formats.torch.verify:check_structure",
    weights_name="pytorch_model.bin",  # as transformers names it in a model folder
    dtypes=frozenset(dtype_names()) - NOT_IN_TORCH,
)

__all__ = ["FORMAT", "PickleFinding", "TorchCheckpoint", "scan_findings", "sniff"]
