"""numpy's .npy/.npz files and bare pickles as checkpoints: read in place, written as numpy writes them,
checked by numpy and joblib themselves."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import ckptkit
from ckptkit.core.errors import UnsafeCheckpointError, UnsupportedError
from ckptkit.verify import verify
from tests.conftest import FIXTURES


class _Runs:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_npy_and_npz_are_read_in_place(tmp_path: Path) -> None:
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.asfortranarray(np.eye(3, dtype=">f8")),
              "c": np.array(7, dtype=np.int16)}  # fmt: skip
    np.savez(tmp_path / "w.npz", **arrays)
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    np.save(tmp_path / "one.npy", arrays["b"])
    for name in ("w.npz", "c.npz"):
        with ckptkit.load(tmp_path / name) as ckpt:
            assert ckpt.format_name == "numpy" and ckpt.names() == ["a", "b", "c"]
            for key, want in arrays.items():
                got = ckpt.read_tensor(key)
                assert got.shape == want.shape and got.dtype == want.dtype.newbyteorder("=")
                np.testing.assert_array_equal(got, want)
            assert (ckpt.raw_extent("a") is not None) == (name == "w.npz")
    with ckptkit.load(tmp_path / "one.npy") as ckpt:
        assert ckpt.names() == ["array"]
        np.testing.assert_array_equal(ckpt.read_tensor("array"), arrays["b"])
    assert verify([tmp_path / "w.npz", tmp_path / "c.npz", tmp_path / "one.npy"]).exit_code == 0


def test_conversion_to_npz_is_read_by_numpy_and_back_bit_for_bit(tmp_path: Path) -> None:
    src = FIXTURES / "mlp_fp32.safetensors"
    ckptkit.convert(src, tmp_path / "w.npz")
    ckptkit.convert(tmp_path / "w.npz", tmp_path / "back.safetensors")
    with (
        np.load(tmp_path / "w.npz") as npz,
        ckptkit.load(src) as original,
        ckptkit.load(tmp_path / "back.safetensors") as back,
    ):
        assert sorted(npz.files) == sorted(original.names())
        for name in original.names():
            np.testing.assert_array_equal(npz[name], original.read_tensor(name))
            assert back.read_tensor(name).tobytes() == original.read_tensor(name).tobytes()


def test_npy_holds_one_tensor_and_bfloat16_is_refused(tmp_path: Path) -> None:
    ckptkit.save({"w": np.ones((2, 2), np.float16)}, tmp_path / "w.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), np.ones((2, 2), np.float16))
    with pytest.raises(ckptkit.CkptkitError, match=r"a \.npy file holds one array"):
        ckptkit.save({"a": np.ones(2), "b": np.ones(2)}, tmp_path / "two.npy")
    with pytest.raises(UnsupportedError, match="numpy's file format cannot name"):
        ckptkit.save({"w": np.ones(2, ml_dtypes.bfloat16)}, tmp_path / "bf.npz")
    assert not (tmp_path / "two.npy").exists() and not (tmp_path / "bf.npz").exists()


def test_object_arrays_are_listed_apart_and_refused_when_they_call(tmp_path: Path) -> None:
    np.savez(tmp_path / "mixed.npz", w=np.ones(3), names=np.array(["a", None], dtype=object))
    with ckptkit.load(tmp_path / "mixed.npz") as ckpt:
        assert ckpt.names() == ["w"] and "Python objects" in ckpt.unsupported["names"]
    marker = tmp_path / "PWNED"
    np.save(tmp_path / "evil.npy", np.array([_Runs(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeCheckpointError, match=r"array 'array': the pickle calls posix\.system at '0'"):
        ckptkit.load(tmp_path / "evil.npy")
    checks = {(f.severity, f.check) for f in verify([tmp_path / "evil.npy"]).findings}
    assert ("error", "pickle.call") in checks and ("warning", "numpy.object") in checks
    assert not marker.exists()


def test_bare_pickles_and_joblib_files_give_their_numeric_arrays(tmp_path: Path) -> None:
    import joblib

    value = {"coef": np.arange(6.0).reshape(2, 3), "fortran": np.asfortranarray(np.ones((2, 3), np.float32)),
             "labels": np.array(["a", None], dtype=object), "epoch": 3, "args": argparse.Namespace(lr=0.5)}  # fmt: skip
    joblib.dump(value, tmp_path / "m.joblib")
    joblib.dump(value, tmp_path / "z.joblib", compress=3)
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(value, protocol=5))
    for name in ("m.joblib", "z.joblib", "m.pkl"):
        with ckptkit.load(tmp_path / name) as ckpt:
            assert ckpt.format_name == "pickle" and ckpt.names() == ["coef", "fortran"], name
            np.testing.assert_array_equal(ckpt.read_tensor("fortran"), value["fortran"])
            assert ckpt.extras["epoch"] == 3 and ckpt.extras["args.lr"] == 0.5
        report = verify([tmp_path / name])
        assert report.exit_code == 0 and {f.check for f in report.findings} == {"pickle.unknown-global"}


def test_a_second_pickle_in_a_file_is_checked_too(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    (tmp_path / "two.pkl").write_bytes(pickle.dumps({"w": np.ones(2)}, 2) + pickle.dumps(_Runs(marker), 2))
    with pytest.raises(UnsafeCheckpointError, match=r"pickle 2 of the file: the pickle calls posix\.system"):
        ckptkit.load(tmp_path / "two.pkl")
    checks = {f.check for f in verify([tmp_path / "two.pkl"]).findings}
    assert {"pickle.call", "pickle.trailing"} <= checks
    assert not marker.exists()
