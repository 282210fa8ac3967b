"""The format contract for safetensors."""

from ckptkit.testing import FormatContract


class TestSafetensors(FormatContract):
    format_name = "safetensors"
    # safetensors stores no checksum, and any bytes are valid values: a changed data byte is found
    # only by `ckptkit verify --manifest` against a manifest that `ckptkit hash` made.
    detects_flipped_data = False
