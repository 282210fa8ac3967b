"""Fuzzing every reader: mutated valid checkpoints are read completely or refused with a ckptkit error.

A short, reproducible run is part of the suite. A long run, with fresh random inputs each time:

    CKPTKIT_FUZZ_EXAMPLES=20000 CKPTKIT_FUZZ_REPORT=fuzz.json python -m pytest tests/test_fuzz.py -q

``CKPTKIT_FUZZ_EXAMPLES`` is the number of inputs per test; the counts of inputs and outcomes per
reader are printed at the end and written as JSON to ``CKPTKIT_FUZZ_REPORT`` when it is set.
See tests/fuzzing.py for what counts as a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptkit
from ckptkit.core.dtypes import by_name
from ckptkit.core.model import MemoryCheckpoint
from tests import fuzzing
from tests.conftest import FIXTURES, realworld_files
from tests.helpers import print_to_terminal
from tests.hostile.generate import _keras_archive

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

LONG_RUN = "CKPTKIT_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("CKPTKIT_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not LONG_RUN,  # the suite's run is the same every time; a long run explores
    suppress_health_check=list(HealthCheck),
)


SEEDS: dict[str, list[tuple[bytes, dict[str, bytes]]]] = {}


@pytest.fixture(scope="module", autouse=True)
def seeds(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Valid files per reader, each with the side files it needs (a module global: hypothesis would
    print a fixture's value with every failure)."""
    made = tmp_path_factory.mktemp("seeds")
    # A safetensors file with ckptkit's alias map and extras in its metadata.
    ckptkit.convert(FIXTURES / "tied_lm_fp16.pt", made / "tied.safetensors")
    ckptkit.convert(FIXTURES / "training_mlp.ckpt", made / "training.safetensors")
    ckptkit.save(_dense_layers(), made / "v3.weights.h5")
    ckptkit.save(_dense_layers(), made / "legacy.h5")
    (made / "model.keras").write_bytes(_keras_archive()(made))
    onnx_dir = FIXTURES / "onnx"
    external = {"external_data.onnx.data": (onnx_dir / "external_data.onnx.data").read_bytes()}

    def files(*paths: Path) -> list[tuple[bytes, dict[str, bytes]]]:
        return [(p.read_bytes(), {}) for p in paths]

    onnx_models = files(*(onnx_dir / n for n in ("conv_bn_ln_gemm.onnx", "every_dtype_raw_and_typed.onnx",
                                                 "if_loop_subgraphs_and_constants.onnx")))  # fmt: skip
    SEEDS.update(
        {
            "tensorflow": _tensorflow_seeds(made),
            "safetensors": files(
                FIXTURES / "mlp_fp32.safetensors", made / "tied.safetensors", made / "training.safetensors"
            ),
            "torch_zip": files(FIXTURES / "mlp_fp16.pt", FIXTURES / "training_mlp.ckpt", FIXTURES / "tied_lm_bf16.pt"),
            "torch_legacy": files(FIXTURES / "mlp_fp32_legacy.pt"),
            "onnx": [*onnx_models, ((onnx_dir / "external_data.onnx").read_bytes(), external)],
            "keras_h5": files(made / "v3.weights.h5", made / "legacy.h5", *realworld_files("*.weights.h5")),
            "keras_zip": files(made / "model.keras", *realworld_files("*.keras")),
            "gguf": files(_gguf_seed(made / "seed.gguf"), *realworld_files("*.gguf")),
        }
    )


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    lines = []
    for target, tally in sorted(fuzzing.TALLIES.items()):
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(tally.outcomes.items()))
        lines.append(f"fuzz {target}: {tally.inputs} inputs ({outcomes}); failures 0")
    total = sum(t.inputs for t in fuzzing.TALLIES.values())
    lines.append(f"fuzz total: {total} inputs, 0 failures")
    print_to_terminal(request, lines)
    if os.environ.get("CKPTKIT_FUZZ_REPORT"):
        summary = {t: tally.as_dict() for t, tally in fuzzing.TALLIES.items()}
        Path(os.environ["CKPTKIT_FUZZ_REPORT"]).write_text(json.dumps(summary, indent=2))


STRUCTURED = {
    "tensorflow": fuzzing.tensorflow_edits,
    "safetensors": fuzzing.safetensors_header_edits,
    "torch_zip": fuzzing.torch_zip_edits,
    "torch_legacy": fuzzing.torch_legacy_edits,
    "onnx": fuzzing.onnx_edits,
    "keras_h5": fuzzing.keras_h5_edits,
    "keras_zip": fuzzing.keras_zip_edits,
    "gguf": fuzzing.gguf_header_edits,
}


def _tensorflow_seeds(made: Path) -> list[tuple[bytes, dict[str, bytes]]]:
    """TensorFlow indexes with their data files: several dtypes; a partitioned variable over two data
    files in many small snappy blocks; an object-based checkpoint with an optimizer and a save counter."""
    import base64

    from ckptkit.formats.tensorflow.protos import Attribute, Child, Node, encode_object_graph
    from tests.tf_bundles import write_bundle

    rng = np.random.default_rng(5)
    seeds = []
    folder = made / "tensorflow"
    folder.mkdir()
    write_bundle(folder / "a", {"w": rng.standard_normal((3, 2)).astype(np.float32), "step": np.int64(4),
                                "h": np.ones(5, np.float16), "c": np.ones(2, np.complex64)})  # fmt: skip
    w = rng.standard_normal((6, 3)).astype(np.float32)
    write_bundle(folder / "b", {f"layer_{i}/b": np.full(2, i, np.int32) for i in range(12)},
                 partitioned={"emb": (w, [[(0, 4), (0, -1)], [(4, 2), (0, -1)]])}, snappy=True, block_size=64,
                 shards=2)  # fmt: skip
    value = "/.ATTRIBUTES/VARIABLE_VALUE"
    nodes = [
        Node(children=[Child(1, "model"), Child(2, "optimizer"), Child(3, "save_counter")]),
        Node(children=[Child(4, "kernel")]),
        Node(children=[Child(5, "iter")]),
        Node(attributes=[Attribute("VARIABLE_VALUE", "save_counter", "save_counter" + value)]),
        Node(attributes=[Attribute("VARIABLE_VALUE", "dense/kernel", "model/kernel" + value)]),
        Node(attributes=[Attribute("VARIABLE_VALUE", "iter", "optimizer/iter" + value)]),
    ]
    meta = {
        "tensorflow:object_graph": base64.b64encode(encode_object_graph(nodes)).decode(),
        "tensorflow:keys": json.dumps(
            {"dense/kernel": "model/kernel" + value, "optimizer/iter": "optimizer/iter" + value}
        ),
        "tensorflow:extras": json.dumps({"save_counter": ["save_counter" + value, "int64"]}),
    }
    ckpt = MemoryCheckpoint({"dense/kernel": w, "optimizer/iter": np.int64(3)}, meta)
    ckpt.extras["save_counter"] = 2
    ckptkit.save(ckpt, folder / "c", "tensorflow")
    for prefix in ("a", "b", "c"):
        side = {}
        for data in sorted(folder.glob(f"{prefix}.data-*")):
            side[data.name.replace(prefix, "input", 1)] = data.read_bytes()
        seeds.append(((folder / f"{prefix}.index").read_bytes(), side))
    return seeds


def _dense_layers() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "dense/kernel": rng.standard_normal((8, 4)).astype(np.float32),
        "dense/bias": np.zeros(4, np.float32),
        "dense_1/kernel": rng.standard_normal((4, 2)).astype(np.float16),
    }


def _gguf_seed(path: Path) -> Path:
    """A GGUF file gguf-py writes: plain and quantized tensors, string, number and nested array metadata."""
    import gguf

    rng = np.random.default_rng(4)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_token_list(["a", "b", "c"])
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_tensor("f32", rng.standard_normal((4, 8)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal(8).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((2, 32)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("q8", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    q4k = rng.integers(0, 256, (1, 144), dtype=np.uint8)
    w.add_tensor("q4k", q4k, raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


class Blob(bytes):
    """Input bytes that hypothesis reports by size and hash, not byte by byte."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes, sha256 {hashlib.sha256(self).hexdigest()[:16]}>"


def _fuzz(target: str, structured: bool, data: st.DataObject, work: Path) -> None:
    index = data.draw(st.integers(0, len(SEEDS[target]) - 1), label="seed")
    raw, side_files = SEEDS[target][index]
    mutate = STRUCTURED[target] if structured else fuzzing.byte_mutations
    fuzzing.run_input(target, data.draw(mutate(Blob(raw)).map(Blob), label="input"), work, side_files)


@pytest.mark.parametrize("target", list(STRUCTURED))
@FUZZ
@given(data=st.data())
def test_byte_mutations(target: str, data: st.DataObject, tmp_path_factory) -> None:
    _fuzz(target, False, data, tmp_path_factory.getbasetemp() / f"fuzz-{target}-bytes")


@pytest.mark.parametrize("target", list(STRUCTURED))
@FUZZ
@given(data=st.data())
def test_structured_mutations(target: str, data: st.DataObject, tmp_path_factory) -> None:
    _fuzz(target, True, data, tmp_path_factory.getbasetemp() / f"fuzz-{target}-fields")


class _Misbehaving(ckptkit.Checkpoint):
    """A reader with one fault, to show the harness reports it."""

    def __init__(self, path: Path, fault: str) -> None:
        super().__init__(path)
        self.fault = fault

    def tensor_infos(self) -> list[ckptkit.TensorInfo]:
        if self.fault == "foreign":
            raise RuntimeError("not a ckptkit error")
        while self.fault == "hang":
            pass
        return [ckptkit.TensorInfo("w", by_name("uint8"), (2**31,))]

    def read_tensor(self, name: str) -> np.ndarray:
        return np.ones(2**31, np.uint8)  # 2 GiB, more than the harness's headroom


@pytest.mark.parametrize(
    ("fault", "reported_as"),
    [("foreign", RuntimeError), ("hang", fuzzing.InputTimeout), ("trusted_size", fuzzing.HarnessFailure)],
)
def test_the_harness_reports_foreign_errors_hangs_and_trusted_sizes(fault, reported_as, tmp_path, monkeypatch):
    monkeypatch.setattr(fuzzing, "DEADLINE_SECONDS", 0.5)
    (tmp_path / "out").mkdir()
    with pytest.raises(reported_as):
        fuzzing.exercise(tmp_path / "x", tmp_path / "out", lambda p: _Misbehaving(p, fault), convert=False)
