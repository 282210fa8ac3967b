"""ckptkit timeline: a run of known dynamics, real training runs (torch, Keras), the reports and the CLI."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import ckptkit
from ckptkit.timelines.snapshots import name_step, name_steps
from tests.conftest import assert_one_line_error, run_cli
from tests.test_diff_cli import chromium_console

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

STEPS = [0, 10, 20, 30, 40, 50]
NAN_FROM = 40


def _weights(step: int) -> dict[str, np.ndarray]:
    """A run whose dynamics are known: frozen, steadily drifting, exploding, NaN from step 40."""
    rng = np.random.default_rng(7)
    frozen = rng.standard_normal((4, 4)).astype(np.float32)
    base = rng.standard_normal((8, 4)).astype(np.float32)
    direction = rng.standard_normal((8, 4)).astype(np.float32)
    head = rng.standard_normal((3, 8)).astype(np.float32)
    noisy = rng.standard_normal(16).astype(np.float32)
    bias = np.zeros(8, np.float32)
    if step >= NAN_FROM:
        bias[2] = np.nan
    wiggle = np.random.default_rng(step).standard_normal(16).astype(np.float32) * 0.01
    return {
        "model.frozen.weight": frozen,
        "model.drift.weight": base + np.float32(step / 10) * direction,
        "model.drift.bias": bias,
        "model.head.weight": head * np.float32(1 + step),  # grows past 10x the first norm
        "model.noisy.weight": noisy + wiggle,
    }


@pytest.fixture
def run_dir(tmp_path):
    """Snapshots in three formats, names that do not sort by step, the step only in metadata."""
    folder = tmp_path / "run"
    folder.mkdir()
    names = ["zeta", "alpha", "kappa", "beta", "omega", "delta"]  # not in step order either way
    for step, name in zip(STEPS, names, strict=True):
        w = _weights(step)
        if step % 20 == 0:
            torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in w.items()}, "global_step": step},
                       folder / f"{name}.pt")  # fmt: skip
        else:
            meta = {"ckptkit:extras": json.dumps({"global_step": step})}
            safetensors_torch.save_file({f"state_dict.{k}": torch.from_numpy(v) for k, v in w.items()},
                                        folder / f"{name}.safetensors", metadata=meta)  # fmt: skip
    (folder / "notes.txt").write_text("not a checkpoint")
    return folder


def _layer(report: dict, name: str) -> dict:
    return next(x for x in report["layers"] if x["name"] == name)


def _tensor(report: dict, name: str) -> dict:
    return next(x for x in report["tensors"] if x["name"] == name)


def test_known_run_is_ordered_by_metadata_and_measured_like_numpy(run_dir):
    report = ckptkit.timeline([run_dir]).to_dict()
    assert report["schema"] == "ckptkit.timeline/1"
    assert [s["step"] for s in report["snapshots"]] == STEPS
    assert {s["format"] for s in report["snapshots"]} == {"torch", "safetensors"}
    assert report["order"] == "metadata global_step"
    # Update ratios and drift against float64 numpy, tensor by tensor.
    for name in ("model.drift.weight", "model.head.weight", "model.noisy.weight"):
        series = _tensor(report, f"state_dict.{name}")
        for i in range(1, len(STEPS)):
            now, before, first = (_weights(STEPS[j])[name].astype(np.float64) for j in (i, i - 1, 0))
            expected = np.linalg.norm(now - before) / np.linalg.norm(before)
            assert series["update_ratio"][i] == pytest.approx(expected, rel=1e-6, abs=1e-12)
            assert series["drift"][i] == pytest.approx(np.linalg.norm(now - first) / np.linalg.norm(first), rel=1e-6)
            assert series["norm"][i] == pytest.approx(np.linalg.norm(now), rel=1e-6)
        assert series["update_ratio"][0] is None
    kinds = {(e["kind"], e["layer"], e["tensor"], e["step"]) for e in report["events"]}
    assert ("nonfinite", "state_dict.model.drift", "state_dict.model.drift.bias", NAN_FROM) in kinds
    assert ("frozen", "state_dict.model.frozen", None, None) in kinds
    assert ("exploding", "state_dict.model.head", None, 10) in kinds  # 11x the first norm at step 10
    assert not any(e["layer"] == "state_dict.model.noisy" for e in report["events"])
    bias = _tensor(report, "state_dict.model.drift.bias")
    assert bias["nan"] == [0, 0, 0, 0, 1, 1]
    assert _layer(report, "state_dict.model.frozen")["update_ratio"] == [None, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_order_given_keeps_the_order_and_steps(run_dir):
    paths = sorted(run_dir.glob("*.pt")) + sorted(run_dir.glob("*.safetensors"))
    report = ckptkit.timeline(paths, order="given").to_dict()
    assert [s["path"] for s in report["snapshots"]] == [str(p) for p in paths]
    assert report["order"] == "as given"
    assert [s["step"] for s in report["snapshots"]] == [20, 40, 0, 10, 30, 50]  # kappa omega zeta, alpha beta delta


def test_glob_and_names_order_without_metadata(tmp_path):
    for step in (100, 9, 1000, 20):
        ckptkit.save({"w": np.full(4, step, np.float32)}, tmp_path / f"model.{step:04d}.safetensors")
    report = ckptkit.timeline([str(tmp_path / "model.*.safetensors")]).to_dict()
    assert [s["step"] for s in report["snapshots"]] == [9, 20, 100, 1000]
    assert report["order"] == "steps in the names"
    assert report["notes"] == []
    assert _tensor(report, "w")["norm"] == pytest.approx([18, 40, 200, 2000])


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("checkpoint-500/model.safetensors", 500),  # transformers Trainer
        ("checkpoint-500", 500),
        ("epoch=3-step=1200.ckpt", 1200),  # Lightning: the step, not the epoch
        ("epoch=3-step=1200-v1.ckpt", 1200),
        ("weights.05-0.43.h5", 5),  # Keras ModelCheckpoint weights.{epoch:02d}-{val_loss:.2f}.h5: not the loss
        ("model.01-0.45.keras", 1),
        ("model.05.weights.h5", 5),  # not the 5 of "h5"
        ("model.0010.safetensors", 10),
        ("ckpt-7", 7),  # tf.train.CheckpointManager
        ("ckpt-7.index", 7),
        ("ckpt-7.data-00000-of-00001", 7),
        ("model.ckpt-7", 7),  # TF1 Saver
        ("step_100", 100),  # a DCP step folder
        ("global_step1000/mp_rank_00_model_states.pt", 1000),  # DeepSpeed
        ("iter_0001000/mp_rank_00/model_optim_rng.pt", 1000),  # Megatron
        ("ckpt/100/default", 100),  # Orbax: a folder named by its step
        ("checkpoint3_5000.pt", 5000),  # fairseq checkpoint{epoch}_{updates}
        ("model_epoch_05.keras", 5),
        ("model-Q8_0.gguf", None),  # quantization types, dtypes and model sizes are no steps
        ("model-Q4_K_M.gguf", None),
        ("model-IQ2_XXS.gguf", None),
        ("model.f16.gguf", None),
        ("model-fp16.safetensors", None),
        ("model-bf16", None),
        ("llama-7b", None),
        ("llama-2-13B-chat.Q4_K_M.gguf", None),
        ("Meta-Llama-3.1-8B-Instruct-Q8_0.gguf", None),
        ("mistral-7b-instruct-v0.2.Q4_K_M.gguf", None),
        ("Qwen2.5-1.5B-Instruct", None),
        ("model-00001-of-00004.safetensors", None),  # a shard's counter
        ("last.ckpt", None),
        ("checkpoint_best.pt", None),
        ("/tmp/pytest-12/run/zeta.pt", None),  # a number in a folder above, with no step word, is no step
    ],
)
def test_step_from_a_name(name, step):
    assert name_step(name) == step


def test_name_steps_look_only_at_what_tells_the_paths_apart():
    paths = [Path("/data/step_9/run-a/checkpoint-10"), Path("/data/step_9/run-a/checkpoint-20")]
    assert name_steps(paths) == [10, 20]
    # The folders differ, the file names do not: the step is the folders'.
    assert name_steps([Path("/r/step_100/model.pt"), Path("/r/step_200/model.pt")]) == [100, 200]
    assert name_steps([Path("/r/step_5/a/model.pt"), Path("/r/step_5/b/model.pt")]) == [None, None]


def test_names_without_steps_keep_the_order_given_and_say_so(tmp_path):
    names = ["model-fp16.safetensors", "model-Q8_0.safetensors", "llama-7b.safetensors", "model-bf16.safetensors"]
    for i, name in enumerate(names):
        ckptkit.save({"w": np.full(4, i + 1, np.float32)}, tmp_path / name)
    paths = [tmp_path / n for n in names]
    report = ckptkit.timeline(paths)
    data = report.to_dict()
    assert [s["path"] for s in data["snapshots"]] == [str(p) for p in paths]
    assert [s["step"] for s in data["snapshots"]] == [None] * 4
    assert data["order"] == "as given"
    assert len(data["notes"]) == 1 and "in the order given, not ordered by step" in data["notes"][0]
    assert "> Note: no step recorded in or named by" in report.to_markdown()
    assert "Note: no step recorded" in report.to_html()
    # Two names that give the same step tell no order either.
    (tmp_path / "same").mkdir()
    for name in ("phi-2.Q8_0.safetensors", "phi-2.Q4_K_M.safetensors"):
        ckptkit.save({"w": np.ones(2, np.float32)}, tmp_path / "same" / name)
    same = ckptkit.timeline([tmp_path / "same" / n for n in ("phi-2.Q8_0.safetensors", "phi-2.Q4_K_M.safetensors")])
    assert [s.path.name for s in same.snapshots] == ["phi-2.Q8_0.safetensors", "phi-2.Q4_K_M.safetensors"]
    assert "the same step twice" in same.notes[0]


def test_a_shard_is_no_snapshot_its_index_is(tmp_path):
    for step in (200, 100):
        folder = tmp_path / f"step_{step}"
        folder.mkdir()
        weight_map = {}
        for i, name in enumerate(("a", "b")):
            shard = f"model-{i + 1:05d}-of-00002.safetensors"
            ckptkit.save({name: np.full(3, step + i, np.float32)}, folder / shard)
            weight_map[name] = shard
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "lone").mkdir()
    ckptkit.save({"a": np.ones(3, np.float32)}, tmp_path / "lone" / "model-00001-of-00003.safetensors")
    report = ckptkit.timeline([str(tmp_path / "*" / "model-*.safetensors")])
    indexes = [tmp_path / f"step_{s}" / "model.safetensors.index.json" for s in (100, 200)]
    assert [s.path for s in report.snapshots] == indexes
    assert [s.step for s in report.snapshots] == [100, 200]
    assert report.formats == ["sharded", "sharded"]
    assert [x.name for x in report.tensors] == ["a", "b"]
    assert any("model-00001-of-00003.safetensors is one shard of a set with no index" in n for n in report.notes)


def test_dcp_step_folders_are_one_snapshot_each(tmp_path):
    import warnings

    import torch.distributed.checkpoint as dcp

    for step in (200, 100, 300):  # saved out of order
        state = {"model": {"w": torch.full((4, 4), float(step)), "b": torch.zeros(4)}}
        if step != 300:
            state["step"] = step  # kept as a pickled value in .metadata's storage
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save(state, checkpoint_id=tmp_path / "run" / f"step_{step}")
    report = ckptkit.timeline([tmp_path / "run"]).to_dict()
    assert [s["step"] for s in report["snapshots"]] == [100, 200, 300]
    assert [Path(s["path"]).name for s in report["snapshots"]] == ["step_100", "step_200", "step_300"]
    assert report["order"] == "steps in the names"  # not every snapshot records its step
    assert _tensor(report, "model.w")["norm"] == pytest.approx([400, 800, 1200])
    two = ckptkit.timeline([tmp_path / "run" / "step_200", tmp_path / "run" / "step_100"]).to_dict()
    assert two["order"] == "metadata step" and [s["step"] for s in two["snapshots"]] == [100, 200]


def test_trainer_folders_take_their_step_from_trainer_state(tmp_path):
    out = tmp_path / "output"
    # Names that would sort wrongly as text, and a trainer state that is the authority on the step.
    for step in (500, 1500, 1000):
        folder = out / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        safetensors_torch.save_file({"lm_head.weight": torch.full((2, 3), float(step))}, folder / "model.safetensors")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": step / 500}))
    for args in ([out], [str(out / "checkpoint-*")], [str(out / "checkpoint-*/")]):
        report = ckptkit.timeline(args).to_dict()
        assert [s["step"] for s in report["snapshots"]] == [500, 1000, 1500], args
        assert {s["step_source"] for s in report["snapshots"]} == {"global_step"}
        names = [Path(s["path"]).name for s in report["snapshots"]]
        assert names == ["checkpoint-500", "checkpoint-1000", "checkpoint-1500"]
    # The Trainer's final save into the output folder itself: one more snapshot, after the others.
    safetensors_torch.save_file({"lm_head.weight": torch.full((2, 3), 2000.0)}, out / "model.safetensors")
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 2000}))
    final = ckptkit.timeline([out]).to_dict()
    assert [s["step"] for s in final["snapshots"]] == [500, 1000, 1500, 2000]
    assert final["snapshots"][-1]["path"] == str(out) and final["order"] == "metadata global_step"


@dataclass
class TrainConfig:
    """A class a training script pickles beside its tensors."""

    lr: float = 0.1

    def __reduce__(self):  # pickled as a call, which a pickle may make only of trusted globals
        return (TrainConfig, (self.lr,))


def test_allow_global_trusts_a_pickled_class_in_every_snapshot(tmp_path):
    for step in (1, 2):
        torch.save({"w": torch.ones(3) * step, "config": TrainConfig(), "step": step}, tmp_path / f"s{step}.pt")
    trusted = f"{__name__}.TrainConfig"
    refused = run_cli("timeline", tmp_path)
    assert_one_line_error(refused, f"--allow-global {trusted}")
    assert "no checkpoint in this folder could be read" in refused.stderr and "passed over" in refused.stderr
    # Named one by one, an untrusted pickle is an error of its own.
    assert_one_line_error(run_cli("timeline", tmp_path / "s1.pt", tmp_path / "s2.pt"), f"--allow-global {trusted}")
    # Beside checkpoints that need nothing, it is passed over and the report says why.
    torch.save({"w": torch.ones(3) * 3, "step": 3}, tmp_path / "s3.pt")
    torch.save({"w": torch.ones(3) * 4, "step": 4}, tmp_path / "s4.pt")
    partial = ckptkit.timeline([tmp_path])
    assert [s.step for s in partial.snapshots] == [3, 4]
    assert len(partial.notes) == 2 and all(f"--allow-global {trusted}" in n for n in partial.notes)
    (tmp_path / "s3.pt").unlink()
    (tmp_path / "s4.pt").unlink()
    result = run_cli("timeline", tmp_path, "--json", "--allow-global", trusted)
    assert result.code == 0, result.stderr
    assert [s["step"] for s in json.loads(result.stdout)["snapshots"]] == [1, 2]
    report = ckptkit.timeline([tmp_path], allow_globals=[trusted])
    assert _tensor(report.to_dict(), "w")["norm"] == pytest.approx([3**0.5, 2 * 3**0.5])


def test_real_torch_training_run(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.Linear(16, 1)
    )
    for p in model[2].parameters():
        p.requires_grad_(False)  # a frozen layer
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for step in range(1, 31):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if step % 10 == 0:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step},
                       folder / f"step_{step}.pt")  # fmt: skip
    report = ckptkit.timeline([str(folder / "step_*.pt")]).to_dict()
    assert [s["step"] for s in report["snapshots"]] == [10, 20, 30]
    frozen = [e["layer"] for e in report["events"] if e["kind"] == "frozen"]
    assert frozen == ["model.2"]
    assert all(e["kind"] != "nonfinite" for e in report["events"])
    moving = _layer(report, "model.0")
    assert all(r > 0 for r in moving["update_ratio"][1:])
    optimizer_layers = [x for x in report["layers"] if x["optimizer"]]
    assert optimizer_layers and all(x["name"].startswith("optimizer") for x in optimizer_layers)


def test_adam_second_moment_of_zero_is_an_optimizer_event(tmp_path):
    for step in (1, 2):
        sq = torch.zeros(5) if step == 2 else torch.ones(5)
        state = {"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.ones(5), "exp_avg_sq": sq}}}
        torch.save({"model": {"w": torch.ones(5) * step}, "optimizer": state, "step": step}, tmp_path / f"s{step}.pt")
    report = ckptkit.timeline([tmp_path]).to_dict()
    events = [e for e in report["events"] if e["kind"] == "optimizer"]
    assert [(e["tensor"], e["step"]) for e in events] == [("optimizer.state.0.exp_avg_sq", 2)]


def test_keras_model_checkpoint_series(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, name="d1"), keras.layers.Dense(1, name="out")])
    model.get_layer("d1").trainable = False
    model.compile(optimizer="adam", loss="mse")
    save = keras.callbacks.ModelCheckpoint(str(tmp_path / "model.{epoch:02d}.weights.h5"), save_weights_only=True)
    x, y = np.random.default_rng(0).standard_normal((32, 5)), np.random.default_rng(1).standard_normal((32, 1))
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[save])
    report = ckptkit.timeline([tmp_path]).to_dict()
    assert [s["step"] for s in report["snapshots"]] == [1, 2, 3]
    assert {s["format"] for s in report["snapshots"]} == {"keras"}
    frozen = {e["layer"] for e in report["events"] if e["kind"] == "frozen"}
    assert "d1" in frozen and "out" not in frozen


def test_matrix_is_pairwise_relative_l2_and_cosine(tmp_path):
    arrays = [
        np.array([1, 0, 0, 0], np.float32),
        np.array([1, 1, 0, 0], np.float32),
        np.array([0, 0, 3, 0], np.float32),
    ]
    for i, a in enumerate(arrays):
        ckptkit.save({"w": a}, tmp_path / f"s{i}.safetensors")
    report = ckptkit.timeline([tmp_path], matrix=True).to_dict()
    rel, cos = report["matrix"]["rel_l2"], report["matrix"]["cosine"]
    for i, a in enumerate(arrays):
        for j, b in enumerate(arrays):
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            assert rel[i][j] == pytest.approx(np.linalg.norm(a64 - b64) / np.linalg.norm(a64), abs=1e-12)
            assert cos[i][j] == pytest.approx(a64 @ b64 / np.linalg.norm(a64) / np.linalg.norm(b64), abs=1e-9)


def test_cli_fail_on_json_markdown_and_html(run_dir, tmp_path):
    page = tmp_path / "timeline.html"
    result = run_cli("timeline", run_dir, "--json", "--fail-on", "nonfinite", "--html", page)
    assert result.code == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["passed"] is False
    assert {v["condition"] for v in data["violations"]} == {"nonfinite"}
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, json.loads(_schema_text()))
    html = page.read_text()
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html) is None
    assert html.count("<svg") >= 1 + len(data["layers"]) - sum(x["optimizer"] for x in data["layers"])
    assert "nonfinite at step 40: state_dict.model.drift.bias" in html
    assert chromium_console(page) == []

    ok = run_cli("timeline", run_dir, "--fail-on", "update_ratio>1e6")
    assert ok.code == 0, ok.stderr
    assert "within limits" in ok.stdout and "nonfinite at step 40" in ok.stdout
    ratio = run_cli("timeline", run_dir, "--fail-on", "update_ratio>0.5", "--markdown")
    assert ratio.code == 1
    assert "violation(s)" in ratio.stdout and "| `state_dict.model.head` |" in ratio.stdout


def _schema_text() -> str:
    from importlib.resources import files

    return files("ckptkit.timelines").joinpath("schema.json").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--fail-on", "bogus"], "invalid --fail-on expression 'bogus'"),
        (["--fail-on", "loss>1"], "unknown metric 'loss'"),
        (["--json", "--markdown"], "choose one"),
        (["--jump-factor", "0.5"], "greater than 1"),
    ],
)
def test_cli_usage_errors(run_dir, args, fragment):
    assert_one_line_error(run_cli("timeline", run_dir, *args), fragment)


def test_one_snapshot_is_refused(tmp_path):
    ckptkit.save({"w": np.ones(2, np.float32)}, tmp_path / "only.safetensors")
    assert_one_line_error(run_cli("timeline", tmp_path), "at least two snapshots; 1 found")
    assert_one_line_error(run_cli("timeline", tmp_path / "nothing-*.pt"), "no file or folder matches")


def test_api_report_renders(run_dir):
    report = ckptkit.timeline([run_dir], fail_on=["frozen"])
    assert not report.passed
    md = report.to_markdown()
    assert "frozen at whole run: state_dict.model.frozen" in md
    assert report.to_html().startswith("<!DOCTYPE html>")
    assert math.isclose(report.layers[0].series.norm[0] or 0.0, report.to_dict()["layers"][0]["norm"][0])


def _reference(values: list[np.ndarray | None]) -> dict[str, list]:
    """One tensor's series in float64 numpy, sums over the elements finite on both sides; ``None``
    where there is nothing to compare with (the first snapshot, a snapshot after one without it)."""
    out: dict[str, list] = {k: [] for k in ("norm", "update_ratio", "drift", "max_update", "max_drift", "nan")}
    first: np.ndarray | None = None
    prev: np.ndarray | None = None
    for v in values:
        x = None if v is None else v.astype(np.float64)
        if x is not None:
            out["norm"].append(np.linalg.norm(x[np.isfinite(x)]))
            out["nan"].append(int(np.isnan(x).sum()))
        else:
            out["norm"].append(None)
            out["nan"].append(None)
        for base, ratio, top in ((prev, "update_ratio", "max_update"), (first, "drift", "max_drift")):
            if x is None or base is None:
                out[ratio].append(None)
                out[top].append(None)
                continue
            both = np.isfinite(x) & np.isfinite(base)
            d = x[both] - base[both]
            out[ratio].append(np.linalg.norm(d) / np.linalg.norm(base[both]))
            out[top].append(np.abs(d).max())
        prev = x
        first = x if first is None else first
    return out


@pytest.mark.parametrize("writer", ["safetensors", "torch"])
def test_tensors_of_several_chunks_match_numpy(tmp_path, writer):
    """Tensors larger than the kernel's chunk: frozen chunks, NaN in one chunk, a snapshot without the tensor."""
    from ckptkit.timelines.kernel import CHUNK

    n = 2 * CHUNK + 1000
    rng = np.random.default_rng(3)
    big = [(rng.standard_normal(n) * 0.02).astype(np.float16)]
    wide = [rng.standard_normal(n // 4).astype(np.float32)]
    for t in range(1, 5):
        step = big[-1].copy()
        step[CHUNK:] += (rng.standard_normal(n - CHUNK) * 1e-3).astype(np.float16)  # the first chunk stays frozen
        if t == 3:
            step[CHUNK + 17] = np.nan
        big.append(step)
        wide.append(wide[-1] + rng.standard_normal(n // 4).astype(np.float32) * np.float32(0.1 * t))
    for t in range(5):
        tensors = {"big": big[t]} | ({"wide": wide[t]} if t != 2 else {})
        if writer == "safetensors":
            ckptkit.save(tensors, tmp_path / f"s{t}.safetensors")
        else:
            torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, tmp_path / f"s{t}.pt")
    report = ckptkit.timeline([tmp_path], order="given").to_dict()
    expected = {"big": _reference(list(big)), "wide": _reference([w if t != 2 else None for t, w in enumerate(wide)])}
    for name, ref in expected.items():
        got = _tensor(report, name)
        for key, values in ref.items():
            for t, want in enumerate(values):
                if want is None:
                    assert got[key][t] is None, (name, key, t)
                else:
                    assert got[key][t] == pytest.approx(want, rel=1e-6, abs=1e-12), (name, key, t)
    assert _tensor(report, "big")["nan"] == [0, 0, 0, 1, 1]


def test_file_reads_mapped_views_and_arrays_in_memory_give_the_same_sums(tmp_path):
    from contextlib import ExitStack

    from ckptkit.core.model import MemoryCheckpoint
    from ckptkit.registry import open_checkpoint
    from ckptkit.timelines import engine
    from ckptkit.timelines.kernel import CHUNK

    rng = np.random.default_rng(5)
    values = [(rng.standard_normal(CHUNK + 77) * 0.1).astype(np.float16)]
    for t in range(1, 4):
        values.append(values[-1] + (rng.standard_normal(CHUNK + 77) * 0.01).astype(np.float16) * np.float16(t))
    values[2][5] = np.inf
    for t, v in enumerate(values):
        ckptkit.save({"w": v, "b": np.float32(t) * np.ones(3, np.float32)}, tmp_path / f"s{t}.safetensors")
    with ExitStack() as stack:
        mapped = [stack.enter_context(open_checkpoint(tmp_path / f"s{t}.safetensors")) for t in range(4)]
        files = engine.Files()
        try:
            read = [engine.tensor_series(mapped, n, files=files).points for n in ("w", "b")]
        finally:
            files.close()
        views = [engine.tensor_series(mapped, n).points for n in ("w", "b")]
    memory = [MemoryCheckpoint({"w": v, "b": np.float32(t) * np.ones(3, np.float32)}) for t, v in enumerate(values)]
    held = [engine.tensor_series(memory, n).points for n in ("w", "b")]
    assert read == views == held
    w = read[0]
    assert [p.inf for p in w if p] == [0, 0, 1, 0]
    assert w[1] is not None and w[1].max_update == pytest.approx(np.abs(values[1].astype(np.float64) - values[0]).max())


def test_out_of_file_descriptors_falls_back_to_the_readers_arrays(run_dir, monkeypatch):
    from ckptkit.timelines import engine

    expected = ckptkit.timeline([run_dir]).to_dict()

    def refuse(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(engine.os, "open", refuse)
    assert ckptkit.timeline([run_dir]).to_dict() == expected


def test_a_checkpoint_the_state_file_lists_but_that_was_deleted_is_passed_over_with_a_note(tmp_path):
    """A TensorFlow training folder whose 'checkpoint' file still lists a checkpoint deleted since
    (to free space) stands for the checkpoints still there."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (1, 2, 3):
        ckptkit.save(_weights(step), tmp_path / f"s{step}.safetensors")
        ckptkit.convert(tmp_path / f"s{step}.safetensors", run / f"ckpt-{step}.index")
    (run / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-3"\n' + "".join(f'all_model_checkpoint_paths: "ckpt-{s}"\n' for s in (1, 2, 3))
    )
    for f in run.glob("ckpt-1.*"):
        f.unlink()
    report = ckptkit.timeline([run]).to_dict()
    assert [Path(s["path"]).name for s in report["snapshots"]] == ["ckpt-2", "ckpt-3"]
    assert any("ckpt-1" in note for note in report["notes"]), report["notes"]


@pytest.mark.parametrize(
    "state", ["this is not a checkpoint state\n", 'all_model_checkpoint_paths: "ckpt-1"\n', "x" * 70_000 + ": 1\n"]
)
def test_a_broken_state_file_loses_the_list_of_kept_checkpoints_not_the_checkpoints(tmp_path, state):
    """A 'checkpoint' file that cannot be parsed (truncated, edited by hand) does not stop the
    timeline: the checkpoints beside it are read one by one, and the user is told why."""
    run = tmp_path / "tf"
    run.mkdir()
    for step in (1, 2):
        ckptkit.save(_weights(step), tmp_path / f"s{step}.safetensors")
        ckptkit.convert(tmp_path / f"s{step}.safetensors", run / f"ckpt-{step}.index")
    (run / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n')
    healthy = ckptkit.timeline([run]).to_dict()
    (run / "checkpoint").write_text(state)
    report = ckptkit.timeline([run]).to_dict()
    shown = [(Path(s["path"]).name, s["step"]) for s in report["snapshots"]]
    assert shown == [("ckpt-1.index", 1), ("ckpt-2.index", 2)]
    assert report["layers"] == healthy["layers"] and report["events"] == healthy["events"]
    assert any("'checkpoint' state file" in note and "one by one" in note for note in report["notes"]), report["notes"]


def _tf_run(tmp_path: Path, state: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for step in (1, 2):
        ckptkit.save(_weights(step), tmp_path / f"s{step}.safetensors")
        ckptkit.convert(tmp_path / f"s{step}.safetensors", run / f"ckpt-{step}.index")
    (run / "checkpoint").write_text(state)
    return run


def test_a_folder_reached_through_a_link_to_itself_is_looked_into_once(tmp_path):
    run = _tf_run(tmp_path, "not a state file\n")  # its children are read one by one, links too
    (run / "self").symlink_to(".", target_is_directory=True)
    report = ckptkit.timeline([run]).to_dict()
    assert [s["step"] for s in report["snapshots"]] == [1, 2]


@pytest.mark.parametrize("state", ['model_checkpoint_path: "ckpt-2"\n', "not a state file\n"])
def test_a_checkpoint_named_twice_in_different_ways_is_one_snapshot(tmp_path, monkeypatch, state):
    """A prefix, its index and its data file, relative and absolute paths, a folder and a pattern
    inside it: one checkpoint each, however many ways it is named."""
    run = _tf_run(tmp_path, state)
    monkeypatch.chdir(tmp_path)
    for args in (
        [str(run / "*.data-*"), "run"],
        [str(run / "ckpt-1.index"), "run"],
        ["run/ckpt-1", str(run / "ckpt-1.index"), "run/ckpt-2"],
        ["run", str(run)],
    ):
        report = ckptkit.timeline(args).to_dict()
        assert [s["step"] for s in report["snapshots"]] == [1, 2], args
