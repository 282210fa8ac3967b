"""ONNX: the weights of any model out, and into any graph, with external data past 2 GB.

Reading lists every initializer of the main graph and of subgraphs, and the values of Constant
nodes (named by the node's output; ``no_constants`` leaves them out). Writing makes a standalone
weights model, or with ``template`` replaces the tensors of an existing model. Neither needs the
onnx package: the protobuf is walked and written directly (see :mod:`ckptkit.io.protowire` for why).

The folder: :mod:`.graph` (where tensors lie in a model),
:mod:`.elements` (element types, packed sub-byte values), :mod:`.reader`, :mod:`.weights` and
:mod:`.emit` (a standalone weights model), :mod:`.template` and :mod:`.splice` (writing into a
``--template``), :mod:`.derive` (``--template`` with ``--base``: how an exporter made each tensor),
:mod:`.verify` (structure checks). Every ckptkit dtype has an ONNX type, so the
dtype column is all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckptkit.core.dtypes import DTYPES
from ckptkit.core.errors import UsageError
from ckptkit.core.format import TEMPLATE_OPTION, Format, OptionSpec, WriteContext
from ckptkit.core.model import Checkpoint
from ckptkit.io.source import Source

from .graph import looks_like_model


def sniff(head: bytes, path: Path) -> bool:
    """Whether the file starts like a serialized ONNX ModelProto."""
    return looks_like_model(head)


def open_onnx(path: Path, options: Mapping[str, Any]) -> Checkpoint:
    """Open a model lazily; ``no_constants`` leaves out the values of Constant nodes."""
    from .reader import OnnxCheckpoint

    return OnnxCheckpoint(path, include_constants=not options.get("no_constants"))


def open_remote_onnx(source: Source, options: Mapping[str, Any]) -> Checkpoint:
    """Open a model at a URL lazily, its external data files beside it."""
    from .reader import RemoteOnnxCheckpoint

    return RemoteOnnxCheckpoint(source, include_constants=not options.get("no_constants"))


def write_onnx(ckpt: Checkpoint, ctx: WriteContext) -> None:
    """Write a standalone weights model, or into ``template`` when that option is given."""
    if ctx.options.get("template"):
        from .template import write_into_template

        write_into_template(ckpt, ctx)
        return
    for opt in ("rename", "allow_partial", "base"):
        if ctx.options.get(opt):
            raise UsageError(f"--{opt.replace('_', '-')} needs --template MODEL.onnx")
    from .weights import write_weights

    write_weights(ckpt, ctx)


FORMAT = Format(
    name="onnx",
    description="ONNX model: initializers and Constant nodes; writes weights models or into a --template",
    extensions=(".onnx",),
    sniff=sniff,
    open=open_onnx,
    open_remote=open_remote_onnx,
    write=write_onnx,
    read_options=(OptionSpec("no_constants", "ONNX: leave out tensors held by Constant nodes.", kind="flag"),),
    write_options=(
        TEMPLATE_OPTION,  # ONNX: initializers and Constant values replaced by name (or as --base proves), checked
        OptionSpec(
            "rename",
            "ONNX --template: CKPT_NAME=MODEL_NAME, or a file of such lines or a JSON object; repeatable.",
            multiple=True,
        ),
        OptionSpec(
            "base",
            "ONNX --template: the checkpoint MODEL.onnx was exported from. ckptkit proves from it how the "
            "exporter made each initializer (renamed, transposed, gates packed, BatchNorm folded...) and "
            "makes the same from the new checkpoint.",
            kind="path",
        ),
        OptionSpec(
            "allow_partial",
            "ONNX --template: keep the model's own values where the checkpoint has no tensor (a checkpoint "
            "tensor with no place in the model is still an error: --exclude it).",
            kind="flag",
        ),
        OptionSpec(
            "external_data",
            "ONNX: put tensors of 1 KB or more in one data file beside the model (NAME.onnx.data); "
            "automatic past 2 GB.",
            kind="flag",
        ),
    ),
    default_extension=".onnx",
    verify="ckptkit.formats.onnx.verify:check_structure",
    dtypes=frozenset(d.name for d in DTYPES if d.onnx is not None),
)
