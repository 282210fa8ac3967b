"""Every readable format at a URL, from servers on localhost (an HTTP server with range requests,
and moto's S3 server): inspect, hash and verify give the local results, convert writes the same
bytes, diff finds no difference, and listing a large file transfers little more than its header."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ckptkit
from ckptkit import registry
from ckptkit.cli import cli as ckptkit_cli
from ckptkit.io.source import READAHEAD, open_source, use_storage_options
from tests.helpers import sample_array
from tests.test_remote_sources import BUCKET, _RangeHandler, _upload, s3  # noqa: F401 - s3 is a fixture

pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Path, str, type[_RangeHandler]]]:
    """A folder served over HTTP with byte ranges: (folder, base URL, handler class counting bytes sent)."""
    folder = tmp_path_factory.mktemp("served")
    handler = type("Handler", (_RangeHandler,), {"sent": 0})

    def make(*args, **kwargs):
        return handler(*args, directory=str(folder), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def run(*args: object) -> tuple[int, str]:
    """The CLI in this process (the servers live here): exit code and standard output."""
    result = CliRunner().invoke(ckptkit_cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def _arrays(n: int = 3) -> dict[str, np.ndarray]:
    arrays = {f"layers.{i}.weight": sample_array("float32", (8, 16), seed=i) for i in range(n)}
    arrays["norm.bias"] = sample_array("float16", (16,), seed=99)
    return arrays


def _safetensors(path: Path) -> None:
    ckptkit.save(_arrays(), path, metadata={"note": "remote"})


def _torch(path: Path, legacy: bool = False) -> None:
    import torch

    emb = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    state = {
        "embed.weight": emb,
        "head.weight": emb,  # tied: stored once
        "proj.weight": torch.arange(24, dtype=torch.bfloat16).reshape(4, 6).t(),  # a strided view
        "steps": torch.tensor([3, 1, 4], dtype=torch.int64),
        "epoch": 7,
    }
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)


def _gguf(path: Path) -> None:
    import gguf

    from tests.gguf_files import write_gguf

    rng = np.random.default_rng(0)
    write_gguf(path, [
        ("blk.0.attn_q.weight", rng.standard_normal((4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0),
        ("output_norm.weight", rng.standard_normal(64).astype(np.float16), None),
        ("token_embd.weight", rng.standard_normal((8, 32)).astype(np.float32), None),
    ])  # fmt: skip


def _keras(path: Path) -> None:
    """A .keras archive or a .weights.h5 file, saved by Keras 3 itself."""
    import keras

    import tests.keras_pairs  # noqa: F401 - sets KERAS_BACKEND=torch before keras loads

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d1"), keras.layers.Dense(2, name="d2")])
    if path.name.endswith(".keras"):
        model.save(path)
    else:
        model.save_weights(path)


def _keras2(path: Path) -> None:
    """A legacy Keras HDF5 model file, as Keras 2 wrote them (model config, weights, optimizer)."""
    from tests.keras2_files import sequential_config, write_keras2

    write_keras2(
        path,
        [("d1", [("d1/kernel:0", sample_array("float32", (3, 4), seed=1)), ("d1/bias:0", np.zeros(4, np.float32))])],
        model_config=sequential_config(("Dense", "d1")),
        optimizer=[("iterations:0", np.array(5, np.int64))],
    )


def _onnx(path: Path, external: bool = False) -> None:
    """A small ONNX model: initializers, a Constant node and a typed (float_data) tensor; with
    ``external``, the large initializers in a data file beside it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(sample_array("float32", (16, 8), seed=3), "w")
    b = numpy_helper.from_array(sample_array("float16", (8,), seed=4).astype(np.float32), "b")
    typed = helper.make_tensor("scale", TensorProto.FLOAT, [2], [0.5, 2.0])  # float_data, not raw_data
    const = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.arange(8, dtype=np.float32)))
    nodes = [const, helper.make_node("MatMul", ["x", "w"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y1"]),
             helper.make_node("Add", ["y1", "k"], ["y"])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], initializer=[w, b, typed],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if external:
        onnx.save(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=64)
    else:
        onnx.save(model, path)


def _tensorflow(index: Path) -> None:
    """A TensorFlow bundle in two data files, one tensor stored as slices, one big-endian-free string-free set."""
    from tests.tf_bundles import write_bundle

    prefix = index.with_name(index.name.removesuffix(".index"))
    part = sample_array("float32", (6, 4), seed=7)
    write_bundle(
        prefix,
        {"dense/kernel": sample_array("float32", (4, 3), seed=5), "dense/bias": sample_array("float64", (3,), seed=6),
         "step": np.array(12, np.int64)},
        partitioned={"emb": (part, [[(0, 3), (0, 4)], [(3, 3), (0, 4)]])},
        shards=2,
    )  # fmt: skip


def _cut_data(make: Callable[[Path], None], keep: float) -> Callable[[Path], None]:
    """A builder whose first data file is cut short (a bundle's damage lies in its data files)."""

    def build(index: Path) -> None:
        make(index)
        data = next(index.parent.glob(index.name.removesuffix(".index") + ".data-00000-*"))
        data.write_bytes(data.read_bytes()[: int(data.stat().st_size * keep)])

    return build


def _npz(path: Path) -> None:
    """An .npz archive of stored members, one of them Fortran-ordered."""
    arrays = {
        "w": sample_array("float32", (4, 5), seed=8),
        "f": np.asfortranarray(sample_array("int16", (3, 4), seed=9)),
    }
    np.savez(path, **arrays)


def _npy(path: Path) -> None:
    np.save(path, sample_array("float64", (6, 2), seed=10).astype(">f8"))


class _Payload:
    """Unpickling this would run a shell command: ckptkit must refuse it at a URL as it does locally."""

    def __reduce__(self):
        import os

        return (os.system, ("echo owned > /dev/null",))


def _hostile_torch(path: Path) -> None:
    import torch

    torch.save({"w": torch.zeros(2), "hook": _Payload()}, path)


def _cut(make: Callable[[Path], None], keep: float) -> Callable[[Path], None]:
    """A builder whose file is cut short: the checks must report the same damage as for the local file."""

    def build(path: Path) -> None:
        make(path)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return build


BUILDERS: dict[str, Callable[[Path], None]] = {
    "model.safetensors": _safetensors,
    "model.pt": _torch,
    "legacy.pt": lambda p: _torch(p, legacy=True),
    "model.gguf": _gguf,
    "model.keras": _keras,
    "model.weights.h5": _keras,
    "keras2.h5": _keras2,
    "model.onnx": _onnx,
    "external.onnx": lambda p: _onnx(p, external=True),
    "ckpt-1.index": _tensorflow,
    "arrays.npz": _npz,
    "packed.npz": lambda p: np.savez_compressed(p, a=sample_array("float32", (8, 8), seed=11), b=np.arange(5)),
    "array.npy": _npy,
}
DAMAGED: dict[str, Callable[[Path], None]] = {
    "cut.pt": _cut(_torch, 0.8),
    "cut.gguf": _cut(_gguf, 0.7),
    "cut.safetensors": _cut(_safetensors, 0.9),
    "cut.keras": _cut(_keras, 0.95),
    "cut.h5": _cut(_keras2, 0.9),
    "cut.onnx": _cut(_onnx, 0.8),
    "cut-1.index": _cut_data(_tensorflow, 0.5),
    "cut.npy": _cut(_npy, 0.8),
    "hostile.pt": _hostile_torch,
}


def _build(folder: Path, name: str, builders: dict[str, Callable[[Path], None]]) -> Path:
    path = folder / name
    if not path.exists():
        builders[name](path)
    return path


def _as_local(text: str, base: str, folder: Path) -> object:
    return json.loads(text.replace(base, str(folder)))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_inspect_hash_and_verify_of_a_url_equal_the_local_results(served, name):
    folder, base, _handler = served
    local = _build(folder, name, BUILDERS)
    url = f"{base}/{name}"
    for command in (("inspect", "--json"), ("hash",), ("verify", "--json")):
        code_here, here = run(command[0], local, *command[1:])
        code_there, there = run(command[0], url, *command[1:])
        assert (code_there, _as_local(there, base, folder)) == (code_here, json.loads(here)), command
        assert code_here == 0, here


@pytest.mark.parametrize("name", list(DAMAGED))
def test_verify_of_a_damaged_file_at_a_url_reports_what_the_local_check_reports(served, name):
    folder, base, _handler = served
    local = _build(folder, name, DAMAGED)
    code_here, here = run("verify", local, "--json")
    code_there, there = run("verify", f"{base}/{name}", "--json")
    assert code_here == 1, here
    assert json.loads(here)["findings"], here
    assert (code_there, _as_local(there, base, folder)) == (code_here, json.loads(here))


def test_a_hostile_pickle_at_a_url_is_refused_as_a_local_one_is(served):
    folder, base, _handler = served
    local = _build(folder, "hostile.pt", DAMAGED)
    with pytest.raises(ckptkit.CkptkitError) as here:
        registry.open_checkpoint(local)
    with pytest.raises(type(here.value)) as there:
        registry.open_checkpoint(f"{base}/hostile.pt")
    assert there.value.message == here.value.message
    assert "system" in there.value.message


@pytest.mark.parametrize("name", list(BUILDERS))
def test_convert_from_a_url_writes_the_bytes_a_local_convert_writes(served, tmp_path, name):
    folder, base, _handler = served
    local = _build(folder, name, BUILDERS)
    assert run("convert", local, tmp_path / "here.safetensors")[0] == 0
    code, out = run("convert", f"{base}/{name}", tmp_path / "there.safetensors")
    assert code == 0, out
    assert (tmp_path / "there.safetensors").read_bytes() == (tmp_path / "here.safetensors").read_bytes()
    assert f"{base}/{name}" not in (tmp_path / "there.safetensors").read_bytes().decode("latin-1")


@pytest.mark.parametrize("name", list(BUILDERS))
def test_diff_of_a_url_and_its_local_copy_finds_them_identical(served, name):
    folder, base, _handler = served
    local = _build(folder, name, BUILDERS)
    code, out = run("diff", f"{base}/{name}", local, "--json", "--fail-on", "max_abs>0,missing")
    assert code == 0, out
    report = json.loads(out)
    assert report["a"]["path"] == f"{base}/{name}"
    summary = report["summary"]
    assert summary["identical"] == summary["compared"] >= report["a"]["tensors"] > 0, summary


def test_a_tensorflow_prefix_url_names_its_index(served):
    folder, base, _handler = served
    _build(folder, "ckpt-1.index", BUILDERS)
    code, out = run("inspect", f"{base}/ckpt-1", "--json")
    assert code == 0, out
    assert json.loads(out) == json.loads(run("inspect", f"{base}/ckpt-1.index", "--json")[1])
    assert json.loads(out)["tensor_count"] == 4


def test_timeline_reads_snapshots_at_urls(served):
    folder, base, _handler = served
    for step in (1, 2):
        ckptkit.save({k: v * step for k, v in _arrays().items()}, folder / f"step_{step}.safetensors")
    urls = [f"{base}/step_{step}.safetensors" for step in (1, 2)]
    code, there = run("timeline", *urls, "--json")
    code_here, here = run("timeline", *(folder / f"step_{step}.safetensors" for step in (1, 2)), "--json")
    assert (code, _as_local(there, base, folder)) == (code_here, json.loads(here))
    assert [s["path"] for s in json.loads(there)["snapshots"]] == urls


def test_a_sharded_index_on_s3_is_read_in_full(tmp_path, s3):  # noqa: F811 - the fixture
    arrays = {f"layers.{i}.weight": sample_array("bfloat16", (64, 64), seed=i) for i in range(6)}
    local = tmp_path / "sharded"
    local.mkdir()
    ckptkit.save(arrays, local / "model.safetensors.index.json", shard_size="20KB")
    files = sorted(p.name for p in local.iterdir())
    assert len(files) > 3, files  # an index and several shards
    for f in files:
        _upload(s3, local / f, f"sharded/{f}")
    url = f"s3://{BUCKET}/sharded/model.safetensors.index.json"
    option = ("--storage-option", f"endpoint_url={s3[0]}")
    index = local / "model.safetensors.index.json"
    for command in (("inspect", "--json"), ("hash",), ("verify", "--json")):
        code_here, here = run(command[0], index, *command[1:])
        code_there, there = run(command[0], url, *command[1:], *option)
        assert code_here == code_there == 0, there
        assert json.loads(there.replace(f"s3://{BUCKET}/sharded", str(local))) == json.loads(here), command
    with use_storage_options({"endpoint_url": s3[0]}), registry.open_checkpoint(url) as remote:
        assert remote.format_name == "sharded" and len(remote.shards) == len(files) - 1
        for name, array in arrays.items():
            np.testing.assert_array_equal(remote.read_tensor(name), array)
    code, out = run("convert", url, tmp_path / "one.safetensors", *option)
    assert code == 0, out
    with ckptkit.load(tmp_path / "one.safetensors") as one:
        assert sorted(one.names()) == sorted(arrays)


def test_a_shard_missing_beside_a_remote_index_is_refused(tmp_path, s3):  # noqa: F811 - the fixture
    local = tmp_path / "gap"
    local.mkdir()
    ckptkit.save(_arrays(6), local / "model.safetensors.index.json", shard_size="1KB")
    shards = sorted(p.name for p in local.iterdir() if not p.name.endswith(".json"))
    for f in ["model.safetensors.index.json", *shards[1:]]:
        _upload(s3, local / f, f"gap/{f}")
    code, _out = run("inspect", f"s3://{BUCKET}/gap/model.safetensors.index.json", "--storage-option",
                    f"endpoint_url={s3[0]}")  # fmt: skip
    assert code == 2
    with use_storage_options({"endpoint_url": s3[0]}), pytest.raises(ckptkit.CkptkitError, match=shards[0]):
        registry.open_checkpoint(f"s3://{BUCKET}/gap/model.safetensors.index.json")
    # verify names the missing shard and the gap in the series, as it does for the same folder on disk
    (local / shards[0]).unlink()
    code_here, here = run("verify", local / "model.safetensors.index.json", "--json")
    code_there, there = run("verify", f"s3://{BUCKET}/gap/model.safetensors.index.json", "--json", "--storage-option",
                            f"endpoint_url={s3[0]}")  # fmt: skip
    assert code_here == code_there == 1
    # the same findings; a missing remote shard is to be uploaded, a local one downloaded
    assert json.loads(
        there.replace(f"s3://{BUCKET}/gap", str(local)).replace("upload it", "download it")
    ) == json.loads(here)
    assert {f["check"] for f in json.loads(here)["findings"]} >= {"index.shard-missing"}


def _large_torch(path: Path) -> None:
    """A torch.save zip of ~64 MB whose tensors are zeros: torch writes them, the file system keeps
    it cheap; only the directory and the pickle are needed to list it."""
    import torch

    torch.save({f"blocks.{i}.weight": torch.zeros(1024, 2048) for i in range(8)}, path)


def _large_gguf(path: Path, tokens: int = 0) -> None:
    """A GGUF file of ~64 MB: its header written (with a vocabulary of ``tokens`` strings, which
    makes the header span several fetches), then its data section left sparse."""
    import struct

    from tests.gguf_files import gguf_string, raw_header, tensor_info

    kv = b""
    if tokens:
        words = b"".join(gguf_string(f"token_{i:06d}") for i in range(tokens))
        kv = gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, tokens) + words
    body = kv + b"".join(tensor_info(f"blk.{i}.ffn.weight", (2048, 1024), 0, i * 8 * 2**20) for i in range(8))
    header = raw_header(8, 1 if tokens else 0, body)
    with open(path, "wb") as f:
        f.write(header + b"\0" * (-len(header) % 32))
        f.truncate(f.tell() + 64 * 2**20)


def _large_safetensors(path: Path) -> None:
    header = {f"w{i}": {"dtype": "F32", "shape": [1024, 2048], "data_offsets": [i * 8 * 2**20, (i + 1) * 8 * 2**20]}
              for i in range(8)}  # fmt: skip
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(f.tell() + 64 * 2**20)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("big.pt", _large_torch),
        ("big.gguf", _large_gguf),
        ("vocab.gguf", lambda p: _large_gguf(p, tokens=20000)),
        ("big.safetensors", _large_safetensors),
    ],
)
def test_inspect_of_a_large_file_at_a_url_transfers_its_header_and_at_most_64_kb_more(tmp_path, served, name, make):
    folder, base, handler = served
    make(folder / name)
    size = (folder / name).stat().st_size
    assert size >= 64 * 2**20
    url = f"{base}/{name}"
    source = open_source(url)
    fmt = registry.detect_remote(source, registry.check_remote_input(source))
    with registry.open_remote_as(fmt, source) as remote, ckptkit.load(folder / name) as here:
        assert list(remote.tensor_infos()) == list(here.tensor_infos())
        assert _header_bytes(folder / name) < size // 100
        assert source.bytes_read <= _header_bytes(folder / name) + READAHEAD, source.bytes_read
    handler.sent = 0
    code, out = run("inspect", url, "--json")
    assert code == 0, out
    assert handler.sent <= _header_bytes(folder / name) + READAHEAD, (
        handler.sent
    )  # the whole command, counted by the server
    (folder / name).unlink()


def _header_bytes(path: Path) -> int:
    """What listing a file needs at least: a safetensors or GGUF header, a zip's directory and pickle."""
    data = path.read_bytes()[: 2**20]
    if path.suffix == ".safetensors":
        return 8 + int.from_bytes(data[:8], "little")
    if path.suffix == ".gguf":
        from ckptkit.core.findings import ProblemSink
        from ckptkit.formats.gguf.header import parse

        parsed = parse(data, path.stat().st_size, ProblemSink(path, strict=True))
        assert parsed is not None
        return parsed.data_start
    import zipfile

    with zipfile.ZipFile(path) as zf:
        pickle = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
        directory = sum(46 + len(i.filename.encode()) + len(i.extra) + len(i.comment) for i in zf.infolist())
        return (
            directory
            + 22
            + pickle.file_size
            + 30 * len(zf.infolist())
            + sum(len(i.filename.encode()) + 64 for i in zf.infolist())
        )


def test_a_remote_checkpoint_sent_to_another_process_reopens_its_url_with_its_options(tmp_path, s3):  # noqa: F811
    import pickle

    local = tmp_path / "model.pt"
    _torch(local)
    url = _upload(s3, local, "pickled/model.pt")
    with use_storage_options({"endpoint_url": s3[0]}), registry.open_checkpoint(url) as remote:
        sent = pickle.dumps(remote)
    # Unpickled where no --storage-option is in force (a Dask worker): the endpoint travels with it.
    with pickle.loads(sent) as again, ckptkit.load(local) as here:
        assert again.url == url
        for name in here.names():
            np.testing.assert_array_equal(again.read_tensor(name), here.read_tensor(name))


def test_names_that_a_server_resolves_outside_the_folder_are_refused_at_a_url(served):
    """A percent escape (``%2e%2e`` is ``..`` to an HTTP client and server), a query or a fragment in
    a shard's or an external data file's name would fetch another URL than the file beside the
    index or model: refused as ``..`` is."""
    import onnx

    folder, base, _handler = served
    outside = folder / "escape-secret"
    outside.mkdir()
    _safetensors(outside / "s.safetensors")
    inner = folder / "escape-models" / "m"
    inner.mkdir(parents=True)
    index: dict[str, object] = {"metadata": {}}
    for name in ["%2e%2e/%2e%2e/escape-secret/s.safetensors", "s.safetensors?x=1", "s.safetensors#x"]:
        index["weight_map"] = dict.fromkeys(_arrays(), name)
        (inner / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(ckptkit.CkptkitError, match="not a file inside"):
            registry.open_checkpoint(f"{base}/escape-models/m/model.safetensors.index.json")

    _onnx(outside / "model.onnx", external=True)
    model = onnx.load(str(outside / "model.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "%2e%2e/%2e%2e/escape-secret/model.onnx.data"
    onnx.save(model, str(inner / "model.onnx"))
    with pytest.raises(ckptkit.CkptkitError, match="not a file inside"):
        registry.open_checkpoint(f"{base}/escape-models/m/model.onnx")
    code, _out = run("verify", f"{base}/escape-models/m/model.onnx")
    assert code == 1
