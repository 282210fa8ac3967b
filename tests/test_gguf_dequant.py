"""ckptkit's own GGML dequantizers against gguf-py's ``gguf.quants.dequantize``: byte-equal float32."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ckptkit.formats.gguf import dequant
from ckptkit.formats.gguf.header import GGML_TYPES
from ckptkit.registry import open_checkpoint
from tests.gguf_files import Q, gguf, quantizable_types, write_gguf

OWN_TYPES = [Q(t) for t in sorted(dequant.KERNELS)]
# Byte offsets of the float16 scales (d, dmin, m) inside each block, as the GGML block structs lay them out.
F16_AT = {Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,), Q.Q2_K: (80, 82),
          Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.IQ4_NL: (0,), Q.IQ4_XS: (0,)}  # fmt: skip
# float16 bit patterns: zeros, the largest and smallest magnitudes, Inf and NaN, ordinary values.
F16_EDGES = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x3C00, 0x2E66]
FILL_BYTES = [0x00, 0xFF, 0x80, 0x7F, 0x0F, 0xF0, 0x55, 0xAA]


def _reference(blocks: np.ndarray, qtype) -> np.ndarray:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return gguf.quants.dequantize(blocks, qtype).reshape(-1)


def _ours(blocks: np.ndarray, qtype) -> np.ndarray:
    block, _size = gguf.GGML_QUANT_SIZES[qtype]
    out = np.full(blocks.size // _size * block, 12345.0, np.float32)
    got = dequant.dequantize_into(blocks.reshape(-1), int(qtype), out)
    assert got is out
    return out


def _assert_byte_equal(blocks: np.ndarray, qtype) -> None:
    want, got = _reference(blocks, qtype), _ours(blocks, qtype)
    assert got.dtype == want.dtype == np.float32
    if got.tobytes() != want.tobytes():
        bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
        pytest.fail(f"{qtype.name}: {bad.size} values differ, first at {bad[0]}: {got[bad[0]]!r} != {want[bad[0]]!r}")


def test_kernels_cover_the_common_types_with_the_spec_block_sizes():
    assert {Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K} <= set(OWN_TYPES)
    for type_id, (block, size, _kernel) in dequant.KERNELS.items():
        assert (GGML_TYPES[type_id].block, GGML_TYPES[type_id].size) == (block, size)
        assert gguf.GGML_QUANT_SIZES[Q(type_id)] == (block, size)
    assert set(F16_AT) == set(OWN_TYPES)


@pytest.mark.parametrize("qtype", OWN_TYPES, ids=lambda q: q.name)
def test_random_blocks_byte_equal(qtype):
    _block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(int(qtype))
    blocks = rng.integers(0, 256, (300, size), dtype=np.uint8)
    # Keep most scales ordinary (random bytes are often huge or NaN as float16) so the products are exercised too.
    for at in F16_AT[qtype]:
        blocks[:250, at : at + 2] = rng.standard_normal((250, 1)).astype(np.float16).view(np.uint8)
    _assert_byte_equal(blocks, qtype)


@pytest.mark.parametrize("qtype", OWN_TYPES, ids=lambda q: q.name)
def test_edge_blocks_byte_equal(qtype):
    """Zero, subnormal, largest, Inf and NaN scales, against all-zero, all-one and patterned quants."""
    _block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows = []
    for fill in FILL_BYTES:
        for edge in F16_EDGES:
            for other in (0x3C00, edge, 0x7C00):
                b = np.full(size, fill, np.uint8)
                for k, at in enumerate(F16_AT[qtype]):
                    b[at : at + 2] = np.array([edge if k == 0 else other], np.uint16).view(np.uint8)
                rows.append(b)
    _assert_byte_equal(np.stack(rows), qtype)


@pytest.mark.parametrize("qtype", OWN_TYPES, ids=lambda q: q.name)
def test_many_chunks_and_a_partial_one(qtype):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = 2 * dequant.CHUNK_ELEMENTS // block + 3
    blocks = np.random.default_rng(7).integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for at in F16_AT[qtype]:
        blocks[:, at : at + 2] = np.array([0.01], np.float16).view(np.uint8)
    _assert_byte_equal(blocks, qtype)


def test_blocks_that_do_not_fill_the_output_are_refused():
    with pytest.raises(ValueError, match="do not fill"):
        dequant.dequantize_into(np.zeros(35, np.uint8), int(Q.Q8_0), np.empty(32, np.float32))


def test_files_gguf_py_quantized_read_byte_equal(tmp_path):
    """Tensors gguf-py quantized itself, written by its GGUFWriter, read through ckptkit's kernels."""
    rng = np.random.default_rng(3)
    types = [q for q in quantizable_types() if dequant.supported(int(q))]
    assert {Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1} <= set(types)
    tensors = []
    for qtype in types:
        values = rng.standard_normal((40, 512)).astype(np.float32)
        values[0] = 0.0  # a zero block: scale 0
        values[1, :32] = 65504.0  # the largest float16
        tensors.append((f"w.{qtype.name}", gguf.quants.quantize(values, qtype), qtype))
    path = write_gguf(tmp_path / "q.gguf", tensors)
    reader = gguf.GGUFReader(str(path))
    with open_checkpoint(path) as ckpt:
        for t in reader.tensors:
            want = _reference(np.asarray(t.data), t.tensor_type).reshape(40, 512)
            got = ckpt.read_tensor(t.name)
            assert got.dtype == np.float32 and got.shape == (40, 512)
            assert got.tobytes() == want.tobytes(), t.name


def test_span_reader_gives_the_flat_elements_of_read_tensor(tmp_path):
    """Spans at and off block boundaries, for a type with a kernel here and one left to gguf-py."""
    rng = np.random.default_rng(5)
    values = rng.standard_normal((6, 512)).astype(np.float32)
    kinds = [Q.Q4_K if Q.Q4_K in quantizable_types() else Q.Q4_0, Q.TQ2_0]
    assert not dequant.supported(int(Q.TQ2_0))
    tensors = [(f"w.{q.name}", gguf.quants.quantize(values, q), q) for q in kinds]
    tensors.append(("plain", values, None))
    path = write_gguf(tmp_path / "s.gguf", tensors)
    with open_checkpoint(path) as ckpt:
        assert ckpt.span_reader("plain") is None
        for qtype in kinds:
            name = f"w.{qtype.name}"
            whole = ckpt.read_tensor(name).reshape(-1).copy()
            read = ckpt.span_reader(name)
            assert read is not None
            for start, stop in [(0, 3072), (0, 256), (256, 768), (5, 6), (31, 300), (3000, 3072), (700, 2900)]:
                assert read(start, stop).tobytes() == whole[start:stop].tobytes(), (name, start, stop)


def test_diff_decoding_spans_reports_what_whole_tensors_give(tmp_path, monkeypatch):
    """The engine's span-by-span path gives the same figures, bit for bit, as dequantizing whole tensors."""
    import ckptkit
    from ckptkit.formats.gguf.read import GGUFCheckpoint

    rng = np.random.default_rng(9)
    base = {f"w{i}": rng.standard_normal((300, 1024)).astype(np.float32) for i in range(3)}
    base["norm"] = rng.standard_normal(1024).astype(np.float32)
    ckptkit.save(base, tmp_path / "base.safetensors")
    tensors = [(n, gguf.quants.quantize(a, Q.Q8_0), Q.Q8_0) if a.ndim == 2 else (n, a, None) for n, a in base.items()]
    path = write_gguf(tmp_path / "q.gguf", tensors)
    spans = ckptkit.diff(tmp_path / "base.safetensors", path).to_dict()
    monkeypatch.setattr(GGUFCheckpoint, "span_reader", lambda self, name: None)
    whole = ckptkit.diff(tmp_path / "base.safetensors", path).to_dict()
    assert [t["metrics"] for t in spans["tensors"]] == [t["metrics"] for t in whole["tensors"]]
    assert all(t["metrics"]["rel_l2"] > 0 for t in spans["tensors"] if t["name"] != "norm")


def test_diff_of_two_quantized_files_decodes_each_side_into_its_own_buffer(tmp_path, monkeypatch):
    """GGUF against GGUF (Q8_0 against Q4_0): both sides are decoded span by span in the same task."""
    import ckptkit
    from ckptkit.formats.gguf.read import GGUFCheckpoint

    rng = np.random.default_rng(11)
    base = {f"w{i}": rng.standard_normal((96, 512)).astype(np.float32) for i in range(2)}
    paths = {}
    for qtype in (Q.Q8_0, Q.Q4_0):
        tensors = [(n, gguf.quants.quantize(a, qtype), qtype) for n, a in base.items()]
        paths[qtype] = write_gguf(tmp_path / f"{qtype.name}.gguf", tensors)
    spans = ckptkit.diff(paths[Q.Q8_0], paths[Q.Q4_0])
    monkeypatch.setattr(GGUFCheckpoint, "span_reader", lambda self, name: None)
    whole = ckptkit.diff(paths[Q.Q8_0], paths[Q.Q4_0])
    assert [t.metrics for t in spans.compared] == [t.metrics for t in whole.compared]
    assert all(0 < t.metrics["rel_l2"] < 0.2 and t.metrics["identical"] < 0.5 for t in spans.compared)
