import hashlib
import json

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptkit
from ckptkit.core.dtypes import DTYPES, by_name
from ckptkit.core.model import MemoryCheckpoint
from ckptkit.core.values import ValueChecker
from ckptkit.hashing import scan as scan_module
from ckptkit.hashing.manifest import Manifest, build_manifest
from ckptkit.hashing.scan import scan
from ckptkit.hashing.tensors import file_sha256, root_hash, tensor_header
from tests.conftest import FIXTURES, assert_one_line_error, realworld_files
from tests.helpers import sample_array


def _reference_hash(dtype_name: str, array: np.ndarray) -> str:
    """The documented encoding, spelled out independently of ckptkit.hashing.tensors."""
    dims = ",".join(str(d) for d in array.shape)
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    return hashlib.sha256(f"ckptkit-tensor-v1\n{dtype_name}\n[{dims}]\n".encode() + data).hexdigest()


@pytest.mark.parametrize("dtype", [d.name for d in DTYPES])
def test_tensor_hash_is_the_documented_encoding(dtype):
    arrays = {"t": sample_array(dtype, (3, 5)), "scalar": sample_array(dtype, ()), "empty": sample_array(dtype, (0, 4))}
    result = scan(MemoryCheckpoint(arrays), hashes=True)
    for name, array in arrays.items():
        assert result.tensors[name].sha256 == _reference_hash(dtype, array), name


def test_header_distinguishes_scalar_empty_and_dtype():
    f32 = by_name("float32")
    assert tensor_header(f32, ()) == b"ckptkit-tensor-v1\nfloat32\n[]\n"
    assert tensor_header(f32, (0,)) != tensor_header(f32, ())
    assert tensor_header(by_name("int32"), (2,)) != tensor_header(f32, (2,))


def test_same_bytes_other_dtype_or_shape_hash_differently():
    a = np.arange(6, dtype=np.float32)
    ckpt = MemoryCheckpoint({"a": a, "b": a.view(np.int32), "c": a.reshape(2, 3)})
    hashes = {r.sha256 for r in scan(ckpt, hashes=True).tensors.values()}
    assert len(hashes) == 3


def test_big_endian_arrays_hash_as_little_endian():
    a = np.arange(5, dtype="<f4")
    big = MemoryCheckpoint({"a": a.astype(">f4")})
    assert scan(big, hashes=True).tensors["a"].sha256 == _reference_hash("float32", a)


def test_root_ignores_order_and_names():
    assert root_hash(["b" * 64, "a" * 64]) == root_hash(["a" * 64, "b" * 64])
    assert root_hash(["a" * 64]) != root_hash(["a" * 64, "a" * 64])
    expected = hashlib.sha256(b"ckptkit-root-v1\n" + b"a" * 64 + b"\n" + b"b" * 64 + b"\n").hexdigest()
    assert root_hash(["b" * 64, "a" * 64]) == expected


def test_manifest_of_a_file_the_library_wrote(tmp_path):
    arrays = {"w": np.arange(12, dtype=np.float16).reshape(3, 4), "b": np.ones(3, np.int64)}
    path = tmp_path / "lib.safetensors"
    safetensors.numpy.save_file(arrays, path)
    m = build_manifest(path)
    assert m.format == "safetensors"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.files == {"lib.safetensors": {"sha256": digest, "bytes": path.stat().st_size}}
    assert {n: e.sha256 for n, e in m.tensors.items()} == {
        "w": _reference_hash("float16", arrays["w"]),
        "b": _reference_hash("int64", arrays["b"]),
    }
    assert m.root == root_hash(e.sha256 for e in m.tensors.values())


def test_same_tensors_in_another_layout_hash_alike(tmp_path):
    arrays = {"x": sample_array("bfloat16", (4, 4)), "y": sample_array("int8", (7,)), "z": sample_array("float64", ())}
    lib = tmp_path / "lib.safetensors"
    safetensors.numpy.save_file(arrays, lib, metadata={"note": "other header"})
    ours = tmp_path / "ours.safetensors"
    ckptkit.save({k: arrays[k] for k in reversed(list(arrays))}, ours)
    assert lib.read_bytes() != ours.read_bytes()
    a, b = build_manifest(lib), build_manifest(ours)
    assert a.tensors == b.tensors and a.root == b.root
    assert a.files["lib.safetensors"]["sha256"] != b.files["ours.safetensors"]["sha256"]


def test_aliases_are_listed_with_their_tensor_hash(tmp_path):
    w = np.arange(6, dtype=np.float32)
    path = tmp_path / "tied.safetensors"
    ckptkit.save(MemoryCheckpoint({"emb": w}, aliases={"head": "emb"}), path)
    m = build_manifest(path)
    assert m.tensors["head"].sha256 == m.tensors["emb"].sha256
    assert m.tensors["head"].alias_of == "emb"
    untied = tmp_path / "untied.safetensors"
    ckptkit.save({"emb": w, "head": w.copy()}, untied)
    assert build_manifest(untied).root == m.root


def test_manifest_json_round_trip(tmp_path):
    m = build_manifest(FIXTURES / "mlp_fp32.safetensors")
    path = tmp_path / "m.json"
    path.write_text(json.dumps(m.to_dict()))
    back = Manifest.load(path)
    assert back.tensors == m.tensors and back.root == m.root and back.files == m.files


def test_without_file_hashes_the_tensors_and_root_are_the_same(tmp_path, cli):
    src = FIXTURES / "mlp_fp32.pt"
    full = build_manifest(src)
    lean = build_manifest(src, file_hashes=False)
    assert lean.tensors == full.tensors and lean.root == full.root
    assert lean.files == {"mlp_fp32.pt": {"bytes": src.stat().st_size}}
    assert full.files["mlp_fp32.pt"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()

    manifest = tmp_path / "lean.json"
    r = cli("hash", src, "--no-file-hashes", "-o", manifest)
    assert r.code == 0, r.stderr
    data = json.loads(manifest.read_text())
    assert data["root"] == full.root and "sha256" not in data["files"]["mlp_fp32.pt"]
    converted = tmp_path / "mlp.safetensors"
    ckptkit.convert(src, converted)
    assert cli("verify", converted, "--manifest", manifest).code == 0


def test_file_hash_matches_hashlib(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 3 * 1024 * 1024 + 17, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(empty) == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_threads_give_the_same_result(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(scan_module, "SPLIT_BYTES", 4096)  # split value checks of these small tensors too
    arrays = {f"t{i}": sample_array("float16", (100 + 37 * i, 33), seed=i) for i in range(6)}
    path = tmp_path / "x.safetensors"
    ckptkit.save(arrays, path)
    with ckptkit.load(path) as ckpt:
        hashed = scan(ckpt, hashes=True, values=True, workers=workers)
        split = scan(ckpt, values=True, workers=workers)
    for name, a in arrays.items():
        assert hashed.tensors[name].sha256 == _reference_hash("float16", a)
        want_nan = int(np.isnan(a.astype(np.float32)).sum())
        want_inf = int(np.isinf(a.astype(np.float32)).sum())
        for r in (hashed.tensors[name], split.tensors[name]):
            assert r.values is not None and (r.values.nan, r.values.inf) == (want_nan, want_inf)


_FLOATS = [d.name for d in DTYPES if d.kind in "fc"]


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(_FLOATS), raw=st.binary(min_size=0, max_size=256))
def test_nan_inf_and_zero_counts_match_numpy_on_any_bits(dtype, raw):
    dt = by_name(dtype)
    raw = raw[: len(raw) // dt.itemsize * dt.itemsize]
    values = np.frombuffer(raw, dt.numpy)
    checker = ValueChecker(dt)
    checker.update(memoryview(raw))
    as_wide = values.astype(np.complex128 if dt.kind == "c" else np.float64)
    assert checker.counts.nan == int(np.isnan(as_wide).sum())
    assert checker.counts.inf == int(np.isinf(as_wide).sum())
    assert checker.counts.nonzero == bool(np.count_nonzero(as_wide))


def test_negative_zero_counts_as_zero():
    checker = ValueChecker(by_name("bfloat16"))
    checker.update(memoryview(np.array([-0.0, 0.0], ml_dtypes.bfloat16).tobytes()))
    assert not checker.counts.nonzero


def test_cli_hash_writes_a_manifest_and_refuses_to_overwrite(cli, tmp_path):
    src = FIXTURES / "tied_lm_fp32.safetensors"
    out = tmp_path / "m.json"
    r = cli("hash", src, "-o", out)
    assert r.code == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["schema"] == "ckptkit.hashing.manifest/1" and data["root"] in r.stdout
    assert data["tensors"] == {n: e.to_dict() for n, e in build_manifest(src).tensors.items()}
    assert_one_line_error(cli("hash", src, "-o", out), str(out), "--force")
    printed = cli("hash", src)
    assert json.loads(printed.stdout)["root"] == data["root"]


def test_cli_hash_of_a_missing_file(cli, tmp_path):
    assert_one_line_error(cli("hash", tmp_path / "nope.safetensors"), "nope.safetensors", "no such file")


@pytest.mark.parametrize("path", realworld_files("*.safetensors"), ids=lambda p: p.name)
def test_real_files_hash_as_the_library_reads_them(path):
    with safetensors.safe_open(path, framework="numpy") as f:
        want = {k: _reference_hash(by_name_of(f.get_slice(k).get_dtype()), f.get_tensor(k)) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    assert {n: e.sha256 for n, e in build_manifest(path).tensors.items()} == want


def by_name_of(code: str) -> str:
    from ckptkit.core.dtypes import by_safetensors

    dt = by_safetensors(code)
    assert dt is not None
    return dt.name


def test_scan_hands_out_the_largest_job_first(tmp_path):
    path = tmp_path / "m.safetensors"
    arrays = {"small": np.ones(10, np.float32), "big": np.ones(1000, np.float32), "mid": np.ones(100, np.float32)}
    ckptkit.save(arrays, path)
    seen: list[int] = []
    with ckptkit.load(path) as ckpt:
        result = scan(ckpt, hashes=True, files=[path], workers=1, progress=seen.append)
    assert seen == sorted([path.stat().st_size, 4000, 400, 40], reverse=True)
    assert set(result.files) == {path} and all(r.sha256 for r in result.tensors.values())
    with ckptkit.load(path) as ckpt:  # on threads: the same hashes
        assert scan(ckpt, hashes=True, files=[path], workers=2).tensors == result.tensors
