"""``--layout-hint PATTERN=KIND``: what a layer is, where names and shapes cannot tell.

PATTERN is a module or layer name (``features.3``, ``conv2d_1``), a full tensor name, or a glob.
KIND is one of :data:`KINDS`; ``depthwise`` takes an optional channel multiplier
(``depthwise:2``, ``separable:2``), ``flatten`` the PyTorch shape of the tensor before it was flattened,
channels first (``flatten:16x5x5``), ``mha`` the number of heads (``mha:8``) and ``gqa`` the numbers
of query and key/value heads (``gqa:8x2``).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from ckptkit.core.errors import UsageError

KINDS = {
    "dense": "a Linear/Dense layer whose input was not flattened from a feature map",
    "embedding": "an Embedding table",
    "reversible": "an Embedding table that a bias-less Linear shares (a tied output projection): Keras "
    "ReversibleEmbedding(tie_weights=True), the Linear keeps no tensor of its own",
    "conv": "a convolution",
    "conv_transpose": "a transposed convolution",
    "depthwise": "a depthwise convolution (depthwise:M for channel multiplier M)",
    "separable": "a depthwise-separable convolution (separable:M for multiplier M): Keras SeparableConv, "
    "PyTorch a depthwise and a pointwise convolution under <name>",
    "flatten": "a Linear/Dense layer after Flatten: flatten:CxHxW, the PyTorch shape before flattening",
    "norm": "a LayerNormalization (weight -> gamma)",
    "group_norm": "a GroupNormalization",
    "rms_norm": "an RMSNormalization (weight -> scale)",
    "mha": "multi-head attention, mha:HEADS: PyTorch nn.MultiheadAttention (or q/k/v/out Linear modules under "
    "NAME) <-> Keras MultiHeadAttention",
    "mha_linears": "multi-head attention as four Linear modules q_proj, k_proj, v_proj, out_proj under NAME "
    "(mha_linears:HEADS), not nn.MultiheadAttention",
    "gqa": "grouped-query attention, gqa:HEADSxKV_HEADS: q/k/v/out Linear modules <-> Keras GroupedQueryAttention",
    "keep": "leave the tensors as they are, names too",
}
ATTENTION_KINDS = ("mha", "mha_linears", "gqa")
# Not a user's kind: a --template layer of a class no rule translates (Hint.cls names it).
NO_RULE = "no_rule"
_ALIASES = {"linear": "dense", "layer_norm": "norm", "convtranspose": "conv_transpose", "deconv": "conv_transpose"}


@dataclass(frozen=True)
class Hint:
    pattern: str
    kind: str
    dims: tuple[int, ...] = ()  # flatten: (C, H, W, ...); depthwise: (multiplier,); mha: (heads,); gqa: (heads, kv)
    cls: str = ""  # NO_RULE: the template's Keras class, and why it has no rule

    def matches(self, name: str) -> bool:
        return name == self.pattern or fnmatch.fnmatchcase(name, self.pattern)


def parse_hints(texts: tuple[str, ...] | list[str]) -> list[Hint]:
    return [_parse(t) for t in texts]


def _parse(text: str) -> Hint:
    pattern, sep, kind_text = text.rpartition("=")
    if not sep or not pattern or not kind_text:
        raise UsageError(f"--layout-hint {text!r}: write PATTERN=KIND, for example 'fc1=flatten:16x5x5'")
    kind, _, arg = kind_text.strip().lower().partition(":")
    kind = _ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise UsageError(f"--layout-hint {text!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
    dims: tuple[int, ...] = ()
    if arg:
        if kind not in ("flatten", "depthwise", "separable", *ATTENTION_KINDS):
            raise UsageError(f"--layout-hint {text!r}: {kind} takes no argument")
        try:
            dims = tuple(int(d) for d in re.split(r"[x,×*]", arg))
        except ValueError:
            raise UsageError(f"--layout-hint {text!r}: {arg!r} is not a list of sizes like 16x5x5") from None
        want = {"flatten": "CxHxW", "gqa": "HEADSxKV_HEADS", "mha": "HEADS", "mha_linears": "HEADS"}
        count = {"depthwise": 1, "separable": 1, "mha": 1, "mha_linears": 1, "gqa": 2}.get(kind)
        if any(d <= 0 for d in dims) or (count is not None and len(dims) != count):
            raise UsageError(f"--layout-hint {text!r}: sizes must be positive ({want.get(kind, 'one multiplier')})")
        if kind == "gqa" and dims[0] % dims[1]:
            raise UsageError(f"--layout-hint {text!r}: {dims[0]} query heads do not split evenly over {dims[1]}")
    elif kind == "flatten":
        raise UsageError(f"--layout-hint {text!r}: flatten needs the shape before flattening, like flatten:16x5x5")
    elif kind == "gqa":
        raise UsageError(f"--layout-hint {text!r}: gqa needs the query and key/value heads, like gqa:8x2")
    return Hint(pattern.strip(), kind, dims)


def find(hints: list[Hint], *names: str) -> Hint | None:
    """The last hint matching any of the names (a later hint overrides an earlier one)."""
    for hint in reversed(hints):
        if any(hint.matches(n) for n in names if n):
            return hint
    return None


def hint_help(name: str, kinds: tuple[str, ...]) -> str:
    return " or ".join(f"'{name}={k}'" for k in kinds)
