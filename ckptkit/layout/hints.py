"""``--layout-hint PATTERN=KIND``: what a layer is, where names and shapes cannot tell.

PATTERN is a module or layer name (``features.3``, ``conv2d_1``), a full tensor name, or a glob.
KIND is one of :data:`KINDS`; ``depthwise`` takes an optional channel multiplier
(``depthwise:2``, ``separable:2``) and ``flatten`` the PyTorch shape of the tensor before it was flattened,
channels first (``flatten:16x5x5``).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from ckptkit.core.errors import UsageError

KINDS = {
    "dense": "a Linear/Dense layer whose input was not flattened from a feature map",
    "embedding": "an Embedding table",
    "conv": "a convolution",
    "conv_transpose": "a transposed convolution",
    "depthwise": "a depthwise convolution (depthwise:M for channel multiplier M)",
    "separable": "a depthwise-separable convolution (separable:M for multiplier M): Keras SeparableConv, "
    "PyTorch a depthwise and a pointwise convolution under <name>",
    "flatten": "a Linear/Dense layer after Flatten: flatten:CxHxW, the PyTorch shape before flattening",
    "norm": "a LayerNormalization (weight -> gamma)",
    "group_norm": "a GroupNormalization",
    "rms_norm": "an RMSNormalization (weight -> scale)",
    "keep": "leave the tensors as they are, names too",
}
_ALIASES = {"linear": "dense", "layer_norm": "norm", "convtranspose": "conv_transpose", "deconv": "conv_transpose"}


@dataclass(frozen=True)
class Hint:
    pattern: str
    kind: str
    dims: tuple[int, ...] = ()  # flatten: (C, H, W, ...); depthwise: (multiplier,)

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
        if kind not in ("flatten", "depthwise", "separable"):
            raise UsageError(f"--layout-hint {text!r}: {kind} takes no argument")
        try:
            dims = tuple(int(d) for d in re.split(r"[x,×*]", arg))
        except ValueError:
            raise UsageError(f"--layout-hint {text!r}: {arg!r} is not a list of sizes like 16x5x5") from None
        if any(d <= 0 for d in dims) or (kind == "depthwise" and len(dims) != 1):
            raise UsageError(
                f"--layout-hint {text!r}: sizes must be positive ({'CxHxW' if kind == 'flatten' else 'one multiplier'})"
            )
    elif kind == "flatten":
        raise UsageError(f"--layout-hint {text!r}: flatten needs the shape before flattening, like flatten:16x5x5")
    return Hint(pattern.strip(), kind, dims)


def find(hints: list[Hint], *names: str) -> Hint | None:
    """The last hint matching any of the names (a later hint overrides an earlier one)."""
    for hint in reversed(hints):
        if any(hint.matches(n) for n in names if n):
            return hint
    return None


def hint_help(name: str, kinds: tuple[str, ...]) -> str:
    return " or ".join(f"'{name}={k}'" for k in kinds)
