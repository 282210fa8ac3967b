"""ckptkit.diff: known perturbations, layers, sizes, thresholds, normalizers and threads."""

from __future__ import annotations

import json
from collections.abc import Sequence

import jsonschema
import ml_dtypes
import numpy as np
import pytest

import ckptkit
from ckptkit.core.errors import UsageError
from ckptkit.core.model import Checkpoint, MemoryCheckpoint, TensorInfo
from ckptkit.diffing import engine, schema
from tests.test_diff_metrics import assert_close_to_reference


def model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {"model.embed.weight": rng.standard_normal((300, 16)).astype(np.float16)}
    for i in range(3):
        p = f"model.layers.{i}."
        out[p + "attn.q.weight"] = rng.standard_normal((16, 16)).astype(ml_dtypes.bfloat16)
        out[p + "mlp.up.weight"] = rng.standard_normal((32, 16)).astype(np.float32)
        out[p + "norm.weight"] = np.ones(16, np.float16)
    out["model.layers.0.mlp.scale"] = rng.standard_normal(64).astype(ml_dtypes.float8_e4m3fn)
    out["steps"] = np.arange(4, dtype=np.int64)
    return out


def validate(report: ckptkit.DiffReport) -> dict:
    data = json.loads(report.to_json())
    jsonschema.validate(data, schema(), cls=jsonschema.Draft202012Validator)
    return data


def test_injected_perturbations_match_numpy(tmp_path):
    a = model()
    b = {k: v.copy() for k, v in a.items()}
    b["model.layers.1.mlp.up.weight"] = b["model.layers.1.mlp.up.weight"] * np.float32(1.001)
    q = b["model.layers.2.attn.q.weight"].astype(np.float32)
    q[3, :5] += 0.25
    b["model.layers.2.attn.q.weight"] = q.astype(ml_dtypes.bfloat16)
    b["steps"] = np.array([0, 1, 2, 10], np.int64)
    ckptkit.save(a, tmp_path / "a.safetensors")
    ckptkit.save(b, tmp_path / "b.safetensors")

    report = ckptkit.diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    validate(report)
    by_name = {t.name: t for t in report.tensors}
    for name in a:
        got = by_name[name].metrics
        assert by_name[name].status == "compared" and got is not None
        if name in ("model.layers.1.mlp.up.weight", "model.layers.2.attn.q.weight"):
            assert_close_to_reference(got, a[name], b[name])
        elif name == "steps":
            assert (got["max_abs"], got["identical"]) == (7, 0.75)
        else:
            assert (got["max_abs"], got["l2"], got["identical"]) == (0.0, 0.0, 1.0)
    up = by_name["model.layers.1.mlp.up.weight"].metrics
    assert up["rel_l2"] == pytest.approx(0.001, rel=1e-4)  # the injected 0.1 % scale, to float32 rounding
    layer = next(x for x in report.layers if x.name == "model.layers.2")
    parts = [n for n in a if n.startswith("model.layers.2.")]
    flat = lambda d: np.concatenate([d[n].astype(np.float64).ravel() for n in parts])  # noqa: E731
    assert_close_to_reference(layer.metrics, flat(a), flat(b))
    assert report.summary()["identical"] == len(a) - 3


def test_layers_sizes_and_depth():
    a = model()
    b = dict(a)
    del b["steps"]
    b["model.layers.0.norm.weight"] = a["model.layers.0.norm.weight"].astype(np.float32)
    b["model.head.weight"] = np.zeros((4, 16), np.float32)
    report = ckptkit.diff(a, b)
    assert report.depth == 2
    names = [x.name for x in report.layers]
    assert names == ["model.embed", "model.layers.0", "model.layers.1", "model.layers.2", "steps", "model.head"]
    layer0 = report.layers[1]
    assert (layer0.tensors, layer0.dtype_changed, layer0.bytes_a, layer0.bytes_b) == (
        4,
        1,
        512 + 2048 + 32 + 64,
        512 + 2048 + 64 + 64,
    )
    change = report.size_change()
    assert change["bytes_by_dtype"] == {
        "float16": -32,
        "bfloat16": 0,
        "float32": 64 + 256,
        "float8_e4m3fn": 0,
        "int64": -32,
    }
    assert change["bytes"] == report.b.bytes - report.a.bytes == -32 + 64 + 256 - 32
    assert change["parameters"] == 64 - 4
    shallow = ckptkit.diff(a, b, depth=1)
    assert [x.name for x in shallow.layers] == ["model", "steps"]
    assert sum(x.parameters_a for x in shallow.layers) == shallow.a.parameters


def test_aliases_count_once_and_compare_with_a_materialized_copy():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    tied = MemoryCheckpoint({"embed.weight": w}, aliases={"lm_head.weight": "embed.weight"})
    untied = {"embed.weight": w, "lm_head.weight": w.copy()}
    report = ckptkit.diff(tied, untied)
    by_name = {t.name: t for t in report.tensors}
    assert by_name["lm_head.weight"].alias_a == "embed.weight"
    assert by_name["lm_head.weight"].bytes_a == 0 and by_name["lm_head.weight"].bytes_b == 48
    assert all(t.metrics["identical"] == 1.0 for t in report.compared)
    assert report.a.bytes == 48 and report.b.bytes == 96


def test_thresholds_fail_on_and_tolerance_override():
    a = {"enc.w": np.ones(100, np.float32), "dec.w": np.ones(100, np.float32), "gone": np.zeros(1)}
    b = {"enc.w": a["enc.w"] * np.float32(1.00005), "dec.w": a["dec.w"] * np.float32(1.01), "new": np.zeros(1)}
    strict = ckptkit.diff(a, b, fail_on=["rel_l2>1e-3"])
    assert [(v.tensor, v.condition) for v in strict.violations] == [("dec.w", "rel_l2>1e-3")]
    assert strict.violations[0].value == pytest.approx(0.01, rel=1e-5)
    tighter = ckptkit.diff(a, b, fail_on=["rel_l2>1e-3"], tolerance=["enc.*:rel_l2<1e-5"])
    assert {(v.tensor, v.source) for v in tighter.violations} == {("dec.w", "--fail-on"), ("enc.w", "--tolerance")}
    looser = ckptkit.diff(a, b, fail_on=["rel_l2>1e-3, missing"], tolerance=["dec:rel_l2<0.1,cosine>0.99"])
    assert [(v.tensor, v.condition) for v in looser.violations] == [("gone", "missing"), ("new", "missing")]
    assert not looser.passed
    assert ckptkit.diff(a, b).passed and ckptkit.diff(a, b, fail_on=["dtype", "shape"]).passed
    data = validate(looser)
    assert data["thresholds"]["passed"] is False and len(data["thresholds"]["violations"]) == 2


@pytest.mark.parametrize(
    "fail_on",
    ["rel_l2>>1", "speed>1", "rel_l2>abc", "", "rel_l2>1,", "missin", "max_abs"],
)
def test_invalid_fail_on_is_a_usage_error(fail_on):
    with pytest.raises(UsageError, match="--fail-on"):
        ckptkit.diff({"w": np.ones(2)}, {"w": np.ones(2)}, fail_on=[fail_on])


@pytest.mark.parametrize("tolerance", ["rel_l2<1", ":rel_l2<1", "enc.*:missing", "enc.*:"])
def test_invalid_tolerance_is_a_usage_error(tolerance):
    with pytest.raises(UsageError, match="--tolerance"):
        ckptkit.diff({"w": np.ones(2)}, {"w": np.ones(2)}, tolerance=[tolerance])


def test_non_finite_values_keep_the_json_valid():
    a = {"zero": np.zeros(4, np.float32), "nan": np.array([1, np.nan, np.inf], np.float16)}
    b = {"zero": np.ones(4, np.float32), "nan": np.array([np.nan, np.nan, -np.inf], np.float16)}
    report = ckptkit.diff(a, b, fail_on=["rel_l2>0.5", "nonfinite_mismatch>0"])
    data = validate(report)
    zero = next(t for t in data["tensors"] if t["name"] == "zero")
    assert zero["metrics"]["rel_l2"] is None  # infinite: ||A|| = 0 and B differs
    nan = next(t for t in report.tensors if t.name == "nan").metrics
    assert (nan["nan_a"], nan["nan_b"], nan["nonfinite_mismatch"], nan["mean_abs"], nan["cosine"]) == (
        1,
        2,
        2,
        None,
        None,
    )
    assert {(v.tensor, v.condition) for v in report.violations} == {
        ("zero", "rel_l2>0.5"),
        ("nan", "nonfinite_mismatch>0"),
    }


def test_no_tensor_in_common():
    with pytest.raises(UsageError, match="no tensor in common"):
        ckptkit.diff({"a": np.ones(1)}, {"b": np.ones(1)})


class KerasAsTorch(Checkpoint):
    """A test normalizer's view: Keras Dense names and (in, out) kernels as PyTorch Linear weights."""

    format_name = "keras-as-torch"

    def __init__(self, base: Checkpoint) -> None:
        super().__init__(base.path)
        self.base = base
        self._source = {n.replace("/kernel", ".weight").replace("/bias", ".bias"): n for n in base.names()}
        self._infos = []
        for new, old in self._source.items():
            info = base.info(old)
            shape = info.shape[::-1] if old.endswith("/kernel") else info.shape
            self._infos.append(TensorInfo(new, info.dtype, shape))

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        data = self.base.read_tensor(self._source[name])
        return data.T if self._source[name].endswith("/kernel") else data  # a non-contiguous view


def keras_layout(ckpt: Checkpoint, other: Checkpoint) -> Checkpoint | None:
    return KerasAsTorch(ckpt) if any(n.endswith("/kernel") for n in ckpt.names()) else None


def test_a_normalizer_matches_names_and_layouts():
    rng = np.random.default_rng(7)
    torch_like = {"fc1.weight": rng.standard_normal((48, 32)).astype(np.float32), "fc1.bias": np.ones(48, np.float32)}
    keras_like = {"fc1/kernel": torch_like["fc1.weight"].T.copy(), "fc1/bias": torch_like["fc1.bias"]}
    with pytest.raises(UsageError, match="no tensor in common"):
        ckptkit.diff(torch_like, keras_like, normalizers=[])
    report = ckptkit.diff(torch_like, keras_like, normalizers=[keras_layout])
    assert report.b.normalized_by == "keras_layout" and report.a.normalized_by is None
    assert report.summary()["compared"] == 2
    assert all(t.metrics["max_abs"] == 0.0 and t.metrics["identical"] == 1.0 for t in report.tensors)


def test_threads_and_spans_give_the_same_figures(monkeypatch):
    rng = np.random.default_rng(1)
    a = {f"l.{i}.w": rng.standard_normal(300_000).astype(np.float16) for i in range(4)}
    b = {k: (v.astype(np.float32) + np.float32(1e-3)).astype(np.float16) for k, v in a.items()}
    one = ckptkit.diff(a, b, threads=1)
    monkeypatch.setattr(engine, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(engine, "SPAN", 70_001)
    monkeypatch.setattr(engine, "INFLIGHT_BYTES", 1)
    seen: list[int] = []
    two = ckptkit.diff(a, b, threads=2, progress=seen.append)
    assert sum(seen) == pytest.approx(2 * sum(v.nbytes for v in a.values()), abs=16)
    for x, y in zip(one.tensors, two.tensors, strict=True):
        assert x.metrics == pytest.approx(y.metrics, rel=1e-7)
    assert two.to_dict() == ckptkit.diff(a, b, threads=2).to_dict()  # span results merge in a fixed order


def test_default_layers_are_the_repeated_blocks():
    from ckptkit.diffing.report import layer_depth, layer_of

    assert layer_depth(["model.layers.0.attn.q.weight", "model.norm.weight", "lm_head.weight"]) == 2
    assert layer_depth(["0.weight", "1.conv.0.weight", "1.conv.2.bias"]) == 1  # a top-level Sequential
    assert layer_depth(["fc1.weight", "fc2.bias"]) is None
    assert layer_of("encoder.block/3/dense/kernel", 2) == "encoder.block.3"
    assert layer_of("fc1.weight", None) == "fc1" and layer_of("scale", 2) == "scale"


def test_numbered_layers_are_listed_in_numeric_order():
    names = ["lm_head.w", "model.embed.w", "model.layers.0.w", "model.layers.10.w", "model.layers.2.w", "model.norm.w"]
    arrays = {n: np.ones(2, np.float32) for n in names}  # the text order a safetensors file keeps
    layers = [x.name for x in ckptkit.diff(arrays, arrays).layers]
    assert layers == ["lm_head", "model.embed", "model.layers.0", "model.layers.2", "model.layers.10", "model.norm"]
