"""Tiny PyTorch models exported by torch.onnx's two exporters, for checking that patched ONNX models compute.

Each model is built from a seed, its weights randomised (BASE), exported, then "tuned" (NEW: BASE
plus noise), as a user would fine-tune after exporting. ``bench/onnx_fidelity.py`` and
``tests/test_onnx_fidelity.py`` share these definitions.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

EXPORTERS: dict[str, dict[str, Any]] = {
    "legacy-fold": {"dynamo": False, "do_constant_folding": True},
    "legacy-nofold": {"dynamo": False, "do_constant_folding": False},
    "dynamo-opt": {"dynamo": True, "optimize": True},
    "dynamo-noopt": {"dynamo": True, "optimize": False},
}


class ConvBN(nn.Module):
    """Conv + BatchNorm twice (with and without conv bias), then Linear + BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)
        self.b3 = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.b3(self.fc(x.mean((2, 3))))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class BiLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 12, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


class GRUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 12, batch_first=True)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


class BertBlock(nn.Module):
    """Token and position embeddings, self-attention, LayerNorm, GELU feed-forward, LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(50, 16)
        self.pos = nn.Embedding(10, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.ln1 = nn.LayerNorm(16)
        self.ff1 = nn.Linear(16, 32)
        self.ff2 = nn.Linear(32, 16)
        self.ln2 = nn.LayerNorm(16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        h = self.ln1(h + self.attn(h, h, h, need_weights=False)[0])
        return self.ln2(h + self.ff2(nn.functional.gelu(self.ff1(h))))


@dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[[], nn.Module]
    example: Callable[[torch.Generator], torch.Tensor]


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel("cnn-bn", ConvBN, lambda g: torch.randn(2, 3, 8, 8, generator=g)),
        ZooModel("transformer", Encoder, lambda g: torch.randn(2, 5, 16, generator=g)),
        ZooModel("bilstm", BiLSTM, lambda g: torch.randn(2, 5, 8, generator=g)),
        ZooModel("gru", GRUNet, lambda g: torch.randn(2, 5, 8, generator=g)),
        ZooModel("bert-block", BertBlock, lambda g: torch.randint(0, 50, (2, 6), generator=g)),
    )
}


def randomized(module: nn.Module, seed: int, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """Every floating-point tensor of the state dict drawn anew (variances kept positive)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point():
            value = torch.randn(tensor.shape, generator=g) * scale
            if name.endswith("running_var"):
                value = value.abs() + 0.5
            out[name] = value.to(tensor.dtype)
        else:
            out[name] = tensor.clone()
    return out


def tuned(base: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """BASE after "fine-tuning": every float tensor moved by noise, variances kept positive."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in base.items():
        if tensor.is_floating_point():
            value = tensor + 0.2 * torch.randn(tensor.shape, generator=g)
            if name.endswith("running_var"):
                value = value.abs() + 0.1
            out[name] = value
        elif name.endswith("num_batches_tracked"):
            out[name] = tensor + 100
        else:
            out[name] = tensor.clone()
    return out


@dataclass
class Exported:
    """One model exported by one exporter: its files, its example input and what torch computes."""

    model: str
    exporter: str
    onnx: Path | None
    base: Path
    new: Path
    x: np.ndarray
    want: np.ndarray  # the output in torch with NEW weights
    stale: np.ndarray  # the output in torch with BASE weights
    error: str = ""  # why the exporter could not export this model


def export_all(model: str, folder: Path, seed: int = 0) -> dict[str, Exported]:
    """Export ``model`` (BASE weights) with every exporter of :data:`EXPORTERS`; BASE.pt and NEW.pt beside.

    The dynamo exporter runs once: its unoptimized program is saved, then optimized and saved again,
    which is what ``torch.onnx.export(..., optimize=True)`` does after the same export (the
    initializers and nodes come out identical; it halves the slowest part of the zoo).
    """
    spec = MODELS[model]
    torch.manual_seed(seed)
    net = spec.build().eval()
    base = randomized(net, seed + 1)
    new = tuned(base, seed + 2)
    x = spec.example(torch.Generator().manual_seed(seed + 3))
    folder.mkdir(parents=True, exist_ok=True)
    base_path, new_path = folder / f"{model}.base.pt", folder / f"{model}.new.pt"
    torch.save(base, base_path)
    torch.save(new, new_path)
    with torch.no_grad():
        net.load_state_dict(new)
        want = net(x).numpy()
        net.load_state_dict(base)
        stale = net(x).numpy()
    out: dict[str, Exported] = {}

    def record(exporter: str, path: Path | None, error: str = "") -> None:
        out[exporter] = Exported(model, exporter, path, base_path, new_path, x.numpy(), want, stale, error)

    names = {"input_names": ["x"], "output_names": ["y"]}
    # The exporters print progress and warn about deprecated paths; neither matters here.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for exporter in ("legacy-fold", "legacy-nofold"):
            path = folder / f"{model}-{exporter}.onnx"
            try:
                torch.onnx.export(net, (x,), str(path), **names, **EXPORTERS[exporter])
                record(exporter, path)
            except Exception as err:  # the exporter's own failure is the finding, whatever its type
                record(exporter, None, _first_line(err))
        try:
            program = torch.onnx.export(net, (x,), dynamo=True, optimize=False, **names)
            assert program is not None
            program.save(str(folder / f"{model}-dynamo-noopt.onnx"))
            record("dynamo-noopt", folder / f"{model}-dynamo-noopt.onnx")
            program.optimize()
            program.save(str(folder / f"{model}-dynamo-opt.onnx"))
            record("dynamo-opt", folder / f"{model}-dynamo-opt.onnx")
        except Exception as err:  # as above
            for exporter in ("dynamo-noopt", "dynamo-opt"):
                out.setdefault(exporter, Exported(model, exporter, None, base_path, new_path, x.numpy(), want, stale))
                out[exporter].error = out[exporter].error or _first_line(err)
    return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
