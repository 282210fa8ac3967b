"""The same small architectures built in PyTorch and in Keras 3 (torch backend), for layout tests.

Each pair has the PyTorch module (its state_dict is the PyTorch side), the Keras model, an input
in PyTorch's layout, and how to move inputs and outputs between the frameworks' layouts
(channels first vs channels last). Importing this module sets KERAS_BACKEND=torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import torch
from keras import layers as L
from torch import nn


@dataclass
class Pair:
    name: str
    torch_model: nn.Module
    keras_model: keras.Model
    x: np.ndarray  # PyTorch layout
    hints: list[str] = field(default_factory=list)
    to_keras: Callable[[np.ndarray], np.ndarray] = lambda a: a  # input, PyTorch -> Keras layout
    from_keras: Callable[[np.ndarray], np.ndarray] = lambda a: a  # output, Keras -> PyTorch layout

    def torch_out(self) -> np.ndarray:
        self.torch_model.eval()
        with torch.no_grad():
            out = self.torch_model(torch.from_numpy(self.x))
        return (out[0] if isinstance(out, tuple) else out).numpy()

    def keras_out(self) -> np.ndarray:
        out = self.keras_model(self.to_keras(self.x), training=False)
        return self.from_keras(keras.ops.convert_to_numpy(out))


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def _nchw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _randomize_norm_stats(module: nn.Module) -> None:
    """Non-trivial running statistics, so a swapped mean and variance would show."""
    gen = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.num_batches_tracked.fill_(7)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))


class _Seq(nn.Module):
    """Named children applied in order; ``flatten`` before the named child, if any."""

    def __init__(self, flatten_before: str | None = None, **children: nn.Module) -> None:
        super().__init__()
        self.flatten_before = flatten_before
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, child in self.named_children():
            if name == self.flatten_before:
                x = torch.flatten(x, 1)
            x = child(x)
            if isinstance(x, tuple):
                x = x[0]
        return x


def _keras(input_shape: tuple[int, ...], *layers: keras.layers.Layer, dtype: str = "float32") -> keras.Model:
    model = keras.Sequential([keras.Input(input_shape, dtype=dtype), *layers])
    return model


def mlp() -> Pair:
    torch.manual_seed(0)
    tm = _Seq(fc1=nn.Linear(6, 8), act=nn.ReLU(), fc2=nn.Linear(8, 3))
    km = _keras((6,), L.Dense(8, activation="relu", name="fc1"), L.Dense(3, name="fc2"))
    return Pair("mlp", tm, km, _rand(4, 6))


def cnn_batchnorm() -> Pair:
    torch.manual_seed(0)
    tm = _Seq(
        flatten_before="fc",
        conv1=nn.Conv2d(3, 4, 3), bn1=nn.BatchNorm2d(4), act1=nn.ReLU(),
        conv2=nn.Conv2d(4, 5, 3, bias=False), bn2=nn.BatchNorm2d(5), act2=nn.ReLU(),
        fc=nn.Linear(5 * 4 * 4, 3),
    )  # fmt: skip
    _randomize_norm_stats(tm)
    km = _keras(
        (8, 8, 3),
        L.Conv2D(4, 3, name="conv1"), L.BatchNormalization(epsilon=1e-5, name="bn1"), L.ReLU(),
        L.Conv2D(5, 3, use_bias=False, name="conv2"), L.BatchNormalization(epsilon=1e-5, name="bn2"), L.ReLU(),
        L.Flatten(), L.Dense(3, name="fc"),
    )  # fmt: skip
    return Pair("cnn_batchnorm", tm, km, _rand(2, 3, 8, 8), ["fc=flatten:5x4x4"], _nhwc)


class _SeparableTorch(nn.Module):
    def __init__(self, channels: int, multiplier: int, out: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels * multiplier, 3, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels * multiplier, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def depthwise_separable() -> Pair:
    torch.manual_seed(0)
    tm = _Seq(dw=nn.Conv2d(4, 8, 3, groups=4), sep=_SeparableTorch(8, 2, 6))
    km = _keras(
        (9, 9, 4),
        L.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
        L.SeparableConv2D(6, 3, depth_multiplier=2, name="sep"),
    )
    return Pair("depthwise_separable", tm, km, _rand(2, 4, 9, 9), ["dw=depthwise:2", "sep=separable:2"], _nhwc, _nchw)


def conv1d() -> Pair:
    torch.manual_seed(0)
    tm = _Seq(c1=nn.Conv1d(3, 5, 3), act=nn.ReLU(), c2=nn.Conv1d(5, 2, 2, bias=False))
    km = _keras((10, 3), L.Conv1D(5, 3, activation="relu", name="c1"), L.Conv1D(2, 2, use_bias=False, name="c2"))
    return Pair("conv1d", tm, km, _rand(2, 3, 10), [], _nhwc, _nchw)


def conv_transpose2d() -> Pair:
    torch.manual_seed(0)
    tm = _Seq(up=nn.ConvTranspose2d(3, 4, 3, stride=2), up2=nn.ConvTranspose2d(4, 2, 2, bias=False))
    km = _keras(
        (5, 5, 3), L.Conv2DTranspose(4, 3, strides=2, name="up"), L.Conv2DTranspose(2, 2, use_bias=False, name="up2")
    )
    return Pair("conv_transpose2d", tm, km, _rand(2, 3, 5, 5), ["up2=conv_transpose"], _nhwc, _nchw)


def embedding_layernorm() -> Pair:
    torch.manual_seed(0)
    tm = _Seq(emb=nn.Embedding(10, 6), ln=nn.LayerNorm(6))
    with torch.no_grad():
        tm.ln.weight.normal_()
        tm.ln.bias.normal_()
    km = _keras((5,), L.Embedding(10, 6, name="emb"), L.LayerNormalization(epsilon=1e-5, name="ln"), dtype="int64")
    x = np.random.default_rng(0).integers(0, 10, (3, 5))
    return Pair("embedding_layernorm", tm, km, x)


def lstm() -> Pair:
    torch.manual_seed(0)
    tm = _Seq(lstm=nn.LSTM(4, 6, num_layers=2, batch_first=True))
    km = _keras((7, 4), L.LSTM(6, return_sequences=True, name="lstm"), L.LSTM(6, return_sequences=True, name="lstm_l1"))
    return Pair("lstm", tm, km, _rand(2, 7, 4))


def gru() -> Pair:
    torch.manual_seed(0)
    tm = _Seq(gru=nn.GRU(4, 5, batch_first=True))
    km = _keras((7, 4), L.GRU(5, return_sequences=True, name="gru"))
    return Pair("gru", tm, km, _rand(2, 7, 4))


def _bidirectional(layer: keras.layers.Layer, name: str, merge_mode: str = "concat") -> keras.layers.Layer:
    """``layer`` named after its class, as the rules name the halves (``forward_gru``) without a record."""
    config = layer.get_config()
    config["name"] = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}[type(layer).__name__]
    return L.Bidirectional(type(layer).from_config(config), merge_mode=merge_mode, name=name)


def bi_lstm() -> Pair:
    torch.manual_seed(0)
    tm = _Seq(lstm=nn.LSTM(4, 5, batch_first=True, bidirectional=True))
    km = _keras((7, 4), _bidirectional(L.LSTM(5, return_sequences=True), "lstm"))
    return Pair("bi_lstm", tm, km, _rand(2, 7, 4))


def bi_gru_2layer() -> Pair:
    """nn.GRU(num_layers=2, bidirectional=True): layer 1 reads both directions of layer 0, concatenated."""
    torch.manual_seed(0)
    tm = _Seq(gru=nn.GRU(4, 3, num_layers=2, batch_first=True, bidirectional=True))
    km = _keras(
        (6, 4),
        _bidirectional(L.GRU(3, return_sequences=True), "gru"),
        _bidirectional(L.GRU(3, return_sequences=True), "gru_l1"),
    )
    return Pair("bi_gru_2layer", tm, km, _rand(2, 6, 4))


class _LastStepSum(nn.Module):
    """Keras Bidirectional(merge_mode="sum", return_sequences=False): forward's last step + backward's first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x[:, -1, :half] + x[:, 0, half:]


def bi_simple_rnn() -> Pair:
    torch.manual_seed(0)
    tm = _Seq(rnn=nn.RNN(3, 4, batch_first=True, bidirectional=True), last=_LastStepSum())
    km = _keras((5, 3), _bidirectional(L.SimpleRNN(4), "rnn", merge_mode="sum"))
    return Pair("bi_simple_rnn", tm, km, _rand(2, 5, 3))


def _randomize(module: nn.Module) -> None:
    """Every parameter random: PyTorch starts attention biases at zero, which would hide a misplaced one."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))


class _AttentionBlock(nn.Module):
    """Embedding, self-attention with a residual, LayerNorm, Dense."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.ln = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        attended, _ = self.mha(x, x, x, need_weights=False)
        return self.head(self.ln(x + attended))


def attention_block() -> Pair:
    torch.manual_seed(0)
    tm = _AttentionBlock()
    _randomize(tm)
    ids = keras.Input((5,), dtype="int64")
    x = L.Embedding(11, 8, name="emb")(ids)
    attended = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    out = L.Dense(3, name="head")(L.LayerNormalization(epsilon=1e-5, name="ln")(L.Add()([x, attended])))
    km = keras.Model(ids, out)
    x_in = np.random.default_rng(0).integers(0, 11, (3, 5))
    return Pair("attention_block", tm, km, x_in, ["mha=mha:2"])


class _NarrowKeys(nn.Module):
    """nn.MultiheadAttention whose keys and values are narrower than its queries (q/k/v_proj_weight apart)."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 4, kdim=6, vdim=6, bias=False, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = x[..., :6]
        return self.mha(x, kv, kv, need_weights=False)[0]


def attention_narrow_keys() -> Pair:
    torch.manual_seed(0)
    tm = _NarrowKeys()
    _randomize(tm)
    x = keras.Input((4, 8))
    kv = x[:, :, :6]
    km = keras.Model(x, L.MultiHeadAttention(4, 2, use_bias=False, name="mha")(x, kv))
    return Pair("attention_narrow_keys", tm, km, _rand(2, 4, 8), ["mha=mha:4"])


class _Projections(nn.Module):
    """Attention from four Linear modules, as many models write it; fewer key/value heads make it grouped."""

    def __init__(self, width: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(width, heads * head_dim)
        self.k_proj = nn.Linear(width, kv_heads * head_dim)
        self.v_proj = nn.Linear(width, kv_heads * head_dim)
        self.out_proj = nn.Linear(heads * head_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


def attention_linears() -> Pair:
    torch.manual_seed(0)
    tm = _Seq(attn=_Projections(8, 2, 2, 4))
    _randomize(tm)
    x = keras.Input((5, 8))
    km = keras.Model(x, L.MultiHeadAttention(2, 4, name="attn")(x, x))
    return Pair("attention_linears", tm, km, _rand(2, 5, 8), ["attn=mha_linears:2"])


def grouped_query_attention() -> Pair:
    torch.manual_seed(0)
    tm = _Seq(attn=_Projections(8, 4, 2, 3))
    _randomize(tm)
    x = keras.Input((5, 8))
    km = keras.Model(x, L.GroupQueryAttention(3, 4, 2, name="attn")(x, x))
    return Pair("grouped_query_attention", tm, km, _rand(2, 5, 8), ["attn=gqa:4x2"])


PAIRS = [
    mlp, cnn_batchnorm, depthwise_separable, conv1d, conv_transpose2d, embedding_layernorm, lstm, gru,
    bi_lstm, bi_gru_2layer, bi_simple_rnn,
    attention_block, attention_narrow_keys, attention_linears, grouped_query_attention,
]  # fmt: skip
BIDIRECTIONAL = [bi_lstm, bi_gru_2layer, bi_simple_rnn]
ATTENTION = [attention_block, attention_narrow_keys, attention_linears, grouped_query_attention]
