"""TensorFlow checkpoints (tensor bundles): ``tf.train.Checkpoint``, TF1 ``Saver``, SavedModel variables.

Read and written without TensorFlow. A checkpoint is named by its prefix (``ckpt-1``), its
``.index`` or data file, a folder with a ``checkpoint`` file, or a SavedModel folder (see
:mod:`.paths`). Reading is lazy (:mod:`.read`); TF2 object-based checkpoints get Keras-style names
from their object graph (:mod:`.names`). Writing (:mod:`.write`) makes a bundle TensorFlow reads,
object-based when the object graph is known.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckptkit.core.errors import UsageError
from ckptkit.core.format import TEMPLATE_OPTION, Format, OptionSpec, WriteContext
from ckptkit.core.model import Checkpoint
from ckptkit.io.source import Source

from . import dtypes as tf_dtypes
from .paths import (
    INDEX_SUFFIX,
    STATE_FILE,
    ends_like_table,
    folder_index,
    index_path,
    kept_checkpoints,
    locate,
    looks_like_table,
    prefix_of,
)


def sniff(head: bytes, path: Path) -> bool:
    """An index (a table whose first entry is the bundle header), one of its data files, a
    ``checkpoint`` state file, or a folder holding a checkpoint."""
    if path.is_dir():
        try:
            return folder_index(path) is not None
        except Exception:  # a folder with a damaged 'checkpoint' file is still ours to report on
            return (path / STATE_FILE).is_file()
    if path.name == STATE_FILE:
        return head.lstrip().startswith(b"model_checkpoint_path")
    if path.name == "saved_model.pb":
        return looks_like_table(index_path(path.parent / "variables" / "variables"))
    prefix = prefix_of(path)
    if prefix is None:
        return False
    if path.name.endswith(INDEX_SUFFIX):
        return looks_like_table(path)
    return looks_like_table(index_path(prefix))


def find_index(path: Path) -> Path | None:
    """For a prefix that is no file itself (``ckpt-1``), its index file."""
    index = index_path(path)
    return index if looks_like_table(index) else None


def sniff_remote(head: bytes, source: Source) -> bool:
    """An index at a URL: its name, and the table magic number in its last 8 bytes."""
    return source.basename.endswith(INDEX_SUFFIX) and ends_like_table(source.read_at(source.size - 8, 8), source.size)


def locate_remote(url: str) -> str:
    """The index of the checkpoint a prefix URL (``s3://bucket/run/ckpt-1``) names."""
    return url + INDEX_SUFFIX


def open_remote_tensorflow(source: Source, options: Mapping[str, Any]) -> Checkpoint:
    """Open a checkpoint at a URL (its index) for lazy reading: data files are the URLs beside it."""
    from .read import RemoteTensorFlowCheckpoint

    if options.get("checkpoint"):
        raise UsageError("--checkpoint picks a checkpoint in a local folder; name the checkpoint's index URL instead")
    return RemoteTensorFlowCheckpoint(source)


def open_tensorflow(path: Path, options: Mapping[str, Any]) -> Checkpoint:
    from .read import TensorFlowCheckpoint

    return TensorFlowCheckpoint(locate(path, options.get("checkpoint")))


def write_tensorflow(ckpt: Checkpoint, ctx: WriteContext) -> None:
    from .write import write_bundle

    write_bundle(ckpt, ctx)


FORMAT = Format(
    name="tensorflow",
    description="TensorFlow checkpoint (PREFIX.index + data files; tf.train.Checkpoint, Saver, SavedModel variables)",
    extensions=(INDEX_SUFFIX,),
    sniff=sniff,
    open=open_tensorflow,
    open_remote=open_remote_tensorflow,
    sniff_remote=sniff_remote,
    locate_remote=locate_remote,
    write=write_tensorflow,
    read_options=(
        OptionSpec(
            "checkpoint",
            "TensorFlow: in a folder with a 'checkpoint' file, read this kept checkpoint (its name, such as "
            "ckpt-2, or its number) instead of the latest.",
        ),
    ),
    write_options=(TEMPLATE_OPTION,),
    default_extension=INDEX_SUFFIX,
    weights_name="ckpt",
    verify="ckptkit.formats.tensorflow.verify:check_structure",
    locate=find_index,
    snapshots=kept_checkpoints,
    dtypes=tf_dtypes.DTYPES_HELD,
)
