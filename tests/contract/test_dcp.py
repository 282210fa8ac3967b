"""The format contract for torch.distributed.checkpoint folders, written by torch itself."""

from ckptkit.testing import FormatContract


class TestDcp(FormatContract):
    format_name = "dcp"
    # Each chunk is a torch.save archive whose zip records carry CRC-32s.
    detects_flipped_data = True
    # dcp.save stores a tied tensor under each of its names.
    holds_aliases = False
