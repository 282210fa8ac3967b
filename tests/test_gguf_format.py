"""GGUF reading, checked against gguf-py (files it writes, values as it dequantizes them) and hostile headers."""

from __future__ import annotations

import json
import struct
import sys

import ml_dtypes
import numpy as np
import pytest

from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, MissingDependencyError, UnsupportedError
from ckptkit.formats.gguf import read as gguf_read
from ckptkit.formats.gguf.verify import check_structure
from ckptkit.registry import detect, open_checkpoint
from tests.gguf_files import (
    PLAIN_TYPES,
    Q,
    dequantizable_types,
    gguf,
    gguf_string,
    quantizable_types,
    raw_header,
    tensor_info,
    write_gguf,
)


def _same_bits(got: np.ndarray, want: np.ndarray) -> bool:
    return got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == np.ascontiguousarray(want).tobytes()


def _reference(path) -> dict[str, np.ndarray]:
    """Every tensor as gguf-py's reader and dequantizer give it, float32 for quantized ones."""
    reader = gguf.GGUFReader(str(path))
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}


def test_every_type_gguf_py_quantizes_reads_as_gguf_py_dequantizes(tmp_path):
    rng = np.random.default_rng(0)
    types = quantizable_types()
    assert {Q.Q8_0, Q.Q4_0, Q.Q5_1, Q.TQ2_0} <= set(types)
    tensors = []
    for qtype in types:
        values = rng.standard_normal((3, 512)).astype(np.float32)
        tensors.append((f"w.{qtype.name}", gguf.quants.quantize(values, qtype), qtype))
    path = write_gguf(tmp_path / "q.gguf", tensors)
    want = _reference(path)
    with open_checkpoint(path) as ckpt:
        types_meta = json.loads(ckpt.metadata["gguf:types"])
        for qtype in types:
            name = f"w.{qtype.name}"
            info = ckpt.info(name)
            assert (info.dtype.name, info.shape) == ("float32", (3, 512))
            assert types_meta[name] == qtype.name and ckpt.stored_type(name) == qtype.name
            assert _same_bits(ckpt.read_tensor(name), want[name]), name


def test_every_type_gguf_py_dequantizes_reads_alike_from_arbitrary_blocks(tmp_path):
    # K-quants, IQ and the rest cannot be made by gguf-py; arbitrary block bytes still decode one way.
    rng = np.random.default_rng(1)
    types = dequantizable_types()
    assert {Q.Q4_K, Q.Q6_K, Q.IQ4_XS, Q.IQ2_XXS, Q.MXFP4} <= set(types)
    tensors = []
    for qtype in types:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (2, 2 * size), dtype=np.uint8)
        raw[:, :2] = [0x00, 0x3C]  # a finite leading scale (1.0 in float16) where the type has one
        tensors.append((f"b.{qtype.name}", raw, qtype))
    path = write_gguf(tmp_path / "blocks.gguf", tensors)
    want = _reference(path)
    with open_checkpoint(path) as ckpt:
        for qtype in types:
            name = f"b.{qtype.name}"
            block = gguf.GGML_QUANT_SIZES[qtype][0]
            assert ckpt.info(name).shape == (2, 2 * block)
            assert _same_bits(ckpt.read_tensor(name), want[name]), name


def test_plain_types_read_as_stored_and_lazily(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {}
    for qtype, np_type in PLAIN_TYPES.items():
        if np.dtype(np_type).kind == "f":
            arrays[qtype.name] = rng.standard_normal((2, 3, 4)).astype(np_type)
        else:
            arrays[qtype.name] = rng.integers(-100, 100, (5, 7)).astype(np_type)
    bf16 = rng.standard_normal((4, 8)).astype(ml_dtypes.bfloat16)
    path = write_gguf(
        tmp_path / "plain.gguf",
        [*((n, a, None) for n, a in arrays.items()), ("BF16", bf16.view(np.uint16), Q.BF16)],
    )
    arrays["BF16"] = bf16
    with open_checkpoint(path) as ckpt:
        assert ckpt.format_name == "gguf" and "gguf:types" not in ckpt.metadata
        for name, want in arrays.items():
            assert _same_bits(ckpt.read_tensor(name), want), name
            extent = ckpt.raw_extent(name)
            assert (
                extent is not None
                and path.read_bytes()[extent.offset : extent.offset + extent.nbytes] == want.tobytes()
            )


@pytest.mark.parametrize("parallel_from", [2, 10**9], ids=["on-worker-threads", "serial"])
def test_large_tensors_dequantize_in_bands_with_the_same_bits(parallel_from, tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    values = rng.standard_normal((37, 256)).astype(np.float32)
    path = write_gguf(tmp_path / "band.gguf", [("w", gguf.quants.quantize(values, Q.Q4_0), Q.Q4_0)])
    monkeypatch.setattr(gguf_read, "_BAND_ELEMENTS", 3 * 256)  # 13 bands, the last one short
    monkeypatch.setattr(gguf_read, "_PARALLEL_BANDS", parallel_from)
    monkeypatch.setenv("CKPTKIT_WORKERS", "2")
    with open_checkpoint(path) as ckpt:
        assert _same_bits(ckpt.read_tensor("w"), _reference(path)["w"])


def test_metadata_is_kept_and_long_arrays_summarised(tmp_path, cli):
    fields = {"general.name": "tiny", "llama.block_count": 2, "llama.rope.freq_base": 10000.0,
              "tokenizer.ggml.tokens": [f"tok{i}" for i in range(300)], "llama.sections": [1, 2, 3]}  # fmt: skip
    path = write_gguf(tmp_path / "m.gguf", [("w", np.ones((2, 2), np.float32), None)], fields=fields)
    with open_checkpoint(path) as ckpt:
        meta = ckpt.metadata
        assert meta["gguf:general.architecture"] == "llama"
        assert meta["gguf:general.name"] == "tiny"
        assert meta["gguf:llama.block_count"] == "2"
        assert meta["gguf:llama.rope.freq_base"] == "10000.0"
        assert meta["gguf:tokenizer.ggml.tokens"] == "300 strings"
        assert meta["gguf:llama.sections"] == "[1, 2, 3]"
        assert meta["gguf:version"] == "3"
        tokens = next(f for f in ckpt.fields if f.key == "tokenizer.ggml.tokens")
        assert tokens.value[299] == "tok299"
    result = cli("inspect", path)
    assert result.code == 0 and "tokenizer.ggml.tokens = 300 strings" in result.stdout


def test_detected_from_bytes_whatever_the_name(tmp_path):
    path = write_gguf(tmp_path / "model.bin", [("w", np.ones(4, np.float32), None)])
    assert detect(path).name == "gguf"


def test_only_types_without_a_kernel_of_ckptkit_need_gguf_py(tmp_path, monkeypatch):
    ints = np.arange(-15, 17, dtype=np.float32).reshape(1, 32)
    ints[0, 0] = 127  # scale 1: every value is stored exactly
    q8 = gguf.quants.quantize(ints, Q.Q8_0)
    tq2 = gguf.quants.quantize(np.ones((1, 256), np.float32), Q.TQ2_0)
    path = write_gguf(tmp_path / "q.gguf", [("plain", np.ones(4, np.float32), None), ("q", q8, Q.Q8_0),
                                            ("t", tq2, Q.TQ2_0)])  # fmt: skip
    monkeypatch.setitem(sys.modules, "gguf", None)
    with open_checkpoint(path) as ckpt:
        assert ckpt.info("q").shape == (1, 32)
        assert ckpt.read_tensor("plain").tolist() == [1.0] * 4
        assert ckpt.read_tensor("q").tolist() == ints.tolist()  # Q8_0 is decoded by ckptkit itself
        with pytest.raises(MissingDependencyError, match=r"pip install 'ckptkit\[gguf\]'"):
            ckpt.read_tensor("t")


_KV_U8 = gguf_string("k") + struct.pack("<IB", 0, 1)


def _nested(depth: int) -> bytes:
    return gguf_string("deep") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 0, 0)


HOSTILE = {
    "a billion tensors": (raw_header(10**9, 0), "gguf.counts", "over ckptkit's limit"),
    "more tensors than bytes": (raw_header(1000, 0), "gguf.counts", "cannot fit"),
    "2^40 metadata entries": (raw_header(0, 2**40), "gguf.counts", "cannot fit"),
    "a 2^60-byte string": (
        raw_header(0, 1, gguf_string("k", 2**60) + b"\0" * 16),
        "gguf.truncated",
        "ends inside the header",
    ),
    "a 2^50-element array": (
        raw_header(0, 1, gguf_string("k") + struct.pack("<IIQ", 9, 0, 2**50)),
        "gguf.counts",
        "cannot fit",
    ),
    "arrays nested past the limit": (raw_header(0, 1, _nested(300)), "gguf.counts", "nesting"),
    "an unknown value type": (
        raw_header(0, 1, gguf_string("k") + struct.pack("<IQ", 99, 0)),
        "gguf.metadata",
        "value type 99",
    ),
    "a key that is not UTF-8": (
        raw_header(0, 1, gguf_string(b"\xff\xfe") + struct.pack("<IB", 0, 1)),
        "gguf.metadata",
        "UTF-8",
    ),
    "a repeated key": (raw_header(0, 2, _KV_U8 * 2), "gguf.metadata", "twice"),
    "an alignment of 3": (
        raw_header(0, 1, gguf_string("general.alignment") + struct.pack("<II", 4, 3)),
        "gguf.alignment",
        "power of two",
    ),
    "version 1": (raw_header(0, 0, version=1), "gguf.version", "obsolete"),
    "a big-endian file": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "gguf.version", "big-endian"),
    "version 7": (raw_header(0, 0, version=7), "gguf.version", "version 7"),
    "a cut header": (raw_header(1, 0, tensor_info("t", (4,), 0, 0))[:-3], "gguf.truncated", "ends inside"),
    "five dimensions": (raw_header(1, 0, tensor_info("t", (1, 1, 1, 1, 1), 0, 0)), "gguf.tensor", "at most 4"),
    "an unknown ggml type": (raw_header(1, 0, tensor_info("t", (4,), 77, 0)), "gguf.tensor", "ggml type 77"),
    "rows not whole blocks": (raw_header(1, 0, tensor_info("t", (33,), 8, 0)), "gguf.tensor", "Q8_0 blocks"),
    "a quantized scalar": (raw_header(1, 0, tensor_info("t", (), 8, 0)) + b"\0" * 64, "gguf.tensor", "Q8_0 blocks"),
    "an impossible size": (raw_header(1, 0, tensor_info("t", (2**40, 2**40), 0, 0)), "gguf.tensor", "not a possible"),
    "data past the end": (
        raw_header(1, 0, tensor_info("t", (1024,), 0, 0)) + b"\0" * 64,
        "gguf.truncated",
        "which holds",
    ),
    "an unaligned offset": (
        raw_header(1, 0, tensor_info("t", (4,), 0, 3)) + b"\0" * 64,
        "gguf.offset",
        "not a multiple",
    ),
    "a tensor listed twice": (raw_header(2, 0, tensor_info("t", (4,), 0, 0) * 2) + b"\0" * 64, "gguf.tensor", "twice"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_headers_are_refused_before_allocating(case, tmp_path):
    data, check, fragment = HOSTILE[case]
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data)
    with pytest.raises(CkptkitError, match=fragment) as err:
        open_checkpoint(path).close()
    assert isinstance(err.value, (CorruptCheckpointError, UnsupportedError))
    findings = check_structure(path)
    assert check in {f.check for f in findings}, findings


def test_verify_reports_overlapping_tensors_readers_accept(tmp_path, cli):
    body = tensor_info("a", (8,), 0, 0) + tensor_info("b", (8,), 0, 0)
    head = raw_header(2, 0, body)
    data = head + b"\0" * (-len(head) % 32) + np.arange(8, dtype=np.float32).tobytes()
    path = tmp_path / "overlap.gguf"
    path.write_bytes(data)
    with open_checkpoint(path) as ckpt:
        assert ckpt.read_tensor("b").tolist() == list(range(8))
    assert [f.check for f in check_structure(path)] == ["gguf.overlap"]
    result = cli("verify", path)
    assert result.code != 0 and "overlaps" in result.stdout + result.stderr


def test_verify_passes_files_gguf_py_writes(tmp_path, cli):
    path = write_gguf(tmp_path / "ok.gguf", [("w", gguf.quants.quantize(np.ones((2, 64), np.float32), Q.Q4_0), Q.Q4_0)])
    assert check_structure(path) == []
    assert cli("verify", path).code == 0
