import shutil
import struct
import zipfile

import h5py
import numpy as np
import pytest

import ckptkit
from ckptkit.verify import verify
from tests.conftest import realworld_files


def _found(report):
    return sorted((f.check, f.tensor) for f in report.findings if f.severity == "error")


@pytest.fixture
def legacy_h5(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "w.h5"
    ckptkit.save(
        {"dense/kernel": rng.standard_normal((64, 32)).astype(np.float32), "dense/bias": np.ones(32, np.float32)}, path
    )
    return path


def test_clean_file_passes(legacy_h5):
    assert verify([legacy_h5]).findings == []


def test_truncated_hdf5(legacy_h5):
    legacy_h5.write_bytes(legacy_h5.read_bytes()[:-100])
    report = verify([legacy_h5])
    assert [f.check for f in report.findings] == ["hdf5.unreadable"] and "truncated" in report.findings[0].message


def test_damaged_compressed_dataset_is_named(legacy_h5):
    with h5py.File(legacy_h5, "r+") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.ndim == 2 else None)
        (name,) = names
        data, attrs = f[name][()], dict(f[name].attrs)
        del f[name]
        ds = f.create_dataset(name, data=data, compression="gzip", chunks=(16, 32))
        ds.attrs.update(attrs)
    assert verify([legacy_h5]).findings == []
    with h5py.File(legacy_h5, "r") as f:
        at = f[name].id.get_chunk_info(1).byte_offset
    raw = bytearray(legacy_h5.read_bytes())
    raw[at + 20] ^= 0xFF
    legacy_h5.write_bytes(bytes(raw))
    found = _found(verify([legacy_h5]))
    assert ("hdf5.unreadable", name) in found
    assert any(check == "tensor.unreadable" for check, _ in found)


@pytest.mark.parametrize("path", realworld_files("*.keras"), ids=lambda p: p.name)
def test_damaged_member_of_a_keras_archive(tmp_path, path):
    copy = tmp_path / "m.keras"
    shutil.copy(path, copy)
    with zipfile.ZipFile(copy) as zf:
        info = zf.getinfo("config.json")
    raw = bytearray(copy.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    raw[info.header_offset + 30 + name_len + extra_len + 5] ^= 1
    copy.write_bytes(bytes(raw))
    assert ("keras.crc", "") in _found(verify([copy]))


@pytest.mark.parametrize("path", realworld_files("*.h5") + realworld_files("*.keras"), ids=lambda p: p.name)
def test_real_keras_files_pass(path):
    assert _found(verify([path])) == []
