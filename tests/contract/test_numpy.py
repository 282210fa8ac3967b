"""The format contract for numpy's .npz files (and .npy, read by the same reader)."""

from ckptkit.testing import FormatContract


class TestNumpy(FormatContract):
    format_name = "numpy"
    # np.savez stores each array as a zip member with a CRC-32, which verify checks.
    detects_flipped_data = True
    # numpy files keep no alias map: a tied name is written as its own copy.
    holds_aliases = False
