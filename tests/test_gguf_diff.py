"""Quantization drift: a float checkpoint diffed against GGUF quantizations of it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import ckptkit
from tests.gguf_files import Q, gguf, write_gguf


def _base() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "layers.0.mlp.weight": rng.standard_normal((64, 128)).astype(np.float32),
        "layers.1.mlp.weight": rng.standard_normal((64, 128)).astype(np.float32),
        "layers.0.norm.weight": rng.standard_normal(128).astype(np.float32),
    }


def _quantized(tmp_path, base, qtype) -> tuple:
    tensors = []
    for name, arr in base.items():
        if arr.ndim == 2:
            tensors.append((name, gguf.quants.quantize(arr, qtype), qtype))
        else:
            tensors.append((name, arr, None))
    return write_gguf(tmp_path / f"model-{qtype.name}.gguf", tensors)


def test_diff_reports_each_tensors_quantization_error_and_stored_size(tmp_path):
    base = _base()
    ckptkit.save(base, tmp_path / "model.safetensors")
    path = _quantized(tmp_path, base, Q.Q4_0)
    report = ckptkit.diff(tmp_path / "model.safetensors", path)
    assert report.summary()["compared"] == 3
    reader = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    for name, a in base.items():
        t = next(x for x in report.tensors if x.name == name)
        m = t.metrics
        assert m is not None
        if a.ndim == 1:
            assert t.storage_b is None and m["rel_l2"] == 0 and m["snr_db"] == math.inf
            continue
        b = gguf.quants.dequantize(reader[name].data, Q.Q4_0).astype(np.float64)
        err = np.linalg.norm(a - b)
        assert t.storage_b == "Q4_0" and t.bytes_b == a.size // 32 * 18 and t.bytes_a == a.nbytes
        assert m["rel_l2"] == pytest.approx(err / np.linalg.norm(a), rel=1e-6)
        assert m["max_abs"] == pytest.approx(np.abs(a - b).max(), rel=1e-6)
        assert m["snr_db"] == pytest.approx(20 * np.log10(np.linalg.norm(a) / err), rel=1e-6)
        assert 0.99 < m["cosine"] < 1
    size = report.size_change()
    assert report.b.bytes_by_dtype == {"Q4_0": 2 * 64 * 128 // 32 * 18, "float32": 128 * 4}
    assert size["bytes"] == report.b.bytes - report.a.bytes < 0
    groups = {g.storage: g for g in report.by_storage()}
    assert set(groups) == {"Q4_0", "float32"} and groups["Q4_0"].tensors == 2
    data = report.to_dict()
    tensor = next(t for t in data["tensors"] if t["name"] == "layers.0.mlp.weight")
    assert tensor["storage_b"] == "Q4_0" and tensor["metrics"]["snr_db"] > 10
    md = report.to_markdown()
    assert "#### Drift by quantization type" in md and "`Q4_0`" in md and "float32 → Q4_0" in md
    assert "Drift by quantization type" in report.to_html()


def test_diff_json_matches_its_schema_with_quantized_sides(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from importlib.resources import files

    base = _base()
    ckptkit.save(base, tmp_path / "model.safetensors")
    path = _quantized(tmp_path, base, Q.Q8_0)
    data = json.loads(ckptkit.diff(tmp_path / "model.safetensors", path).to_json())
    schema = json.loads(files("ckptkit.diffing").joinpath("schema.json").read_text())
    jsonschema.validate(data, schema)


def test_fail_on_gates_a_coarse_quantization_and_passes_a_fine_one(tmp_path, cli):
    base = _base()
    ckptkit.save(base, tmp_path / "model.safetensors")
    q8, q4 = _quantized(tmp_path, base, Q.Q8_0), _quantized(tmp_path, base, Q.Q4_0)
    ok = cli("diff", tmp_path / "model.safetensors", q8, "--fail-on", "rel_l2>0.05")
    bad = cli("diff", tmp_path / "model.safetensors", q4, "--fail-on", "rel_l2>0.05", "--markdown")
    assert ok.code == 0, ok.stderr
    assert bad.code == 1, bad.stderr
    assert "Drift by quantization type" in bad.stdout and "threshold violation" in bad.stdout
    snr = cli("diff", tmp_path / "model.safetensors", q8, "--fail-on", "snr_db<30")
    assert snr.code == 0, snr.stdout + snr.stderr  # Q8_0 keeps ~40 dB on Gaussian weights
