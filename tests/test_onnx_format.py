import json
import os
from collections import Counter

import numpy as np
import onnx
import pytest
import safetensors
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

import ckptkit
from ckptkit.core.dtypes import DTYPES
from ckptkit.core.errors import CorruptCheckpointError, UnsafeCheckpointError
from ckptkit.formats.onnx import weights
from ckptkit.verify import verify
from tests.conftest import FIXTURES, assert_one_line_error, realworld_files, run_cli
from tests.helpers import assert_same_tensors, sample_array, write_read
from tests.onnx_util import check_and_run, onnx_bytes, save_model, session

ONNX_FIXTURES = sorted((FIXTURES / "onnx").glob("*.onnx"))
ORT_LOADABLE = [d.name for d in DTYPES if not d.name.startswith("float6")]  # float6 needs IR 14


def _subgraphs(attr):
    # By the fields present, not by attr.type: a damaged file may say one and hold the other.
    return ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)


def tensor_protos(model):
    """(name, TensorProto) of every initializer and Constant value, in every graph of the model."""
    found = []

    def walk(graph):
        found.extend((t.name, t) for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == "Constant" and attr.name == "value":
                    found.append((node.output[0] if node.output else node.name, attr.t))
                for g in _subgraphs(attr):
                    walk(g)

    walk(model.graph)
    return found


def onnx_reference(path):
    """Every initializer and Constant value as the onnx package reads them, by (scope-free) name.

    Tensors the onnx package cannot turn into arrays (an unknown data type) are left out.
    """
    found = {}
    for name, t in tensor_protos(onnx.load(str(path))):
        try:
            array = numpy_helper.to_array(t, base_dir=str(path.parent))
        except (KeyError, ValueError, TypeError):
            continue
        found.setdefault(name, []).append(array)
    return found


@pytest.mark.parametrize("dtype", ORT_LOADABLE)
def test_round_trip_every_dtype_checker_and_onnxruntime(tmp_path, dtype):
    arrays = {
        "w": sample_array(dtype, (3, 5)),
        "odd": sample_array(dtype, (7,), seed=1),
        "empty": sample_array(dtype, (0, 2)),
        "scalar": sample_array(dtype, ()),
        "returned": sample_array("float32", (2,)),  # a complex-only model has no outputs to run
    }
    path = tmp_path / "w.onnx"
    write_read(arrays, path)
    check_and_run(path, arrays)
    model = onnx.load(str(path))
    assert (model.ir_version, model.opset_import[0].version) <= (13, 21)
    for t in model.graph.initializer:  # the onnx package reads the same values
        assert numpy_helper.to_array(t).tobytes() == arrays[t.name].tobytes()


@pytest.mark.parametrize("dtype", ["float6_e2m3fn", "float6_e3m2fn"])
def test_float6_written_for_ir_14_with_a_note(tmp_path, dtype):
    arrays = {"w": sample_array(dtype, (5,))}
    path = tmp_path / "w.onnx"
    receipt = ckptkit.save(arrays, path)
    assert any("IR version 14" in n for n in receipt.notes)
    onnx.checker.check_model(str(path), full_check=True)
    assert numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0]).tobytes() == arrays["w"].tobytes()
    write_read(arrays, tmp_path / "again.onnx")


@pytest.mark.parametrize("path", ONNX_FIXTURES, ids=lambda p: p.name)
def test_fixtures_read_as_the_onnx_package_reads_them(path):
    reference = onnx_reference(path)
    with ckptkit.load(path) as ckpt:
        assert len(ckpt) > 0
        for ti in ckpt.tensor_infos():
            got = ckpt.read_tensor(ti.name)
            assert got.shape == ti.shape and got.dtype == ti.dtype.numpy
            candidates = reference.get(ti.name.rsplit("/", 1)[-1])
            if candidates is None:  # value_float / value_ints Constants: the onnx package has no array for them
                assert "Constant" in ti.location
                continue
            assert any(c.dtype == got.dtype and c.tobytes() == got.tobytes() for c in candidates), ti.name


TYPED_FIELD = {
    "float": "float_data", "double": "double_data", "int64": "int64_data", "complex64": "float_data",
    "complex128": "double_data", "uint32": "uint64_data", "uint64": "uint64_data",
}  # fmt: skip


def test_every_dtype_fixture_raw_and_typed_agree():
    with ckptkit.load(FIXTURES / "onnx" / "every_dtype_raw_and_typed.onnx") as ckpt:
        raw = [n for n in ckpt.names() if n.startswith("raw_")]
        assert len(raw) == 25
        for name in raw:
            typed = "typed_" + name[4:]
            assert ckpt.read_tensor(name).tobytes() == ckpt.read_tensor(typed).tobytes(), name
            field = TYPED_FIELD.get(name[4:], "int32_data")
            assert ckpt.info(typed).location == f"initializer, inline ({field})"
        assert ckpt.info("raw_int4").dtype.name == "int4"
        assert ckpt.read_tensor("raw_int4").shape == (7,)  # unpacked to the logical shape
        assert ckpt.metadata["onnx:not_read"] == "labels (string)"


def test_subgraphs_constants_names_and_locations():
    with ckptkit.load(FIXTURES / "onnx" / "if_loop_subgraphs_and_constants.onnx") as ckpt:
        loc = {ti.name: ti.location for ti in ckpt.tensor_infos()}
        assert loc == {
            "top.weight": "initializer, inline",
            "trip": "Constant node 'trip_const', inline (value_int)",
            "axes": "Constant node 'axes_const', inline (value_ints)",
            "weights_f": "Constant node 'floats_const', inline (value_floats)",
            "w_shared": "initializer in If 'choose' else_branch, inline",
            "else_c": "Constant node 'else_const' in If 'choose' else_branch, inline",
            "choose/then_branch/w_shared": "initializer in If 'choose' then_branch, inline",
            "then_c": "Constant node 'then_const' in If 'choose' then_branch, inline",
            "step": "Constant node 'step_const' in Loop 'repeat' body, inline (value_float)",
        }
        assert ckpt.read_tensor("trip").tolist() == 4 and ckpt.read_tensor("trip").dtype == np.int64
        assert ckpt.read_tensor("weights_f").tolist() == [0.25, -1.5]
        assert ckpt.read_tensor("step").shape == ()
        assert ckpt.read_tensor("then_c").tolist() == [1.0, 1.0, 1.0]
        assert ckpt.metadata["onnx:not_read"] == "words (Constant strings)"
        assert ckpt.metadata["onnx:inputs"] == "flag: bool []"
    with ckptkit.load(FIXTURES / "onnx" / "if_loop_subgraphs_and_constants.onnx", no_constants=True) as ckpt:
        assert ckpt.names() == ["top.weight", "w_shared", "choose/then_branch/w_shared"]


def test_inspect_shows_opset_producer_io_and_where_tensors_live():
    result = run_cli("inspect", FIXTURES / "onnx" / "external_data.onnx")
    assert result.code == 0, result.stderr
    out = result.stdout
    assert "onnx:opset = ai.onnx 17" in out
    assert "onnx:producer = onnx.helper" in out
    assert "onnx:inputs = x: float32 [batch, 2, 4, 4]" in out
    assert "onnx:outputs = y: float32 [batch, 3]" in out
    assert "onnx:external_data = external_data.onnx.data" in out
    assert "initializer, in external_data.onnx.data at offset 0" in out
    assert "conv.bias" in out and "initializer, inline" in out
    report = json.loads(run_cli("inspect", "--json", FIXTURES / "onnx" / "if_loop_subgraphs_and_constants.onnx").stdout)
    assert {t["name"]: t["location"] for t in report["tensors"]}["step"].startswith(
        "Constant node 'step_const' in Loop"
    )


def test_external_data_is_read_lazily(tmp_path):
    arrays = {"a": np.arange(2048, dtype=np.float32), "b": np.ones((64, 64), np.float16)}
    path = tmp_path / "m.onnx"
    ckptkit.save(arrays, path, external_data=True)
    data = tmp_path / "m.onnx.data"
    with ckptkit.load(path) as ckpt:
        assert ckpt.total_bytes == arrays["a"].nbytes + arrays["b"].nbytes
        # Change the data file after the model was opened: what is read is what is there now.
        with open(data, "r+b") as f:
            f.seek(ckpt.raw_extent("a").offset)
            f.write(np.full(2048, 7, np.float32).tobytes())
        assert (ckpt.read_tensor("a") == 7).all()
        assert (ckpt.read_tensor("b") == 1).all()


def test_external_data_written_page_aligned_in_one_file(tmp_path):
    arrays = {f"t{i}": sample_array("float32", (300 + i,), seed=i) for i in range(5)}
    arrays["tiny"] = np.arange(3, dtype=np.int64)
    path = tmp_path / "m.onnx"
    receipt = ckptkit.save(arrays, path, external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    assert receipt.files == [str(tmp_path / "m.onnx.data"), str(path)]
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        entries = {e.key: e.value for e in t.external_data}
        if t.name == "tiny":
            assert not entries  # under 1 KB: inline
            continue
        assert entries["location"] == "m.onnx.data" and int(entries["offset"]) % 4096 == 0
    check_and_run(path, arrays)
    with ckptkit.load(path) as ckpt:
        assert_same_tensors(arrays, ckpt)
        assert ckpt.raw_extent("t0").path == (tmp_path / "m.onnx.data").resolve()


def test_past_the_protobuf_limit_external_data_is_automatic(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "PROTOBUF_LIMIT", 10_000)
    arrays = {"big": sample_array("float32", (4000,)), "small": sample_array("int8", (10,))}
    receipt = ckptkit.save(arrays, tmp_path / "m.onnx")
    assert any("2 GiB" in n for n in receipt.notes)
    assert (tmp_path / "m.onnx.data").stat().st_size == 16000
    check_and_run(tmp_path / "m.onnx", arrays)


def test_metadata_aliases_and_extras_in_metadata_props(tmp_path):
    w = sample_array("float32", (4, 4))
    src = ckptkit.load  # keep the flake-free name
    ckpt = ckptkit.core.model.MemoryCheckpoint({"w": w}, {"note": "fine-tuned", "onnx:opset": "stale"}, {"tied": "w"})
    ckpt.extras = {"epoch": 3}
    path = tmp_path / "m.onnx"
    ckptkit.save(ckpt, path)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["note"] == "fine-tuned" and "onnx:opset" not in props
    with src(path) as back:
        assert back.aliases == {"tied": "w"}
        assert back.extras == {"epoch": 3}
        assert back.metadata["note"] == "fine-tuned"
        assert back.metadata["onnx:opset"] == "ai.onnx 21"
        assert back.metadata["onnx:producer"].startswith("ckptkit ")


def test_onnx_to_safetensors_to_onnx_is_bit_exact(tmp_path):
    src = FIXTURES / "onnx" / "every_dtype_raw_and_typed.onnx"
    st_dtypes = {d.name for d in DTYPES if d.safetensors}
    with ckptkit.load(src) as ckpt:
        keep = [ti.name for ti in ckpt.tensor_infos() if ti.dtype.name in st_dtypes]
        originals = {n: np.array(ckpt.read_tensor(n)) for n in keep}
    mid = tmp_path / "mid.safetensors"
    ckptkit.convert(src, mid, select=[n for n in keep])
    back = tmp_path / "back.onnx"
    ckptkit.convert(mid, back)
    with ckptkit.load(back) as ckpt:
        assert_same_tensors(originals, ckpt)
    with safetensors.safe_open(mid, framework="np") as f:
        assert f.get_tensor("raw_float").tobytes() == originals["raw_float"].tobytes()


@pytest.mark.parametrize("path", ONNX_FIXTURES + realworld_files("*.onnx"), ids=lambda p: p.name)
def test_fixtures_and_realworld_round_trip(tmp_path, path):
    with ckptkit.load(path) as ckpt:
        originals = {n: np.array(ckpt.read_tensor(n)) for n in ckpt.names()}
    out = tmp_path / "weights.onnx"
    receipt = ckptkit.convert(path, out)
    assert receipt.verified
    with ckptkit.load(out) as ckpt:
        assert_same_tensors(originals, ckpt)
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out), load_external_data=False)
    if model.ir_version <= 13:
        session(out)


def test_convert_cli_with_external_data_flag_and_no_constants(tmp_path):
    src = tmp_path / "src.onnx"
    w = sample_array("float32", (64, 64))
    nodes = [
        helper.make_node("Constant", [], ["shift"], value=numpy_helper.from_array(np.ones(64, np.float32))),
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "shift"], ["y"]),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 64]) for n in ("x", "y")]
    save_model(src, nodes, io[:1], io[1:], {"w": w})
    out = tmp_path / "w.onnx"
    result = run_cli("convert", src, out, "--external-data", "--no-constants")
    assert result.code == 0, result.stderr
    assert "verified" in result.stdout
    with ckptkit.load(out) as b:
        assert b.names() == ["w"]
        assert_same_tensors({"w": w}, b)
        assert b.info("w").location == "initializer, in w.onnx.data at offset 0"
    check_and_run(out, {"w": w})


def test_sniffing_tells_onnx_from_other_formats(tmp_path):
    from ckptkit import registry

    onnx_path = FIXTURES / "onnx" / "conv_bn_ln_gemm.onnx"
    assert registry.detect(onnx_path).name == "onnx"
    st = tmp_path / "x.safetensors"
    ckptkit.save({"a": np.zeros(3, np.float32)}, st)
    assert registry.detect(st).name == "safetensors"
    fmt = registry.get("onnx")
    head = onnx_path.read_bytes()[:4096]
    for other in (st.read_bytes()[:4096], b"PK\x03\x04" + bytes(100), b"\x89HDF\r\n\x1a\n" + bytes(100), b"\x08" * 50):
        assert not fmt.sniff(other, tmp_path / "x")
    assert fmt.sniff(head, onnx_path)
    assert fmt.sniff(head[:40], onnx_path)  # the graph runs past what was read


def _model_with_external(tmp_path, location, offset="0", length="64"):
    t = numpy_helper.from_array(np.zeros(16, np.float32), "w")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        entry = t.external_data.add()
        entry.key, entry.value = k, v
    g = helper.make_graph([], "g", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, [16])], initializer=[t])
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "/etc/passwd", "link.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(bytes(64))
    path = _model_with_external(tmp_path, location)
    (path.parent / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(UnsafeCheckpointError, match=r"outside|absolute"):
        ckptkit.load(path)
    out = tmp_path / "out.safetensors"
    result = run_cli("convert", path, out)
    assert_one_line_error(result, "m.onnx", "'w'", repr(location))
    assert not out.exists()
    assert not list(tmp_path.glob(".ckptkit-tmp-*"))


def test_external_data_inside_the_folder_through_subfolder_and_symlink_is_read(tmp_path):
    path = _model_with_external(tmp_path, "sub/../data/w.bin")
    (path.parent / "data").mkdir()
    (path.parent / "data" / "w.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    with ckptkit.load(path) as ckpt:
        assert ckpt.read_tensor("w").tolist() == list(range(16))


def test_missing_or_short_external_data_is_named(tmp_path):
    path = _model_with_external(tmp_path, "weights.bin")
    result = run_cli("inspect", path)
    assert_one_line_error(result, "m.onnx", "weights.bin", "missing")
    (path.parent / "weights.bin").write_bytes(bytes(40))
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        ckptkit.load(path)


def test_protobuf_garbage_and_truncated_models_are_one_line_errors(tmp_path):
    rng = np.random.default_rng(5)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert_one_line_error(run_cli("convert", garbage, tmp_path / "o.safetensors"), "garbage.onnx")
    whole = (FIXTURES / "onnx" / "conv_bn_ln_gemm.onnx").read_bytes()
    for cut in (30, len(whole) // 2, len(whole) - 3):
        bad = tmp_path / f"cut{cut}.onnx"
        bad.write_bytes(whole[:cut])
        with pytest.raises(CorruptCheckpointError, match=f"cut{cut}.onnx: .*truncated|ends inside"):
            ckptkit.convert(bad, tmp_path / "o.safetensors", from_format="onnx")
    out = tmp_path / "cut.safetensors"
    assert_one_line_error(run_cli("convert", bad, out), bad.name, "truncated")
    assert not out.exists() and not list(tmp_path.glob(".ckptkit-tmp-*"))
    # Valid protobuf framing, nonsense tensor: the declared shape needs more bytes than there are.
    t = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    t.dims[0] = 400
    g = helper.make_graph([], "g", [], [], initializer=[t])
    bad = tmp_path / "short_raw.onnx"
    bad.write_bytes(helper.make_model(g).SerializeToString())
    with pytest.raises(CorruptCheckpointError, match=r"short_raw\.onnx: tensor 'w': raw_data holds 16 bytes"):
        ckptkit.load(bad)


def test_complex_tensors_are_kept_but_not_returned(tmp_path):
    arrays = {"c": sample_array("complex64", (3,)), "r": sample_array("float32", (3,))}
    path = tmp_path / "m.onnx"
    receipt = ckptkit.save(arrays, path)
    assert any("complex" in n for n in receipt.notes)
    write_read(arrays, tmp_path / "again.onnx")
    sess = session(path)
    assert [o.name for o in sess.get_outputs()] == ["r"]
    assert sess.run(None, {})[0].tobytes() == onnx_bytes(arrays["r"])


def test_models_written_by_onnx_with_int4_typed_and_bool_constants(tmp_path):
    w4 = np.array([[-8, 7, 3], [0, -1, 5]], dtype="int8")
    inits = {"flags": np.array([True, False, True])}
    path = tmp_path / "m.onnx"
    const = helper.make_node(
        "Constant", [], ["q"], value=helper.make_tensor("q", TensorProto.INT4, [2, 3], w4.reshape(-1).tolist())
    )
    save_model(path, [const], [], [helper.make_tensor_value_info("q", TensorProto.INT4, [2, 3])], inits, opset=21)
    with ckptkit.load(path) as ckpt:
        assert ckpt.read_tensor("q").astype(np.int8).tolist() == w4.tolist()
        assert ckpt.read_tensor("flags").tolist() == [True, False, True]
        assert ckpt.raw_extent("q") is None  # packed on disk, unpacked in memory


def test_kernel_copy_refused_across_file_systems_falls_back_to_the_buffer(tmp_path, monkeypatch):
    src = tmp_path / "src.safetensors"
    arrays = {"a": sample_array("float32", (5000,)), "b": sample_array("bfloat16", (3000,), seed=2)}
    ckptkit.save(arrays, src)
    calls = []

    def refuse(*args):
        calls.append(args)
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    ckptkit.convert(src, tmp_path / "m.onnx", options={"external_data": True})
    assert calls  # the kernel copy was tried, refused, and the buffer finished the job
    with ckptkit.load(tmp_path / "m.onnx") as ckpt:
        assert_same_tensors(arrays, ckpt)


SUB_BYTE = {TensorProto.INT4, TensorProto.UINT4, TensorProto.INT2, TensorProto.UINT2, TensorProto.FLOAT4E2M1,
            TensorProto.FLOAT6E2M3, TensorProto.FLOAT6E3M2}  # fmt: skip


def byte_regions(original: bytes) -> tuple[set[int], set[int]]:
    """Where tensors lie in a model, found with the onnx package: the bytes of raw_data payloads
    (any value is a valid element there), and every other byte of the tensors' own messages."""
    payload: set[int] = set()
    fields: set[int] = set()
    for name, t in tensor_protos(onnx.ModelProto.FromString(original)):
        encoded = t.SerializeToString()
        at = original.find(encoded)
        assert at >= 0 and original.find(encoded, at + 1) < 0, name
        whole = set(range(at, at + len(encoded)))
        data: set[int] = set()
        if t.raw_data and t.data_type not in SUB_BYTE:  # packed sub-byte values have spare bits
            start = original.find(t.raw_data, at, at + len(encoded))
            data = set(range(start, start + len(t.raw_data)))
        payload |= data
        fields |= whole - data
    return payload, fields


def _read_with_ckptkit(path):
    try:
        with ckptkit.load(path, format="onnx") as ckpt:
            return {ti.name: (ti.location, np.array(ckpt.read_tensor(ti.name))) for ti in ckpt.tensor_infos()}
    except ckptkit.CkptkitError:
        return None


def _protobuf_parses(data: bytes) -> bool:
    try:
        onnx.ModelProto.FromString(data)
    except DecodeError:
        return False
    return True


@pytest.mark.parametrize("name", ["if_loop_subgraphs_and_constants.onnx", "every_dtype_raw_and_typed.onnx"])
def test_corrupted_bytes_are_refused_or_read_as_the_onnx_package_reads_them(tmp_path, name):
    """300 seeded edits of 1-3 bytes, judged by where they land and whether protobuf still parses the file.

    - Only inside raw_data payloads: read, with the changed values (as the onnx package reads them).
    - Inside the tensors' own messages, and protobuf cannot parse the file: refused with a ckptkit error.
    - Protobuf parses the file: refused, or read with every tensor as the onnx package reads it.
    - Elsewhere, and protobuf cannot parse it: refused; or, where the damage lies in parts a lazy
      reader skips (a subgraph's input types, a node's other attributes), read, and then
      ``ckptkit verify`` reports the model (onnx.checker cannot parse it).
    Any other exception fails the test where it is raised.
    """
    original = (FIXTURES / "onnx" / name).read_bytes()
    payload, tensor_fields = byte_regions(original)
    rng = np.random.default_rng(11)
    path = tmp_path / "fuzzed.onnx"
    outcomes = Counter()
    for number in range(300):
        data = bytearray(original)
        where = set()
        for _ in range(rng.integers(1, 4)):
            at = int(rng.integers(0, len(data)))
            data[at] = rng.integers(0, 256)
            where.add(at)
        path.write_bytes(data)
        region = "payload" if where <= payload else "tensor" if where <= payload | tensor_fields else "other"
        parses = _protobuf_parses(bytes(data))
        got = _read_with_ckptkit(path)
        outcomes[region, parses, "read" if got is not None else "refused"] += 1
        edit = f"edit {number} at bytes {sorted(where)}"
        if region == "payload":
            assert got is not None, f"{edit}: only tensor values changed, yet the model was refused"
        if region == "tensor" and not parses:
            assert got is None, f"{edit}: a tensor message protobuf cannot parse was read"
        if got is None:
            continue
        if parses:
            reference = onnx_reference(path)
            for tensor, (location, array) in got.items():
                candidates = reference.get(tensor.rsplit("/", 1)[-1])
                if candidates is None:  # value_float / value_ints Constants: no TensorProto to compare with
                    assert "Constant" in location, (edit, tensor)
                    continue
                assert any(c.dtype == array.dtype and c.tobytes() == array.tobytes() for c in candidates), (
                    f"{edit}: tensor {tensor!r} reads otherwise than the onnx package reads it"
                )
        else:
            assert verify([path]).exit_code == 1, f"{edit}: neither reading nor verify noticed the damage"
    # Both answers occur, so a reader that refused every file, or read every one, fails above.
    assert outcomes["payload", True, "read"] > 0
    assert outcomes["tensor", False, "refused"] > 0
