"""The format contract for PyTorch torch.save files."""

from ckptkit.testing import FormatContract


class TestTorch(FormatContract):
    format_name = "torch"
    # Every zip record carries a CRC-32, which verify checks (torch.crc names the tensor).
    detects_flipped_data = True
