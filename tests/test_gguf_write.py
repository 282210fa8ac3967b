"""GGUF writing, read back by gguf-py's GGUFReader: plain tensors, Q8_0/Q4_0 quantization, GGUF to GGUF."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import ckptkit
from ckptkit.core.errors import UnsupportedError, UsageError
from ckptkit.core.model import MemoryCheckpoint
from ckptkit.formats.gguf import write as gguf_write
from tests.gguf_files import Q, gguf, write_gguf
from tests.helpers import write_read


def _gguf_py(path) -> dict:
    """name -> (ggml type name, numpy shape, stored bytes) as gguf-py's reader sees the file."""
    reader = gguf.GGUFReader(str(path))
    return {
        t.name: (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)), t.data.tobytes()) for t in reader.tensors
    }


def test_plain_tensors_round_trip_and_read_back_in_gguf_py(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((2, 3, 4)).astype(np.float16),
        "bf16": rng.standard_normal((4, 8)).astype(ml_dtypes.bfloat16),
        "f64": rng.standard_normal(7),
        "i8": rng.integers(-128, 127, (5,), dtype=np.int8),
        "i16": rng.integers(-999, 999, (2, 2), dtype=np.int16),
        "i32": rng.integers(-(2**31), 2**31 - 1, (3,), dtype=np.int32),
        "i64": rng.integers(-(2**62), 2**62, (1, 2, 3, 1)),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }
    path = tmp_path / "plain.gguf"
    write_read(arrays, path)
    seen = _gguf_py(path)
    expected_types = {"f32": "F32", "f16": "F16", "bf16": "BF16", "f64": "F64", "i8": "I8", "i16": "I16",
                      "i32": "I32", "i64": "I64", "scalar": "F32", "empty": "F32"}  # fmt: skip
    for name, arr in arrays.items():
        ggml_type, shape, raw = seen[name]
        assert ggml_type == expected_types[name], name
        assert raw == arr.tobytes(), name
        if arr.ndim:
            assert shape == arr.shape, name


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0])
def test_quantized_writing_is_bit_exact_with_gguf_py(qtype, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    arrays = {
        "blk.0.ffn_up.weight": rng.standard_normal((37, 96)).astype(np.float16),
        "blk.0.attn_norm.weight": rng.standard_normal(96).astype(np.float32),
        "odd.weight": rng.standard_normal((4, 20)).astype(np.float32),  # rows not whole blocks: kept
        "ids": np.arange(6, dtype=np.int32).reshape(2, 3),
    }
    ckptkit.save(arrays, tmp_path / "src.safetensors")
    monkeypatch.setattr(gguf_write, "_BAND_ELEMENTS", 5 * 96)  # several bands, the last one short
    receipt = ckptkit.convert(tmp_path / "src.safetensors", tmp_path / "q.gguf", dtype=qtype.name.lower())
    assert receipt.verified and any(f"1 tensor(s) quantized to {qtype.name}" in n for n in receipt.notes)
    seen = _gguf_py(tmp_path / "q.gguf")
    matrix = arrays["blk.0.ffn_up.weight"]
    want = gguf.quants.quantize(matrix.astype(np.float32), qtype)
    assert seen["blk.0.ffn_up.weight"] == (qtype.name, matrix.shape, want.tobytes())
    assert seen["blk.0.attn_norm.weight"][0] == "F32" and seen["odd.weight"][0] == "F32" and seen["ids"][0] == "I32"
    with ckptkit.load(tmp_path / "q.gguf") as ckpt:
        got = ckpt.read_tensor("blk.0.ffn_up.weight")
        assert got.tobytes() == gguf.quants.dequantize(want, qtype).tobytes()


def test_gguf_to_gguf_keeps_blocks_and_typed_metadata(tmp_path):
    rng = np.random.default_rng(2)
    q4k = rng.integers(0, 256, (3, 144 * 2), dtype=np.uint8)
    q4k[:, :4] = [0, 0x3C, 0, 0x3C]
    fields = {"general.name": "tiny", "llama.block_count": 2, "llama.rope.freq_base": 10000.0,
              "tokenizer.ggml.tokens": ["a", "b", "c"], "tokenizer.ggml.scores": [0.5, 1.5, 2.5]}  # fmt: skip
    q8 = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), Q.Q8_0)
    norm = rng.standard_normal(8).astype(np.float32)
    tensors = [
        ("blk.0.attn_q.weight", q4k, Q.Q4_K),
        ("output_norm.weight", norm, None),
        ("blk.0.ffn_up.weight", q8, Q.Q8_0),
    ]
    src = write_gguf(tmp_path / "src.gguf", tensors, fields=fields)
    receipt = ckptkit.convert(src, tmp_path / "copy.gguf", dtype="q4_0", exclude=["blk.0.ffn_up.weight"])
    assert receipt.verified and any("1 quantized tensor(s) copied block for block" in n for n in receipt.notes)
    before, after = _gguf_py(src), _gguf_py(tmp_path / "copy.gguf")
    assert after == {k: v for k, v in before.items() if k != "blk.0.ffn_up.weight"}
    old, new = gguf.GGUFReader(str(src)).fields, gguf.GGUFReader(str(tmp_path / "copy.gguf")).fields
    for key in ["general.architecture", *fields]:
        assert new[key].types == old[key].types, key
        assert new[key].contents() == old[key].contents(), key


def test_tied_weights_keep_their_alias(tmp_path):
    w = np.arange(8, dtype=np.float32).reshape(2, 4)
    ckpt = MemoryCheckpoint({"embed.weight": w}, aliases={"lm_head.weight": "embed.weight"})
    ckptkit.save(ckpt, tmp_path / "tied.gguf")
    assert list(_gguf_py(tmp_path / "tied.gguf")) == ["embed.weight"]
    with ckptkit.load(tmp_path / "tied.gguf") as back:
        assert back.aliases == {"lm_head.weight": "embed.weight"}


def test_what_gguf_cannot_hold_is_refused_with_the_remedy(tmp_path):
    with pytest.raises(UnsupportedError, match=r"'flags' is bool, which GGUF cannot hold.*--exclude"):
        ckptkit.save({"flags": np.ones(3, bool)}, tmp_path / "x.gguf")
    with pytest.raises(UnsupportedError, match=r"'video' has 5 dimensions, and GGUF holds at most 4"):
        ckptkit.save({"video": np.ones((1, 2, 1, 2, 1), np.float32)}, tmp_path / "x.gguf")
    ckptkit.save({"w": np.ones((2, 32), np.float32)}, tmp_path / "w.safetensors")
    with pytest.raises(UsageError, match="--dtype q8_0 is a GGUF quantization: it needs GGUF output"):
        ckptkit.convert(tmp_path / "w.safetensors", tmp_path / "y.safetensors", dtype="q8_0")
    with pytest.raises(UsageError, match="q8_0 or q4_0"):
        ckptkit.convert(tmp_path / "w.safetensors", tmp_path / "y.gguf", options={"quantize": "q2_k"})
    assert not list(tmp_path.glob("x.gguf")) and not list(tmp_path.glob("y.*"))


@pytest.mark.parametrize("to", [[], ["--to", "torch"]], ids=["safetensors", "torch"])
def test_dtype_q8_0_for_another_format_says_it_is_for_gguf_output(tmp_path, cli, to):
    from tests.conftest import assert_one_line_error

    ckptkit.save({"w": np.ones((4, 32), np.float32)}, tmp_path / "m.safetensors")
    out = tmp_path / "out.safetensors"
    res = cli("convert", tmp_path / "m.safetensors", out, *to, "--dtype", "Q8_0")
    assert_one_line_error(
        res, "--dtype q8_0 is a GGUF quantization", "--to gguf", "not torch" if to else "not safetensors"
    )
    assert "--quantize" not in res.stderr and not out.exists()


def test_dtype_of_a_gguf_type_ckptkit_cannot_write_names_what_can(tmp_path, cli):
    from tests.conftest import assert_one_line_error

    ckptkit.save({"w": np.ones((4, 256), np.float32)}, tmp_path / "m.safetensors")
    res = cli("convert", tmp_path / "m.safetensors", tmp_path / "m.gguf", "--dtype", "q4_k")
    assert_one_line_error(res, "--dtype q4_k", "q8_0 or q4_0 only", "llama-quantize")
    ok = cli("convert", tmp_path / "m.safetensors", tmp_path / "m.gguf", "--dtype", "q4_0")
    assert ok.code == 0, ok.stderr
    assert gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors[0].tensor_type == Q.Q4_0
