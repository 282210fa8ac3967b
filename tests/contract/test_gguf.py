"""The format contract for GGUF."""

from ckptkit.testing import FormatContract


class TestGguf(FormatContract):
    format_name = "gguf"
    # GGUF stores no checksum, and any bytes are valid values: a changed data byte is found only by
    # `ckptkit verify --manifest` against a manifest that `ckptkit hash` made.
    detects_flipped_data = False
