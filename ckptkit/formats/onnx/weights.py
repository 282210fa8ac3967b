"""Writing a checkpoint as a standalone ONNX weights model, streamed tensor by tensor.

The model has no nodes: each tensor is an initializer and a graph output of the same name, so
onnx.checker accepts it and an onnxruntime session run with no inputs hands every tensor back.
The protobuf is written by hand, field by field, because the onnx package needs the whole model
in memory to serialize it. Tensors of 1 KB or more go to one data file beside the model when
external data is asked for or the model would pass protobuf's 2 GiB limit.

IR version 10 and opset 21 (those of onnx 1.16) are chosen so that onnxruntime 1.18 and later load
the file (the IR version onnx 1.23 writes by default, 14, is refused by onnxruntime 1.31). A tensor type newer than
IR 10 raises the IR version to the first that has it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ckptkit.core.errors import UnsupportedError
from ckptkit.core.format import WriteContext
from ckptkit.core.metadata import checkpoint_metadata
from ckptkit.core.model import Checkpoint, TensorInfo
from ckptkit.io.protowire import bytes_field, len_field_size, len_prefix, string_field, varint_field
from ckptkit.io.streaming import TensorCopier

from .elements import COMPLEX64, COMPLEX128, IR_FOR_TYPE, stored_nbytes
from .emit import (
    EXTERNAL_THRESHOLD,
    PROTOBUF_LIMIT,
    ExternalData,
    inline_data_size,
    onnx_type,
    tensor_header,
    value_info,
    write_inline_data,
)
from .graph import (
    G_INITIALIZER,
    G_NAME,
    G_OUTPUT,
    M_GRAPH,
    M_IR_VERSION,
    M_METADATA_PROPS,
    M_OPSET_IMPORT,
    M_PRODUCER_NAME,
    M_PRODUCER_VERSION,
)

IR_VERSION = 10
OPSET = 21
ORT_MAX_IR = 13  # the newest IR version onnxruntime 1.31 loads
GRAPH_NAME = "ckptkit_weights"


def _producer_version() -> str:
    try:
        return version("ckptkit")
    except PackageNotFoundError:
        return "0+unknown"


def write_weights(ckpt: Checkpoint, ctx: WriteContext) -> None:
    """Write ``ckpt`` as an ONNX model whose graph returns each tensor."""
    infos = list(ckpt.tensor_infos())
    ir_version = IR_VERSION
    for ti in infos:
        code = onnx_type(ti)
        if not ti.name:
            raise UnsupportedError("a tensor has an empty name, which ONNX cannot hold")
        ir_version = max(ir_version, IR_FOR_TYPE.get(code, 0))
    meta = {k: v for k, v in checkpoint_metadata(ckpt).items() if not k.startswith("onnx:")}
    head = (
        varint_field(M_IR_VERSION, ir_version)
        + string_field(M_PRODUCER_NAME, "ckptkit")
        + string_field(M_PRODUCER_VERSION, _producer_version())
    )
    tail = bytes_field(M_OPSET_IMPORT, string_field(1, "") + varint_field(2, OPSET)) + b"".join(
        bytes_field(M_METADATA_PROPS, string_field(1, k) + string_field(2, v)) for k, v in meta.items()
    )
    returned = [ti for ti in infos if ti.dtype.onnx not in (COMPLEX64, COMPLEX128)]
    outputs = b"".join(bytes_field(G_OUTPUT, value_info(ti.name, ti.dtype, ti.shape)) for ti in returned)
    headers = {ti.name: tensor_header(ti.name, ti.dtype, ti.shape) for ti in infos}

    out_path = ctx.output.temp_for()
    external: ExternalData | None = None

    def graph_size() -> int:
        size = len(string_field(G_NAME, GRAPH_NAME)) + len(outputs)
        for ti in infos:
            size += len_field_size(G_INITIALIZER, _tensor_size(ti, headers[ti.name], external))
        return size

    inline_total = len(head) + len(tail) + len_field_size(M_GRAPH, graph_size())
    if ctx.options.get("external_data") or inline_total > PROTOBUF_LIMIT:
        external = ExternalData.beside(ctx)
        for ti in infos:
            if stored_nbytes(ti.dtype, ti.numel) >= EXTERNAL_THRESHOLD:
                external.place(ti)
        if not ctx.options.get("external_data"):
            ctx.notes.append(f"the model would pass protobuf's 2 GiB limit: tensors written to {external.location}")
    with TensorCopier(kernel_copy_unaligned=True) as copier:
        if external is not None:
            external.write(ctx, copier, ckpt)
        with open(out_path, "wb") as out:
            out.write(head)
            out.write(len_prefix(M_GRAPH, graph_size()))
            out.write(string_field(G_NAME, GRAPH_NAME))
            for ti in infos:
                header = headers[ti.name]
                out.write(len_prefix(G_INITIALIZER, _tensor_size(ti, header, external)))
                out.write(header)
                if external is not None and ti.name in external.offsets:
                    out.write(external.fields_for(ti))
                else:
                    write_inline_data(copier, ckpt, ti, out, ctx.progress)
            out.write(outputs)
            out.write(tail)
    _notes(ctx, infos, returned, ir_version)


def _tensor_size(ti: TensorInfo, header: bytes, external: ExternalData | None) -> int:
    if external is not None and ti.name in external.offsets:
        return len(header) + len(external.fields_for(ti))
    return len(header) + inline_data_size(stored_nbytes(ti.dtype, ti.numel))


def _notes(ctx: WriteContext, infos: list[TensorInfo], returned: list[TensorInfo], ir_version: int) -> None:
    if len(returned) < len(infos):
        kept = {ti.name for ti in returned}
        names = ", ".join(ti.name for ti in infos if ti.name not in kept)
        ctx.notes.append(
            f"complex tensors ({names}) are initializers but not graph outputs: onnxruntime cannot return them"
        )
    if infos and not returned:
        ctx.notes.append("the graph has no outputs, so onnxruntime will not load it; the tensors are all there")
    if ir_version > ORT_MAX_IR:
        ctx.notes.append(f"IR version {ir_version} is needed for these tensor types; onnxruntime 1.31 cannot load it")
