"""TensorFlow checkpoints: what TensorFlow writes is read exactly, and what ckptkit writes TensorFlow reads.

TensorFlow itself runs only in subprocesses (tests/tf_reference.py): once per session to write the
reference checkpoints and dump what it reads from them, and once to load what ckptkit wrote.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptkit
from ckptkit.core.dtypes import by_name
from ckptkit.core.errors import CorruptCheckpointError, UnsupportedError, UsageError
from ckptkit.formats.tensorflow.read import KEYS_META, TensorFlowCheckpoint
from ckptkit.formats.tensorflow.table import Table, TableBuilder
from ckptkit.io import crc32c
from ckptkit.verify import verify
from tests.conftest import REPO, assert_one_line_error
from tests.helpers import sample_array
from tests.tf_bundles import write_bundle

HAVE_TF = importlib.util.find_spec("tensorflow") is not None
needs_tf = pytest.mark.skipif(not HAVE_TF, reason="tensorflow-cpu is not installed (pip install -e '.[test]')")
REFERENCE = REPO / "tests" / "tf_reference.py"


class TensorFlowProcess:
    """tests/tf_reference.py in a subprocess: TensorFlow imported once, asked one JSON line at a time."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self._stderr = open(log, "w")  # noqa: SIM115 - TensorFlow logs a lot; a pipe could fill and block it
        self.proc = subprocess.Popen(
            [sys.executable, str(REFERENCE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True,
        )  # fmt: skip

    def ask(self, request: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, self.log.read_text()[-3000:]
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self._stderr.close()


@pytest.fixture(scope="session")
def tensorflow(tmp_path_factory: pytest.TempPathFactory):
    if not HAVE_TF:
        pytest.skip("tensorflow-cpu is not installed (pip install -e '.[test]')")
    process = TensorFlowProcess(tmp_path_factory.mktemp("tf-log") / "stderr.txt")
    yield process
    process.close()


@pytest.fixture(scope="session")
def tf_files(tensorflow: TensorFlowProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoints TensorFlow wrote, and what TensorFlow reads from each (tests/tf_reference.py)."""
    root = tmp_path_factory.mktemp("tf")
    tensorflow.ask({"make": str(root)})
    return root


def dumped(folder: Path, name: str) -> dict[str, np.ndarray]:
    """What TensorFlow read from a checkpoint, by checkpoint key (string tensors left out)."""
    meta = json.loads((folder / f"{name}.json").read_text())
    raw = np.load(folder / f"{name}.npz")
    out = {}
    for key, m in meta.items():
        if m["dtype"] != "string":
            out[key] = raw[f"t{m['index']}"].view(by_name(m["dtype"]).numpy).reshape(m["shape"])
    return out


def expected(tf_files: Path, name: str) -> dict[str, np.ndarray]:
    """What TensorFlow read from the reference checkpoint ``name``."""
    return dumped(tf_files / "expected", name)


def by_key(ckpt: ckptkit.Checkpoint) -> dict[str, np.ndarray]:
    """The checkpoint's tensors by the key TensorFlow stores them under (names map back through metadata)."""
    keys = json.loads(ckpt.metadata.get(KEYS_META, "{}"))
    return {keys.get(n, n): np.array(ckpt.read_tensor(n)) for n in ckpt.names()}


def assert_exact(want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for key, value in want.items():
        assert got[key].dtype == value.dtype, (key, got[key].dtype, value.dtype)
        assert got[key].shape == value.shape, (key, got[key].shape, value.shape)
        assert got[key].tobytes() == value.tobytes(), key


# --- What TensorFlow writes ----------------------------------------------------------------------


@needs_tf
def test_keras_checkpoint_with_optimizer_state_reads_exactly_under_keras_names(tf_files):
    with ckptkit.load(tf_files / "keras") as ckpt:  # the folder: its 'checkpoint' file names ckpt-2
        assert ckpt.format_name == "tensorflow" and Path(str(ckpt.path)).name == "ckpt-2.index"
        assert ckpt.names()[:4] == ["dense/kernel", "dense/bias", "out/kernel", "out/bias"]
        assert ckpt.names()[4:] == [f"optimizer/vars/{i}" for i in range(10)]
        assert ckpt.extras == {"save_counter": 2}
        assert [s["title"] for s in ckpt.structure()["sections"]] == ["variables", "optimizer state"]
        want = expected(tf_files, "keras_2")
        assert want.pop("save_counter/.ATTRIBUTES/VARIABLE_VALUE") == 2
        assert_exact(want, by_key(ckpt))


@needs_tf
def test_a_kept_checkpoint_is_chosen_by_name_or_number(tf_files):
    want = expected(tf_files, "keras_1")
    want.pop("save_counter/.ATTRIBUTES/VARIABLE_VALUE")
    for choice in ("ckpt-1", "1"):
        with ckptkit.load(tf_files / "keras", checkpoint=choice) as ckpt:
            assert ckpt.extras == {"save_counter": 1}
            assert_exact(want, by_key(ckpt))
    with pytest.raises(UsageError, match=r"ckpt-2, ckpt-1"):
        ckptkit.load(tf_files / "keras", checkpoint="ckpt-9")


@needs_tf
def test_every_path_tensorflow_names_opens_the_same_checkpoint(tf_files):
    keras = tf_files / "keras"
    for path in (keras, keras / "ckpt-2", keras / "ckpt-2.index", keras / "ckpt-2.data-00000-of-00001",
                 keras / "checkpoint"):  # fmt: skip
        with ckptkit.load(path) as ckpt:
            assert Path(str(ckpt.path)) == keras / "ckpt-2.index", path
    for path in (tf_files / "saved_model", tf_files / "saved_model" / "saved_model.pb"):
        with ckptkit.load(path) as ckpt:
            assert ckpt.names() == ["v"]
            assert_exact(expected(tf_files, "saved_model"), by_key(ckpt))


@needs_tf
def test_tf1_saver_half_bfloat16_int64_partitioned_and_two_data_files(tf_files):
    with ckptkit.load(tf_files / "tf1") as ckpt:
        assert len(ckpt.data_files()) == 2 and ckpt.metadata == {}  # name-based: nothing to keep
        assert ckpt.info("part/w").location == "3 slices"
        assert ckpt.info("bert/embeddings/wbf16").dtype.name == "bfloat16"
        assert ckpt.raw_extent("part/w") is None and ckpt.raw_extent("bert/ids") is not None
        assert_exact(expected(tf_files, "tf1"), by_key(ckpt))


@needs_tf
def test_optimizer_slots_and_step_of_an_object_based_checkpoint(tf_files):
    with ckptkit.load(tf_files / "slots") as ckpt:
        assert ckpt.names() == ["dense/kernel", "optimizer/beta1_power", "optimizer/beta2_power",
                                "optimizer/dense/kernel/m", "optimizer/dense/kernel/v"]  # fmt: skip
        assert ckpt.extras == {"save_counter": 1, "step": 5}
        want = expected(tf_files, "slots")
        for key in ("save_counter/.ATTRIBUTES/VARIABLE_VALUE", "step/.ATTRIBUTES/VARIABLE_VALUE"):
            want.pop(key)
        assert_exact(want, by_key(ckpt))


@needs_tf
def test_every_numeric_dtype_exactly_and_string_tensors_listed_as_not_read(tf_files, tmp_path):
    with ckptkit.load(tf_files / "dtypes" / "ckpt") as ckpt:
        assert "DT_STRING" in ckpt.unsupported["dt/text"]
        assert_exact(expected(tf_files, "dtypes"), by_key(ckpt))
    with pytest.raises(UnsupportedError, match="--exclude 'dt/text'"):
        ckptkit.convert(tf_files / "dtypes" / "ckpt", tmp_path / "x.safetensors")


@needs_tf
def test_hashes_and_names_agree_with_the_keras_weights_file_of_the_same_model(tf_files, cli):
    manifests = {}
    for name, path in (("tf", tf_files / "cnn" / "ckpt"), ("keras", tf_files / "cnn.weights.h5")):
        result = cli("hash", path, "--exclude", "optimizer/*", "--no-file-hashes")
        assert result.code == 0, result.stderr
        manifests[name] = json.loads(result.stdout)
    tf_tensors, keras_tensors = manifests["tf"]["tensors"], manifests["keras"]["tensors"]
    assert tf_tensors == keras_tensors and manifests["tf"]["root"] == manifests["keras"]["root"]
    result = cli(
        "diff", tf_files / "cnn" / "ckpt", tf_files / "cnn.weights.h5", "--fail-on", "max_abs>0,shape", "--json"
    )
    assert result.code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["a"]["format"], report["b"]["format"]) == ("tensorflow", "keras")


@needs_tf
def test_layout_torch_translates_keras_kernels(tf_files, tmp_path):
    out = tmp_path / "cnn.safetensors"
    ckptkit.convert(tf_files / "cnn", out, layout="torch", layout_hints=["head=flatten:4x4x4"], exclude=["optimizer/*"])
    with ckptkit.load(tf_files / "cnn") as src, ckptkit.load(out) as dst:
        kernel = src.read_tensor("conv/kernel")
        assert np.array_equal(dst.read_tensor("conv.weight"), kernel.transpose(3, 2, 0, 1))
        head = src.read_tensor("head/kernel").reshape(4, 4, 4, 3).transpose(3, 2, 0, 1).reshape(3, 64)
        assert np.array_equal(dst.read_tensor("head.weight"), head)


# --- What ckptkit writes, read by TensorFlow -------------------------------------------------------


@pytest.fixture(scope="session")
def written(
    tensorflow: TensorFlowProcess, tf_files: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict]:
    """Checkpoints ckptkit wrote from the reference ones, and TensorFlow's verdict on each."""
    out = tmp_path_factory.mktemp("tf-written")
    exp = tf_files / "expected"
    ckptkit.convert(tf_files / "tf1", out / "tf1.safetensors")
    ckptkit.convert(out / "tf1.safetensors", out / "tf1_back", to_format="tensorflow")  # name-based
    ckptkit.convert(tf_files / "dtypes" / "ckpt", out / "dtypes.index", exclude=["dt/text"])
    ckptkit.convert(tf_files / "keras", out / "keras.safetensors")
    ckptkit.convert(out / "keras.safetensors", out / "keras_back.index")  # object-based: graph in metadata
    ckptkit.convert(tf_files / "keras", out / "keras_model_only.index", exclude=["optimizer/*"])
    ckptkit.convert(tf_files / "cnn.weights.h5", out / "cnn_from_keras", to_format="tensorflow",
                    options={"template": tf_files / "cnn_template"}, exclude=["optimizer/*"])  # fmt: skip
    requests = [
        {"name": "tf1", "prefix": str(out / "tf1_back"), "dump": str(out / "dump" / "tf1")},
        {"name": "dtypes", "prefix": str(out / "dtypes"), "dump": str(out / "dump" / "dtypes")},
        {"name": "keras", "prefix": str(out / "keras_back"), "dump": str(out / "dump" / "keras"), "restore": "dense",
         "x": str(exp / "keras_x.npy"), "predictions": str(exp / "keras_pred_2.npy")},
        {"name": "keras_model_only", "prefix": str(out / "keras_model_only"), "restore": "dense",
         "x": str(exp / "keras_x.npy"), "predictions": str(exp / "keras_pred_2.npy")},
        {"name": "cnn", "prefix": str(out / "cnn_from_keras"), "restore": "cnn", "x": str(exp / "cnn_x.npy"),
         "predictions": str(exp / "cnn_pred.npy")},
    ]  # fmt: skip
    return out, tensorflow.ask({"check": requests})


@needs_tf
def test_name_based_checkpoints_ckptkit_writes_read_bit_exactly_by_tensorflow(tf_files, written):
    out, verdicts = written
    for name, source in (("tf1", "tf1"), ("dtypes", "dtypes")):
        assert "error" not in verdicts[name], verdicts[name]
        want = expected(tf_files, source)
        want.pop("dt/text", None)
        assert_exact(want, dumped(out / "dump", name))


@needs_tf
def test_object_based_checkpoints_restore_into_the_keras_model_with_equal_predictions(tf_files, written):
    out, verdicts = written
    for name in ("keras", "keras_model_only", "cnn"):
        assert "error" not in verdicts[name] and verdicts[name].get("predictions_equal") is True, (name, verdicts[name])
    want = expected(tf_files, "keras_2")
    got = dumped(out / "dump", "keras")
    want.pop("_CHECKPOINTABLE_OBJECT_GRAPH", None)
    assert_exact(want, got)


@needs_tf
def test_an_index_ckptkit_writes_is_the_one_tensorflow_writes(tf_files):
    for index in (tf_files / "tf1" / "model.ckpt-7.index", tf_files / "keras" / "ckpt-2.index"):
        data = index.read_bytes()
        import io

        buf = io.BytesIO()
        builder = TableBuilder(buf)
        for key, value in Table(data).items():
            builder.add(key, value)
        builder.finish()
        assert buf.getvalue() == data


@needs_tf
def test_verify_names_changed_truncated_and_missing_data(tf_files, tmp_path, cli):
    folder = tmp_path / "tf1"
    shutil.copytree(tf_files / "tf1", folder)
    assert cli("verify", folder).code == 0
    shard0 = folder / "model.ckpt-7.data-00000-of-00002"
    with ckptkit.load(folder) as ckpt:
        extent = ckpt.raw_extent("bert/ids")
    data = bytearray(shard0.read_bytes())
    data[extent.offset] ^= 0xFF
    shard0.write_bytes(bytes(data))
    report = verify([folder])
    crc = [f for f in report.findings if f.check == "tensorflow.crc"]
    assert [f.tensor for f in crc] == ["bert/ids"] and report.exit_code == 1
    shard0.write_bytes(bytes(data[:30]))
    checks = {f.check for f in verify([folder]).findings}
    assert "tensorflow.truncated" in checks
    shard0.unlink()
    result = cli("verify", folder, "--json")
    assert result.code == 1
    findings = json.loads(result.stdout)["findings"]
    assert any(f["check"] == "tensorflow.shard-missing" and "00000-of-00002" in f["message"] for f in findings)


# --- Without TensorFlow ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int64", "complex128", "bool", "uint16", "int4"])
def test_round_trip_every_dtype_through_ckptkit_alone(tmp_path, dtype):
    arrays = {"layer/w": sample_array(dtype), "scalar": sample_array(dtype, ())}
    ckptkit.save(arrays, tmp_path / "ckpt-3", "tensorflow")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    with ckptkit.load(tmp_path / "ckpt-3") as ckpt:
        for name, want in arrays.items():
            got = ckpt.read_tensor(name)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    assert verify([tmp_path / "ckpt-3"]).findings == [] or all(
        f.severity == "warning" for f in verify([tmp_path / "ckpt-3"]).findings
    )


def test_big_endian_snappy_blocks_partitioned_and_sharded_bundles(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 4)).astype(np.float32)
    tensors = {f"layer_{i:03d}/kernel": rng.standard_normal((3,)).astype(np.float16) for i in range(60)}
    partitioned = {"emb": (w, [[(0, 3), (0, -1)], [(3, 4), (0, 2)], [(3, 4), (2, 2)]])}
    for big, snappy in ((True, False), (False, True), (True, True)):
        prefix = tmp_path / f"b{big:d}{snappy:d}" / "ckpt"
        prefix.parent.mkdir()
        write_bundle(prefix, tensors, partitioned=partitioned, big_endian=big, snappy=snappy, block_size=256, shards=3)
        with ckptkit.load(prefix) as ckpt:
            assert np.array_equal(ckpt.read_tensor("emb"), w)
            for name, value in tensors.items():
                assert ckpt.read_tensor(name).tobytes() == value.tobytes()
            assert (ckpt.raw_extent("layer_000/kernel") is None) == big
        assert not [f for f in verify([prefix]).findings if f.severity == "error"]


def test_hash_manifest_lists_every_data_file_even_one_holding_only_slices(tmp_path):
    import hashlib

    from ckptkit.hashing.manifest import build_manifest

    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    prefix = tmp_path / "ckpt"
    # Data file 0 holds 'a' and the first slice of 'w'; file 1 only the second slice; file 2 nothing.
    write_bundle(prefix, {"a": np.ones(3, np.int32)}, partitioned={"w": (w, [[(0, 2), (0, -1)], [(2, 2), (0, -1)]])},
                 shards=3)  # fmt: skip
    with ckptkit.load(prefix) as ckpt:
        assert ckpt.raw_extent("w") is None
    manifest = build_manifest(prefix)
    names = [f"ckpt.data-0000{i}-of-00003" for i in range(3)]
    assert set(manifest.files) == {"ckpt.index", *names}
    only_slice = tmp_path / names[1]
    assert manifest.files[names[1]] == {
        "sha256": hashlib.sha256(only_slice.read_bytes()).hexdigest(), "bytes": only_slice.stat().st_size
    }  # fmt: skip
    assert set(build_manifest(prefix, exclude=["a"]).files) == {"ckpt.index", *names}


def test_partitioned_variables_with_gaps_or_overlaps_are_refused(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    for name, pieces in (("gap", [[(0, 2), (0, -1)]]), ("overlap", [[(0, 3), (0, -1)], [(2, 2), (0, -1)]])):
        prefix = tmp_path / name
        write_bundle(prefix, {}, partitioned={"w": (w, pieces)})
        with pytest.raises(CorruptCheckpointError, match=r"elements|overlap"):
            ckptkit.load(prefix)
        assert any(f.check == "tensorflow.slice" for f in verify([prefix]).findings)


def test_object_graph_written_back_without_the_tensors_left_out(tmp_path):
    import base64

    from ckptkit.core.model import MemoryCheckpoint
    from ckptkit.formats.tensorflow.protos import Attribute, Child, Node, encode_object_graph, parse_object_graph

    v = "/.ATTRIBUTES/VARIABLE_VALUE"
    nodes = [
        Node(children=[Child(1, "model"), Child(2, "optimizer")]),
        Node(children=[Child(3, "kernel")]),
        Node(children=[Child(4, "iter")]),
        Node(attributes=[Attribute("VARIABLE_VALUE", "dense/kernel", "model/kernel" + v)]),
        Node(attributes=[Attribute("VARIABLE_VALUE", "iter", "optimizer/iter" + v)]),
    ]
    meta = {
        "tensorflow:object_graph": base64.b64encode(encode_object_graph(nodes)).decode(),
        "tensorflow:keys": json.dumps({"dense/kernel": "model/kernel" + v, "optimizer/iter": "optimizer/iter" + v}),
    }
    ckpt = MemoryCheckpoint({"dense/kernel": np.ones((2, 2), np.float32), "optimizer/iter": np.int64(3)}, meta)
    ckptkit.save(ckpt, tmp_path / "full.safetensors")
    receipt = ckptkit.convert(tmp_path / "full.safetensors", tmp_path / "ckpt-1.index", exclude=["optimizer/*"])
    assert any("1 variables of the object graph are not in the checkpoint" in n for n in receipt.notes)
    with ckptkit.load(tmp_path / "ckpt-1") as out:
        assert out.names() == ["dense/kernel"]
        assert json.loads(out.metadata["tensorflow:keys"]) == {"dense/kernel": "model/kernel" + v}
        graph = parse_object_graph(base64.b64decode(out.metadata["tensorflow:object_graph"]))
    assert [a.checkpoint_key for n in graph for a in n.attributes] == ["model/kernel" + v]


def test_crc32c_without_the_compiled_package_gives_the_same_values():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 3 * 4096 * 7 + 11, dtype=np.uint8)
    assert crc32c._extend_numpy(0, data) == crc32c.value(data)
    assert crc32c.value(b"123456789") == 0xE3069283
    assert crc32c.unmask(crc32c.mask(0xDEADBEEF)) == 0xDEADBEEF


def test_cli_errors_name_the_missing_piece(tmp_path, cli):
    ckptkit.save({"w": np.ones(2, np.float32)}, tmp_path / "ckpt-1", "tensorflow")
    (tmp_path / "ckpt-1.data-00000-of-00001").unlink()
    assert_one_line_error(cli("inspect", tmp_path / "ckpt-1"), "ckpt-1.data-00000-of-00001", "missing")
    assert_one_line_error(cli("inspect", tmp_path / "ckpt-9"), "no such file")
    result = cli("convert", tmp_path / "ckpt-1.index", tmp_path / "o.safetensors", "--checkpoint", "3")
    assert_one_line_error(result, "--checkpoint")


def test_writing_refuses_what_tensorflow_cannot_hold_and_keeps_outputs_atomic(tmp_path):
    ckptkit.save({"w": np.ones(2, np.float32)}, tmp_path / "ckpt-1", "tensorflow")
    with pytest.raises(ckptkit.CkptkitError, match="exists already"):
        ckptkit.save({"w": np.ones(2, np.float32)}, tmp_path / "ckpt-1", "tensorflow")
    odd = sample_array("float8_e8m0fnu")
    with pytest.raises(UnsupportedError, match="TensorFlow checkpoints cannot hold"):
        ckptkit.save({"odd": odd}, tmp_path / "ckpt-2", "tensorflow")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-1.data-00000-of-00001", "ckpt-1.index"]


def test_a_tensorflow_checkpoint_reads_with_the_class_ckptkit_registers(tmp_path):
    ckptkit.save({"w": np.ones(2, np.float32)}, tmp_path / "ckpt-1", "tensorflow")
    with ckptkit.load(tmp_path) as ckpt:
        assert isinstance(ckpt, TensorFlowCheckpoint)


def _hostile(tmp_path: Path, edit, fix_crc: bool) -> Path:
    """A valid one-block index with ``edit(buf, block_offset, block_size)`` applied, and its data
    block's checksum rewritten when ``fix_crc``."""
    from ckptkit.formats.tensorflow.table import Table
    from tests.tf_bundles import rewrite_block_crc

    prefix = tmp_path / "ckpt"
    write_bundle(prefix, {"w": np.arange(6, dtype=np.float32)})
    index = prefix.with_name("ckpt.index")
    buf = bytearray(index.read_bytes())
    handle = Table(bytes(buf)).blocks[0][1]
    edit(buf, handle.offset, handle.size)
    if fix_crc:
        rewrite_block_crc(buf, handle.offset, handle.size)
    index.write_bytes(bytes(buf))
    return prefix


def _set_u32(buf: bytearray, at: int, value: int) -> None:
    buf[at : at + 4] = value.to_bytes(4, "little")


def _index_handle_past_end(buf: bytearray, _offset: int, _size: int) -> None:
    from ckptkit.formats.tensorflow.table import BlockHandle, read_footer

    footer = read_footer(bytes(buf))
    handles = footer.metaindex.encode() + BlockHandle(10**6, 10).encode()
    buf[len(buf) - 48 : len(buf) - 8] = handles.ljust(40, b"\0")


@pytest.mark.parametrize(
    ("edit", "fix_crc", "message"),
    [
        (lambda b, off, n: _set_u32(b, off + n - 4, 2**31), True, "restart array is out of bounds"),
        (lambda b, off, n: _set_u32(b, off + n - 8, n + 100), True, "restart point"),
        (lambda b, off, n: b.__setitem__(slice(off, off + 6), b"\xff" * 6), True, "longer than 5 bytes"),
        (lambda b, off, n: b.__setitem__(slice(off + 2, off + 3), b"\x7f"), True, "runs past the block"),
        (_index_handle_past_end, False, "runs past the table's blocks"),
        (lambda b, off, n: b.__setitem__(off + 3, b[off + 3] ^ 1), False, "does not match its checksum"),
    ],
    ids=["restart-count", "restart-offset", "varint-bomb", "entry-length", "handle-past-end", "crc"],
)
def test_hostile_tables_are_refused_with_the_fault_named(tmp_path, edit, fix_crc, message, cli):
    prefix = _hostile(tmp_path, edit, fix_crc)
    with pytest.raises(CorruptCheckpointError, match=message):
        ckptkit.load(prefix)
    assert_one_line_error(cli("inspect", prefix), message)
    findings = verify([prefix]).findings
    assert any(f.check == "tensorflow.index" and message in f.message for f in findings), findings


def test_large_tensors_copy_in_step_with_the_source_and_carry_their_checksums(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {f"block_{i}/w": rng.standard_normal((300 + i, 257)).astype(np.float32) for i in range(6)}
    arrays["tiny"] = np.arange(5, dtype=np.int16)
    ckptkit.save(arrays, tmp_path / "src.safetensors")
    ckptkit.convert(tmp_path / "src.safetensors", tmp_path / "ckpt-1.index")
    with ckptkit.load(tmp_path / "src.safetensors") as src, ckptkit.load(tmp_path / "ckpt-1") as out:
        for name in arrays:
            a, b = src.raw_extent(name), out.raw_extent(name)
            assert out.read_tensor(name).tobytes() == arrays[name].tobytes()
            if a.nbytes >= 64 * 1024:
                assert (a.offset - b.offset) % 4096 == 0, name
    assert [f for f in verify([tmp_path / "ckpt-1"]).findings if f.severity == "error"] == []


def test_safetensors_written_back_pads_its_header_to_copy_page_aligned_and_the_library_reads_it(tmp_path):
    import safetensors.numpy

    rng = np.random.default_rng(3)
    arrays = {f"block_{i}/w": rng.standard_normal((300 + i, 257)).astype(np.float32) for i in range(6)}
    arrays["tiny"] = np.arange(5, dtype=np.int16)
    ckptkit.save(arrays, tmp_path / "src.safetensors", metadata={"note": "x" * 37})
    ckptkit.convert(tmp_path / "src.safetensors", tmp_path / "ckpt-1.index")
    receipt = ckptkit.convert(tmp_path / "ckpt-1", tmp_path / "back.safetensors")
    assert receipt.verified
    loaded = safetensors.numpy.load_file(str(tmp_path / "back.safetensors"))
    assert {k: v.tobytes() for k, v in loaded.items()} == {k: v.tobytes() for k, v in arrays.items()}
    header_len = int.from_bytes((tmp_path / "back.safetensors").read_bytes()[:8], "little")
    assert header_len % 8 == 0
    with ckptkit.load(tmp_path / "ckpt-1") as tf, ckptkit.load(tmp_path / "back.safetensors") as back:
        large = [n for n in arrays if arrays[n].nbytes >= 64 * 1024]
        assert large and all((tf.raw_extent(n).offset - back.raw_extent(n).offset) % 4096 == 0 for n in large)
    # Without large tensors to place, the header is the library's own.
    small = {"a": np.arange(6, dtype=np.float32), "b": np.ones(3, np.int8)}
    ckptkit.save(small, tmp_path / "small.safetensors")
    ckptkit.convert(tmp_path / "small.safetensors", tmp_path / "small-1.index")
    ckptkit.convert(tmp_path / "small-1", tmp_path / "small-back.safetensors")
    assert (tmp_path / "small-back.safetensors").read_bytes() == safetensors.numpy.save(small)


def _graph(edges: dict[int, list[tuple[int, str]]], variables: dict[int, tuple[str, str]], slots=()):
    from ckptkit.formats.tensorflow.protos import Attribute, Child, Node, SlotRef

    size = max([*edges, *variables, *(c for cs in edges.values() for c, _ in cs)]) + 1
    nodes = [Node() for _ in range(size)]
    for parent, children in edges.items():
        nodes[parent].children = [Child(c, name) for c, name in children]
    for node, (full_name, key) in variables.items():
        nodes[node].attributes = [Attribute("VARIABLE_VALUE", full_name, key)]
    for opt, original, slot_name, slot_node in slots:
        nodes[opt].slot_variables.append(SlotRef(original, slot_name, slot_node))
    return nodes


def test_names_from_object_graphs_keras2_slots_two_models_and_bare_names():
    from ckptkit.formats.tensorflow.names import name_variables

    v = "/.ATTRIBUTES/VARIABLE_VALUE"
    # Keras 2: layer_with_weights-N paths, scoped full names, an optimizer with slots and an iteration count.
    nodes = _graph(
        {0: [(1, "model"), (2, "optimizer"), (3, "save_counter")], 1: [(4, "layer_with_weights-0")],
         4: [(5, "kernel")], 2: [(6, "iter")]},
        {5: ("dense/kernel", "model/layer_with_weights-0/kernel" + v), 6: ("Adam/iter", "optimizer/iter" + v),
         3: ("save_counter", "save_counter" + v),
         7: ("dense/kernel/m", "model/layer_with_weights-0/kernel/.OPTIMIZER_SLOT/optimizer/m" + v)},
        slots=[(2, 5, "m", 7)],
    )  # fmt: skip
    keys = [a.checkpoint_key for n in nodes for a in n.attributes]
    naming = name_variables(nodes, keys, {"save_counter" + v})
    assert sorted(naming.names.values()) == ["dense/kernel", "optimizer/dense/kernel/m", "optimizer/iter"]
    assert naming.extras == {"save_counter" + v: "save_counter"}
    assert naming.optimizer == {"optimizer/dense/kernel/m", "optimizer/iter"}
    # Two models under one checkpoint, variables named bare ("kernel"): their object paths name them.
    nodes = _graph(
        {0: [(1, "encoder"), (2, "decoder")], 1: [(3, "_kernel")], 2: [(4, "_kernel")]},
        {3: ("kernel", "encoder/_kernel" + v), 4: ("kernel", "decoder/_kernel" + v)},
    )
    naming = name_variables(nodes, ["encoder/_kernel" + v, "decoder/_kernel" + v], set())
    assert sorted(naming.names.values()) == ["decoder/kernel", "encoder/kernel"]
    # Keras 3 Sequential: the model's own name, first in every full name, is dropped.
    nodes = _graph(
        {0: [(1, "model")], 1: [(2, "_functional")], 2: [(3, "_operations")], 3: [(4, "1")],
         4: [(5, "_kernel"), (6, "bias")]},
        {5: ("sequential/dense/kernel", "model/_functional/_operations/1/_kernel" + v),
         6: ("sequential/dense/bias", "model/_functional/_operations/1/bias" + v)},
    )  # fmt: skip
    naming = name_variables(nodes, [a.checkpoint_key for n in nodes for a in n.attributes], set())
    assert list(naming.names.values()) == ["dense/kernel", "dense/bias"]


def test_template_must_be_an_object_based_tensorflow_checkpoint(tmp_path):
    arrays = {"w": np.ones(2, np.float32)}
    ckptkit.save(arrays, tmp_path / "plain", "tensorflow")
    ckptkit.save(arrays, tmp_path / "w.safetensors")
    cases = [(tmp_path / "nothing", "does not exist"), (tmp_path / "w.safetensors", "safetensors file"),
             (tmp_path / "plain", "no object graph")]  # fmt: skip
    for template, message in cases:
        with pytest.raises(UsageError, match=message):
            ckptkit.convert(tmp_path / "w.safetensors", tmp_path / "out.index", options={"template": template})
    assert not (tmp_path / "out.index").exists()


@needs_tf
def test_timeline_orders_a_training_folders_checkpoints_by_their_numbers(tf_files, cli):
    result = cli("timeline", str(tf_files / "keras" / "ckpt-*.index"), "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [s["step"] for s in report["snapshots"]] == [1, 2]
    assert report["order"] == "steps in the names"  # ckpt-1, ckpt-2, as the save counter numbers them
    assert [s["step"] for s in ckptkit.timeline([tf_files / "keras"]).to_dict()["snapshots"]] == [1, 2]


def test_entry_count_and_rank_limits_are_enforced(tmp_path, monkeypatch):
    prefix = tmp_path / "ckpt"
    write_bundle(prefix, {f"t{i}": np.zeros((1, 1, 2), np.float32) for i in range(5)})
    with ckptkit.load(prefix) as ckpt:
        assert len(ckpt.names()) == 5
    monkeypatch.setenv("CKPTKIT_MAX_TENSORS", "3")
    with pytest.raises(CorruptCheckpointError, match=r"entry count is 4 entries.*CKPTKIT_MAX_TENSORS"):
        ckptkit.load(prefix)
    monkeypatch.delenv("CKPTKIT_MAX_TENSORS")
    monkeypatch.setenv("CKPTKIT_MAX_PICKLE_DEPTH", "2")
    with pytest.raises(CorruptCheckpointError, match=r"dimension count is 3 dimensions.*CKPTKIT_MAX_PICKLE_DEPTH"):
        ckptkit.load(prefix)


@needs_tf
def test_timeline_of_a_checkpoint_manager_folder_is_every_kept_checkpoint(tensorflow, tmp_path, cli):
    assert tensorflow.ask({"manager": str(tmp_path)})["saved"] == ["ckpt-4", "ckpt-8", "ckpt-12"]
    train = tmp_path / "runs" / "train"
    result = cli("timeline", train, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [Path(s["path"]).name for s in report["snapshots"]] == ["ckpt-4", "ckpt-8", "ckpt-12"]
    assert [s["step"] for s in report["snapshots"]] == [4, 8, 12]  # CheckpointManager's numbers, not save_counter
    assert report["order"] == "steps in the names" and report["notes"] == []
    # What TensorFlow reads from each kept checkpoint, measured in float64.
    values = [dumped(tmp_path / "expected", f"ckpt-{step}") for step in (4, 8, 12)]
    kernel = next(t for t in report["tensors"] if t["name"] == "dense/kernel")
    with ckptkit.load(train / "ckpt-4") as ckpt:
        key = json.loads(ckpt.metadata[KEYS_META])["dense/kernel"]
    w = [v[key].astype(np.float64) for v in values]
    assert kernel["norm"] == pytest.approx([np.linalg.norm(x) for x in w], rel=1e-6)
    assert kernel["update_ratio"][1:] == pytest.approx(
        [np.linalg.norm(w[i] - w[i - 1]) / np.linalg.norm(w[i - 1]) for i in (1, 2)], rel=1e-6
    )
    assert any(x["optimizer"] for x in report["layers"])
    # A pattern matching each checkpoint's index and data file: one snapshot per checkpoint still.
    globbed = ckptkit.timeline([str(train / "ckpt-*")]).to_dict()
    assert [s["step"] for s in globbed["snapshots"]] == [4, 8, 12]
    # A folder holding the training folder stands for its checkpoints too; an older checkpoint that
    # the 'checkpoint' file no longer lists, but that is still in the folder, belongs to the run.
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(train / f"ckpt-4{suffix}", train / f"ckpt-2{suffix}")
    again = ckptkit.timeline([tmp_path / "runs"]).to_dict()
    assert [Path(s["path"]).name for s in again["snapshots"]] == ["ckpt-2", "ckpt-4", "ckpt-8", "ckpt-12"]
