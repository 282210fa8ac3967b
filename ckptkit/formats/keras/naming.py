"""What ckptkit knows about Keras layer classes: their variables, in the order Keras saves them.

Keras 3 ``.weights.h5`` files store a layer's variables as ``vars/0``, ``vars/1``, ... and name the
layer's group after its class (``layers/conv2d_transpose_1``), so knowing the class gives the
variables their real names. Only classes listed here are named; any other keeps ``vars/<i>``.
"""

from __future__ import annotations

import re

# Each class's possible variable lists, in Keras's save order (trainable first). A list is used
# only when its length is the only one of that length for the class.
_CONV = (("kernel", "bias"), ("kernel",))
_RNN_CELL = (("kernel", "recurrent_kernel", "bias"), ("kernel", "recurrent_kernel"))
VARIABLES: dict[str, tuple[tuple[str, ...], ...]] = {
    "Dense": _CONV,
    "EinsumDense": _CONV,
    "Conv1D": _CONV,
    "Conv2D": _CONV,
    "Conv3D": _CONV,
    "Conv1DTranspose": _CONV,
    "Conv2DTranspose": _CONV,
    "Conv3DTranspose": _CONV,
    "DepthwiseConv1D": _CONV,
    "DepthwiseConv2D": _CONV,
    "SeparableConv1D": (("depthwise_kernel", "pointwise_kernel", "bias"), ("depthwise_kernel", "pointwise_kernel")),
    "SeparableConv2D": (("depthwise_kernel", "pointwise_kernel", "bias"), ("depthwise_kernel", "pointwise_kernel")),
    "BatchNormalization": (("gamma", "beta", "moving_mean", "moving_variance"), ("moving_mean", "moving_variance")),
    "LayerNormalization": (("gamma", "beta"),),
    "GroupNormalization": (("gamma", "beta"),),
    "RMSNormalization": (("scale",),),
    "Embedding": (("embeddings",),),
    "ReversibleEmbedding": (("embeddings",), ("embeddings", "reverse_embeddings")),
    "PReLU": (("alpha",),),
    "LSTMCell": _RNN_CELL,
    "GRUCell": _RNN_CELL,
    "SimpleRNNCell": _RNN_CELL,
}

# Layers whose variables live in a sub-layer: the attribute Keras 3 saves it under, its class and
# the name Keras gives it.
SUBLAYERS: dict[str, tuple[str, str, str]] = {
    "LSTM": ("cell", "LSTMCell", "lstm_cell"),
    "GRU": ("cell", "GRUCell", "gru_cell"),
    "SimpleRNN": ("cell", "SimpleRNNCell", "simple_rnn_cell"),
}

# Bidirectional keeps two copies of an RNN layer, saved under these attributes (forward first, as
# Keras lists its weights); Keras names each copy after the wrapped layer with this prefix.
BIDIRECTIONAL = "Bidirectional"
HALVES: dict[str, str] = {"forward_layer": "forward_", "backward_layer": "backward_"}

# Attention layers keep their projections in EinsumDense sub-layers: the attribute Keras 3 saves
# each under, and the name Keras gives it (which legacy .h5 files use), in the order the layer
# creates them (its weights' order, which legacy .h5 loading follows). GroupedQueryAttention keeps
# them in private attributes; its config calls the class GroupQueryAttention, its exported name.
_MHA_PARTS = {
    "query_dense": ("query", "EinsumDense"),
    "key_dense": ("key", "EinsumDense"),
    "gate_dense": ("gate", "EinsumDense"),
    "value_dense": ("value", "EinsumDense"),
    "output_dense": ("attention_output", "EinsumDense"),
}
_GQA_PARTS = {f"_{attr}": part for attr, part in _MHA_PARTS.items()}
PARTS: dict[str, dict[str, tuple[str, str]]] = {
    "MultiHeadAttention": _MHA_PARTS,
    "GroupedQueryAttention": _GQA_PARTS,
    "GroupQueryAttention": _GQA_PARTS,
}
# Classes whose config name differs from the Python class Keras 3 derives its save paths from.
SAVED_CLASS = {"GroupQueryAttention": "GroupedQueryAttention"}

MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})

# Variables Keras keeps out of training; legacy .h5 files list a layer's trainable variables first.
NON_TRAINABLE = frozenset({"moving_mean", "moving_variance"})


def snake_case(class_name: str) -> str:
    """The name Keras derives from a class name (``Conv2DTranspose`` -> ``conv2d_transpose``)."""
    name = re.sub(r"\W+", "", SAVED_CLASS.get(class_name, class_name))
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


_BY_SNAKE = {
    snake_case(c): c for c in [*VARIABLES, *SUBLAYERS, *PARTS, *MODEL_CLASSES, BIDIRECTIONAL] if c not in SAVED_CLASS
}


def part_order(cls: str | None, key: str) -> int:
    """Where the sub-layer saved under ``key`` comes among its layer's weights (others after, by name)."""
    parts = list(PARTS.get(cls or "", {}))
    return parts.index(key) if key in parts else len(parts)


def class_from_auto_name(name: str) -> str | None:
    """The class behind a name Keras generated (``conv2d_transpose_1`` -> ``Conv2DTranspose``)."""
    return _BY_SNAKE.get(re.sub(r"_\d+$", "", name))


def half_class(name: str) -> str | None:
    """The RNN class behind a Bidirectional half's auto-generated name (``backward_lstm_1`` -> ``LSTM``).

    A ``backward_layer`` given to Bidirectional keeps its own name (``lstm_3``).
    """
    for prefix in HALVES.values():
        name = name.removeprefix(prefix)
    cls = class_from_auto_name(name)
    return cls if cls in SUBLAYERS else None


def variable_names(class_name: str | None, count: int) -> tuple[str, ...] | None:
    """The names of a layer's ``count`` variables, when its class says so unambiguously."""
    options = [v for v in VARIABLES.get(class_name or "", ()) if len(v) == count]
    return options[0] if len(options) == 1 else None


def legacy_order(names: list[str]) -> list[str]:
    """Trainable variables first, as legacy .h5 files list a layer's weights."""
    leaf = [n.rsplit("/", 1)[-1] for n in names]
    return [n for n, v in zip(names, leaf, strict=True) if v not in NON_TRAINABLE] + [
        n for n, v in zip(names, leaf, strict=True) if v in NON_TRAINABLE
    ]


def is_dense_equation(equation: str, bias_axes: str | None = None) -> bool:
    """Whether an EinsumDense ``equation`` computes what Dense does: ``x @ kernel (+ bias)`` on the last axis.

    ``ab,bc->ac``, ``abc,cd->abd``, ``...b,bc->...c``: a 2-D kernel whose first axis contracts the
    input's last one and whose second is the output's last one; the bias, if any, along that axis.
    """
    match = re.fullmatch(r"([a-z.]*),([a-z]{2})->([a-z.]*)", equation.replace(" ", ""))
    if match is None:
        return False
    lhs, kernel, out = match.groups()
    inner, outer = kernel[0], kernel[1]
    return (
        lhs.endswith(inner)
        and inner != outer
        and out == lhs[:-1] + outer
        and inner not in lhs[:-1]
        and outer not in lhs
        and bias_axes in (None, "", outer)
    )
