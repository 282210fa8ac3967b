import json
import struct

import numpy as np
import pytest
import safetensors
import safetensors.numpy

import ckptkit
from ckptkit.core.dtypes import DTYPES
from ckptkit.core.errors import CorruptCheckpointError, UnsupportedError
from ckptkit.core.torch_interop import torch_to_numpy
from tests.conftest import assert_one_line_error, realworld_files
from tests.helpers import assert_same_tensors, sample_array, write_read

ST_DTYPES = [d.name for d in DTYPES if d.safetensors]


@pytest.mark.parametrize("dtype", ST_DTYPES)
def test_round_trip_every_dtype_and_library_reads_it(tmp_path, dtype):
    arrays = {"w": sample_array(dtype, (4, 3)), "empty": sample_array(dtype, (0, 2)), "scalar": sample_array(dtype, ())}
    path = tmp_path / "x.safetensors"
    write_read(arrays, path)
    with safetensors.safe_open(path, framework="pt") as f:
        for name, want in arrays.items():
            got = torch_to_numpy(f.get_tensor(name))
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes()


def test_header_is_byte_identical_to_the_library(tmp_path):
    arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.arange(3, dtype=np.int8), "c": np.ones(1)}
    path = tmp_path / "x.safetensors"
    ckptkit.save(arrays, path)
    assert path.read_bytes() == safetensors.numpy.save(arrays)
    # With metadata the library's key order varies from run to run (a hash map), so compare parsed.
    ckptkit.save(arrays, path, metadata={"z": "1", "a": "2"}, force=True)
    theirs = safetensors.numpy.save(arrays, metadata={"z": "1", "a": "2"})
    ours = path.read_bytes()
    assert len(ours) == len(theirs) and ours[-35:] == theirs[-35:]
    with safetensors.safe_open(path, framework="numpy") as f:
        assert f.metadata() == {"z": "1", "a": "2"}


def test_reads_files_the_library_wrote_with_metadata(tmp_path):
    arrays = {"x": np.arange(10, dtype=np.float16), "y": np.zeros((2, 2), np.int64)}
    path = tmp_path / "lib.safetensors"
    safetensors.numpy.save_file(arrays, path, metadata={"format": "pt", "note": "hello"})
    with ckptkit.load(path) as ckpt:
        assert ckpt.format_name == "safetensors"
        assert ckpt.metadata == {"format": "pt", "note": "hello"}
        assert_same_tensors(arrays, ckpt)


def _handmade(tmp_path, header: dict, data: bytes, pad_to_8: bool = False):
    text = json.dumps(header).encode()
    if pad_to_8:
        text += b" " * (-len(text) % 8)
    path = tmp_path / "hand.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_unaligned_header_null_metadata_and_data_out_of_key_order(tmp_path):
    a = np.arange(4, dtype=np.float32)
    b = np.arange(3, dtype=np.int16)
    header = {
        "__metadata__": None,
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [6, 22]},
        "b": {"dtype": "I16", "shape": [3], "data_offsets": [0, 6]},
    }
    path = _handmade(tmp_path, header, b.tobytes() + a.tobytes())
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_len % 8 != 0  # the case under test: data starts unaligned
    with ckptkit.load(path) as ckpt:
        assert ckpt.names() == ["a", "b"]
        assert ckpt.metadata == {}
        assert_same_tensors({"a": a, "b": b}, ckpt)


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 16, "needs 16"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
        ({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "data_offsets"),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
    ],
)
def test_corrupt_headers_are_named(tmp_path, header, data, message):
    path = _handmade(tmp_path, header, data)
    with pytest.raises(CorruptCheckpointError, match=message):
        ckptkit.load(path)


def test_unknown_dtype_code(tmp_path):
    path = _handmade(tmp_path, {"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}, b"\0")
    with pytest.raises(UnsupportedError, match="Q9"):
        ckptkit.load(path)


def test_duplicate_keys_are_refused(tmp_path):
    text = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0")
    with pytest.raises(CorruptCheckpointError, match="twice"):
        ckptkit.load(path)


def test_header_length_larger_than_file(tmp_path, cli):
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", 10**7) + b'{"a": 1}')
    assert_one_line_error(cli("inspect", path), str(path), "header length")


def test_complex128_is_refused_with_the_tensor_named(tmp_path):
    with pytest.raises(UnsupportedError, match=r"'z'.*--dtype"):
        ckptkit.save({"z": np.zeros(2, np.complex128)}, tmp_path / "c.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_aliases_and_extras_survive_through_metadata(tmp_path):
    from ckptkit.core.model import MemoryCheckpoint

    w = np.arange(6, dtype=np.float32)
    ckpt = MemoryCheckpoint({"emb": w}, aliases={"head": "emb"})
    ckpt.extras = {"epoch": 3, "lr": 0.5}
    path = tmp_path / "tied.safetensors"
    ckptkit.save(ckpt, path)
    with safetensors.safe_open(path, framework="numpy") as f:
        assert list(f.keys()) == ["emb"]
    with ckptkit.load(path) as back:
        assert back.aliases == {"head": "emb"}
        assert back.extras == {"epoch": 3, "lr": 0.5}
        assert "ckptkit:aliases" not in back.metadata


@pytest.mark.parametrize("path", realworld_files("*.safetensors"), ids=lambda p: p.name)
def test_real_files_read_as_the_library_reads_them(tmp_path, path):
    import ml_dtypes  # noqa: F401 - lets the library's numpy loader handle bf16

    with safetensors.safe_open(path, framework="numpy") as f:
        want = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
        want_meta = f.metadata() or {}
    with ckptkit.load(path) as ckpt:
        assert_same_tensors(want, ckpt)
        assert ckpt.metadata == want_meta
    out = tmp_path / "again.safetensors"
    receipt = ckptkit.convert(path, out)
    assert receipt.verified
    with ckptkit.load(out) as back:
        assert_same_tensors(want, back)


def test_packed_fp4_tensor_is_listed_apart_and_the_rest_converts(tmp_path, cli):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    src = tmp_path / "fp4.safetensors"
    packed = torch.arange(8, dtype=torch.uint8).reshape(4, 2).view(torch.float4_e2m1fn_x2)
    save_file({"w4": packed, "bias": torch.arange(3, dtype=torch.float32)}, src)  # w4 is F4 [4, 4]
    with ckptkit.load(src) as ckpt:
        assert ckpt.names() == ["bias"]
        assert "F4" in ckpt.unsupported["w4"] and "[4, 4]" in ckpt.unsupported["w4"]
    r = cli("verify", src)
    assert r.code == 1 and "tensor.unsupported" in r.stdout and "safetensors.entry" not in r.stdout
    r = cli("convert", src, tmp_path / "out.safetensors")
    assert_one_line_error(r, "w4", "--exclude")
    out = tmp_path / "out.safetensors"
    assert cli("convert", src, out, "--exclude", "w4").code == 0
    np.testing.assert_array_equal(safetensors.numpy.load_file(out)["bias"], np.arange(3, dtype=np.float32))


def test_a_dtype_that_is_not_a_string_is_named_not_a_type_error(tmp_path, cli):
    header = json.dumps({"a": {"dtype": ["F4"], "shape": [2], "data_offsets": [0, 8]}}).encode()
    src = tmp_path / "odd.safetensors"
    src.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    assert_one_line_error(cli("inspect", src), "tensor 'a' has dtype ['F4'], which ckptkit does not know")


def _raw(tmp_path, text: bytes, data: bytes = b"", length: int | None = None):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


_W = '"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'


@pytest.mark.parametrize(
    ("text", "data", "length", "check", "error"),
    [
        (b"{}", b"", 10**6, "safetensors.header-length", CorruptCheckpointError),
        (b"{not json}", b"", None, "safetensors.header-json", CorruptCheckpointError),
        (b"[1, 2]", b"", None, "safetensors.header-json", CorruptCheckpointError),
        (("{" + _W + "," + _W + "}").encode(), bytes(8), None, "safetensors.duplicate-key", CorruptCheckpointError),
        (b'{"__metadata__":{"k":1}}', b"", None, "safetensors.metadata", CorruptCheckpointError),
        (b'{"__metadata__":["x"]}', b"", None, "safetensors.metadata", CorruptCheckpointError),
        (b'{"w":{"dtype":"F32","shape":[2]}}', b"", None, "safetensors.entry", CorruptCheckpointError),
        (b'{"w":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}', bytes(8), None, "safetensors.entry",
         UnsupportedError),
        (("{" + _W + "}").encode(), bytes(5), None, "safetensors.truncated", CorruptCheckpointError),
    ],
    ids=["length", "json", "not-object", "duplicate", "metadata-value", "metadata-list", "entry", "dtype",
         "truncated"],
)  # fmt: skip
def test_reading_and_verify_report_a_fault_alike(tmp_path, text, data, length, check, error):
    """One header parser: reading raises the first problem, verify reports it with the same words."""
    from ckptkit.formats.safetensors.verify import check_structure

    path = _raw(tmp_path, text, data, length)
    with pytest.raises(error) as raised:
        ckptkit.load(path, format="safetensors")
    findings = check_structure(path)
    assert [(f.check, f.message) for f in findings][:1] == [(check, raised.value.message)]


def test_verify_reports_what_reading_tolerates(tmp_path):
    """Leading white space, empty non-object metadata and stray bytes: readers accept them, verify names them."""
    from ckptkit.formats.safetensors.verify import check_structure

    path = _raw(tmp_path, (' {"__metadata__":[],' + _W + "}").encode(), bytes(12))
    with ckptkit.load(path, format="safetensors") as ckpt:
        assert ckpt.names() == ["w"] and ckpt.metadata == {}
    assert [f.check for f in check_structure(path)] == [
        "safetensors.header-json", "safetensors.metadata", "safetensors.hole"
    ]  # fmt: skip
