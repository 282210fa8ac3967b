"""Hand tensors between numpy and torch without copying. Imports torch only when called."""

from __future__ import annotations

from typing import Any

import numpy as np

from ckptkit.core.dtypes import by_name, from_numpy
from ckptkit.core.errors import MissingDependencyError

# Types numpy has natively can go through torch.from_numpy; the rest are reinterpreted through an
# integer type of the same width, because torch.from_numpy rejects ml_dtypes arrays.
_SAME_WIDTH_INT = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch is not installed; pip install 'ckptkit[torch]'") from None
    return torch


def torch_to_numpy(tensor: Any) -> np.ndarray:
    """A numpy array with the tensor's dtype (ml_dtypes for bfloat16 and float8)."""
    torch = _torch()
    t = tensor.detach().cpu().contiguous()
    name = str(t.dtype).removeprefix("torch.")
    dtype = by_name(name)
    if dtype.numpy.kind in "biufc" and dtype.numpy.type.__module__ == "numpy":
        return t.numpy()
    width_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    return t.view(width_int).numpy().view(dtype.numpy)


def numpy_to_torch(array: np.ndarray) -> Any:
    """A torch tensor sharing memory with ``array`` where possible."""
    torch = _torch()
    dtype = from_numpy(array.dtype)
    arr = np.asarray(array, order="C")
    if not arr.flags.writeable:
        arr = arr.copy()
    target = getattr(torch, dtype.name)
    if arr.dtype.type.__module__ == "numpy":
        return torch.from_numpy(arr)
    carrier = torch.from_numpy(arr.view(_SAME_WIDTH_INT[dtype.itemsize]))
    return carrier.view(target)
