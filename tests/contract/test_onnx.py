"""The format contract for ONNX."""

from ckptkit.testing import FormatContract


class TestOnnx(FormatContract):
    format_name = "onnx"
    # A protobuf carries no checksum and raw_data may hold any bytes: a changed data byte is found
    # only by `ckptkit verify --manifest` against a manifest that `ckptkit hash` made.
    detects_flipped_data = False
