"""The format contract for TensorFlow checkpoints."""

from ckptkit.testing import FormatContract


class TestTensorflow(FormatContract):
    format_name = "tensorflow"
    # Every tensor's bytes carry a masked CRC32C in the index, which verify recomputes.
    detects_flipped_data = True
    # A bundle has one entry per variable and no way to say two names share one: tied weights are
    # written, and read back, as tensors of their own with equal values.
    holds_aliases = False
