"""The format contract for bare pickles of numpy arrays, written by the pickle module itself."""

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from ckptkit.testing import FormatContract


class TestPickle(FormatContract):
    format_name = "pickle"
    # A pickle stores no checksum of its arrays' bytes.
    detects_flipped_data = False
    # The pickle memo shares one array under two keys; ckptkit lists it under each name.
    holds_aliases = False

    def write_sample(self, arrays: Mapping[str, np.ndarray], aliases: Mapping[str, str], folder: Path) -> Path:
        path = folder / "sample.pkl"
        value = {**arrays, **{alias: arrays[target] for alias, target in aliases.items()}}
        path.write_bytes(pickle.dumps(value, protocol=4))
        return path

    def test_listing_reads_no_tensor_data(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        pytest.skip("a bare pickle holds its arrays inline: listing them means parsing the whole pickle")
