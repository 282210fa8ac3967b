"""Numbers and sizes as the human-readable reports show them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ckptkit.diffing.report import TensorDiff

# Columns of the drift tables in every human-readable form: (metric key, heading).
DRIFT_COLUMNS = (
    ("max_abs", "max |Δ|"),
    ("mean_abs", "mean |Δ|"),
    ("rel_l2", "rel L2"),
    ("cosine", "cosine"),
    ("snr_db", "SNR dB"),
    ("identical", "identical"),
    ("nonfinite", "NaN/Inf"),
)


def num(value: Any) -> str:
    """A metric value: integers as they are, floats to 3 significant digits, ``-`` for undefined."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    return f"{value:.3g}"


def cosine(value: float | None) -> str:
    """Cosines near 1 as ``1-2.5e-07``, so that small drifts do not all read as 1."""
    if value is None:
        return "-"
    if value == 1.0:
        return "1"
    if value > 0.999:
        return f"1-{1 - value:.2g}"
    return f"{value:.4f}"


def share(value: float | None) -> str:
    """A fraction as a percentage that is 100% only when exactly 1."""
    if value is None:
        return "-"
    if value == 1.0:
        return "100%"
    return f"{min(value * 100, 99.99):.2f}%"


def metric(key: str, metrics: dict[str, Any] | None) -> str:
    """One drift-table cell."""
    if metrics is None:
        return "-"
    value = metrics.get(key)
    if key == "cosine":
        return cosine(value)
    if key == "identical":
        return share(value)
    if key == "nonfinite":
        return nonfinite(metrics)
    return num(value)


def nonfinite_count(metrics: dict[str, Any] | None) -> int:
    """NaN and Inf elements on both sides together (a layer that gained a NaN has 0 drift otherwise)."""
    if metrics is None:
        return 0
    return sum(int(metrics.get(k) or 0) for k in ("nan_a", "nan_b", "inf_a", "inf_b"))


def nonfinite(metrics: dict[str, Any] | None) -> str:
    """NaN/Inf counts per side, ``0`` when there are none: ``B: 3 NaN`` or ``A: 1 Inf, B: 2 NaN 1 Inf``."""
    if not nonfinite_count(metrics):
        return "0"
    assert metrics is not None
    sides = []
    for side in ("a", "b"):
        parts = [f"{metrics[f'{kind}_{side}']} {kind.upper() if kind == 'nan' else 'Inf'}".replace("NAN", "NaN")
                 for kind in ("nan", "inf") if metrics.get(f"{kind}_{side}")]  # fmt: skip
        if parts:
            sides.append(f"{side.upper()}: {' '.join(parts)}")
    return ", ".join(sides)


def size(n: float, signed: bool = False) -> str:
    """Bytes in decimal units (as Hugging Face counts); ``signed`` adds ``+`` to increases."""
    sign = "-" if n < 0 else ("+" if signed and n > 0 else "")
    n = abs(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.2f} {unit}"
        n /= 1000
    return f"{sign}{n:.2f} TB"


def count(n: int, signed: bool = False) -> str:
    return f"{n:+,}" if signed else f"{n:,}"


def shape(dims: Any) -> str:
    return "-" if dims is None else "[" + ", ".join(str(d) for d in dims) + "]"


def tensor_dtype(t: TensorDiff) -> str:
    """``float16``, or ``float32 → float16`` when the dtype changed; a side stored otherwise (a GGUF
    quantization) shows its encoding: ``float16 → Q4_K``."""
    a, b = t.storage_a or t.dtype_a, t.storage_b or t.dtype_b
    if t.dtype_changed or (t.status != "only_a" and t.status != "only_b" and a != b):
        return f"{a} → {b}"
    return a or b or "-"


def unsupported_reason(t: TensorDiff) -> str:
    """Why a tensor is not comparable: ``A: a quantized tensor ...; B: ...``."""
    return "; ".join(f"{side}: {why}" for side, why in (("A", t.unsupported_a), ("B", t.unsupported_b)) if why)


def tensor_shape(t: TensorDiff) -> str:
    """``[4, 8]``, or ``[4, 8] → [8, 4]`` when the shape changed."""
    if t.shape_a is not None and t.shape_b is not None and t.shape_a != t.shape_b:
        return f"{shape(t.shape_a)} → {shape(t.shape_b)}"
    return shape(t.shape_a if t.shape_a is not None else t.shape_b)
