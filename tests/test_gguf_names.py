"""Hugging Face <-> GGUF names and the llama q/k permutation: a tiny llama diffed against its llama.cpp-style GGUF."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ckptkit
from ckptkit.core.errors import UsageError
from tests.gguf_files import Q, gguf

N_HEAD, N_KV, HIDDEN, LAYERS = 4, 2, 64, 2


def _llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    # As convert_hf_to_gguf.py's LlamaModel.permute: the reference the converter applies to q and k.
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory) -> tuple:
    """A random tiny LlamaForCausalLM saved by transformers: model.safetensors and config.json."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=N_HEAD, num_key_value_heads=N_KV, tie_word_embeddings=False,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder, safe_serialization=True)
    with ckptkit.load(folder / "model.safetensors") as ckpt:
        weights = {n: np.array(ckpt.read_tensor(n)) for n in ckpt.names()}
    return folder, weights


def _as_llama_cpp(path, weights: dict[str, np.ndarray], permuted: bool = True, qtype=Q.Q8_0):
    """The GGUF llama.cpp's converter writes: GGUF names, permuted q/k, F32 1-D tensors, ``qtype`` matrices."""
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == "llama")
    tmap = gguf.get_tensor_name_map(arch, LAYERS)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    for name, arr in weights.items():
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        data = arr.astype(np.float32)
        if permuted and name.endswith("q_proj.weight"):
            data = _llama_cpp_permute(data, N_HEAD, N_HEAD)
        elif permuted and name.endswith("k_proj.weight"):
            data = _llama_cpp_permute(data, N_HEAD, N_KV)
        if data.ndim == 1:
            w.add_tensor(new, data)
        else:
            w.add_tensor(new, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("permuted", [True, False], ids=["llama.cpp-permuted", "stored-unpermuted"])
def test_every_tensor_pairs_and_qk_drift_is_at_quantization_level(hf_model, tmp_path, permuted):
    folder, weights = hf_model
    path = _as_llama_cpp(tmp_path / "tiny-Q8_0.gguf", weights, permuted)
    report = ckptkit.diff(folder / "model.safetensors", path)
    summary = report.summary()
    assert (summary["compared"], summary["only_a"], summary["only_b"]) == (len(weights), 0, 0)
    drift = {t.name: t.metrics["rel_l2"] for t in report.compared}
    v = drift["model.layers.1.self_attn.v_proj.weight"]
    assert 0 < v < 0.01  # Q8_0's error on Gaussian weights
    for proj in ("q_proj", "k_proj"):
        assert drift[f"model.layers.1.self_attn.{proj}.weight"] < 2 * v, proj
    assert all(drift[n] == 0 for n in weights if weights[n].ndim == 1)  # F32 norms, exact
    q = next(t for t in report.compared if t.name == "model.layers.1.self_attn.q_proj.weight")
    assert q.storage_b == "Q8_0" and q.shape_a == q.shape_b == (HIDDEN, HIDDEN)


def test_the_permutation_is_what_makes_q_match(hf_model, tmp_path):
    from ckptkit.formats.gguf.names import gguf_to_hf, permute, unpermute

    folder, weights = hf_model
    path = _as_llama_cpp(tmp_path / "tiny.gguf", weights)
    hf_q = weights["model.layers.1.self_attn.q_proj.weight"]
    assert np.array_equal(unpermute(permute(hf_q, N_HEAD), N_HEAD), hf_q)
    assert np.array_equal(permute(hf_q, N_HEAD), _llama_cpp_permute(hf_q, N_HEAD, N_HEAD))
    with ckptkit.load(folder / "model.safetensors") as hf, ckptkit.load(path) as q8:
        view = gguf_to_hf(q8, hf)
        assert view is not None
        as_stored = q8.read_tensor("blk.1.attn_q.weight")
        put_back = view.read_tensor("model.layers.1.self_attn.q_proj.weight")

    def rel(x: np.ndarray) -> float:
        return float(np.linalg.norm(x - hf_q) / np.linalg.norm(hf_q))

    assert rel(as_stored) > 0.5 and rel(put_back) < 0.01


def test_renamed_and_permuted_tensors_read_span_by_span_as_whole(hf_model, tmp_path, monkeypatch):
    from ckptkit.formats.gguf.names import gguf_to_hf
    from ckptkit.formats.gguf.read import GGUFCheckpoint

    folder, weights = hf_model
    path = _as_llama_cpp(tmp_path / "tiny.gguf", weights, qtype=Q.Q4_0)
    with ckptkit.load(folder / "model.safetensors") as hf, ckptkit.load(path) as q4:
        view = gguf_to_hf(q4, hf)
        assert view is not None
        for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                     "model.layers.0.mlp.up_proj.weight"):  # fmt: skip
            whole = view.read_tensor(name).reshape(-1).copy()
            read = view.span_reader(name)
            assert read is not None, name
            for start, stop in [
                (0, whole.size),
                (0, 64),
                (64, 200),
                (1000, 1001),
                (130, 2100),
                (whole.size - 5, whole.size),
            ]:
                assert read(start, stop).tobytes() == whole[start:stop].tobytes(), (name, start, stop)
    spans = ckptkit.diff(folder / "model.safetensors", path).to_dict()
    monkeypatch.setattr(GGUFCheckpoint, "span_reader", lambda self, name: None)
    whole_tensors = ckptkit.diff(folder / "model.safetensors", path).to_dict()
    assert spans["tensors"] == whole_tensors["tensors"] and spans["summary"]["compared"] == len(weights)


def test_layout_gguf_writes_what_llama_cpps_converter_writes(hf_model, tmp_path):
    folder, weights = hf_model
    receipt = ckptkit.convert(folder / "model.safetensors", tmp_path / "tiny.gguf", layout="gguf")
    assert receipt.verified
    assert receipt.renamed["blk.0.attn_q.weight"] == "model.layers.0.self_attn.q_proj.weight"
    assert "q/k rows permuted" in receipt.transformed["blk.1.attn_k.weight"]
    reader = gguf.GGUFReader(str(tmp_path / "tiny.gguf"))
    stored = {t.name: np.array(t.data) for t in reader.tensors}
    assert (
        stored["blk.1.attn_k.weight"].tobytes()
        == _llama_cpp_permute(weights["model.layers.1.self_attn.k_proj.weight"], N_HEAD, N_KV).tobytes()
    )
    assert stored["token_embd.weight"].tobytes() == weights["model.embed_tokens.weight"].tobytes()
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.attention.head_count_kv"].contents() == N_KV
    assert fields["llama.attention.head_count_kv"].types == [gguf.GGUFValueType.UINT32]
    back = ckptkit.diff(folder / "model.safetensors", tmp_path / "tiny.gguf", fail_on=["max_abs>0,missing"])
    assert back.passed and back.summary()["compared"] == len(weights)


def test_layout_gguf_with_q8_0_quantizes_the_permuted_rows(hf_model, tmp_path):
    folder, weights = hf_model
    ckptkit.convert(folder / "model.safetensors", tmp_path / "q8.gguf", layout="gguf", dtype="q8_0")
    stored = {t.name: (t.tensor_type, np.array(t.data)) for t in gguf.GGUFReader(str(tmp_path / "q8.gguf")).tensors}
    q = _llama_cpp_permute(weights["model.layers.0.self_attn.q_proj.weight"], N_HEAD, N_HEAD)
    assert stored["blk.0.attn_q.weight"][0] == Q.Q8_0
    assert stored["blk.0.attn_q.weight"][1].tobytes() == gguf.quants.quantize(q, Q.Q8_0).tobytes()
    assert stored["blk.0.attn_norm.weight"][0] == Q.F32


def test_layout_gguf_needs_the_config(tmp_path):
    ckptkit.save({"model.layers.0.self_attn.q_proj.weight": np.ones((8, 8), np.float32)}, tmp_path / "m.safetensors")
    with pytest.raises(UsageError, match=r"config\.json"):
        ckptkit.convert(tmp_path / "m.safetensors", tmp_path / "m.gguf", layout="gguf")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(UsageError, match="no-such-arch"):
        ckptkit.convert(tmp_path / "m.safetensors", tmp_path / "m.gguf", layout="gguf")


def test_diff_several_quantizations_against_one_base(hf_model, tmp_path, cli):
    """``diff BASE Q8_0 Q4_0``: one report, every tensor paired in each, Q4_0 drifting more than Q8_0."""
    folder, weights = hf_model
    base = folder / "model.safetensors"
    q8 = _as_llama_cpp(tmp_path / "tiny-Q8_0.gguf", weights, qtype=Q.Q8_0)
    q4 = _as_llama_cpp(tmp_path / "tiny-Q4_0.gguf", weights, qtype=Q.Q4_0)
    res = cli("diff", base, q8, q4, "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["schema"] == "ckptkit.diff-candidates/1" and data["passed"] is True
    c8, c4 = data["candidates"]
    assert (c8["path"], c4["path"]) == (str(q8), str(q4))
    for c in (c8, c4):
        assert (c["summary"]["compared"], c["summary"]["only_a"], c["summary"]["only_b"]) == (len(weights), 0, 0)
        assert c["report"]["schema"] == "ckptkit.diff/1" and len(c["worst_layers"]) == 3
        assert c["bytes"] < data["base"]["bytes"] and c["size_change"]["bytes"] < 0
    assert c4["total"]["rel_l2"] > 3 * c8["total"]["rel_l2"] > 0
    assert c4["total"]["snr_db"] < c8["total"]["snr_db"] and c4["total"]["max_abs"] > c8["total"]["max_abs"]
    assert c4["bytes"] < c8["bytes"]
    # The same figures as diffing each candidate alone.
    alone = ckptkit.diff(base, q4).to_dict()
    assert c4["total"] == json.loads(ckptkit.diff(base, q4).to_json())["total"]
    assert c4["report"]["tensors"] == json.loads(json.dumps(alone["tensors"]))
    layers = {x["name"]: x["metrics"] for x in data["layers"]}
    assert "model.layers.1" in layers
    for metrics in layers.values():
        assert len(metrics) == 2
        if metrics[0] and metrics[0]["rel_l2"]:  # layers of quantized matrices (not the exact F32 norms)
            assert metrics[1]["rel_l2"] > metrics[0]["rel_l2"]

    md = cli("diff", base, q8, q4, "--markdown")
    assert md.code == 0, md.stderr
    assert "against 2 candidates" in md.stdout and "| layer | tiny-Q8_0.gguf | tiny-Q4_0.gguf |" in md.stdout
    text = cli("diff", base, q8, q4)
    assert text.code == 0, text.stderr
    assert "candidates" in text.stdout and "tiny-Q4_0.gguf" in text.stdout and "rel L2 per layer" in text.stdout

    # --fail-on applies to every candidate: Q8_0 passes the gate, Q4_0 does not, so the command fails.
    gate = cli("diff", base, q8, q4, "--fail-on", "rel_l2>0.05", "--json")
    assert gate.code == 1, gate.stderr
    verdict = json.loads(gate.stdout)
    assert verdict["passed"] is False
    assert [c["passed"] for c in verdict["candidates"]] == [True, False] and verdict["candidates"][1]["violations"]
    md_gate = cli("diff", base, q8, q4, "--fail-on", "rel_l2>0.05", "--markdown")
    assert md_gate.code == 1 and "Outside tolerance: `tiny-Q4_0.gguf`" in md_gate.stdout
    assert cli("diff", base, q8, q8, "--fail-on", "rel_l2>0.05").code == 0
    missing = cli("diff", base, q8, tmp_path / "nope.gguf")
    assert missing.code == 2 and "nope.gguf" in missing.stderr
    html = cli("diff", base, q8, q4, "--html", tmp_path / "r.html")
    assert html.code == 2 and "--html" in html.stderr
