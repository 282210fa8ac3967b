"""Bare Python pickles (``.pkl``, ``.pickle``) and joblib files, read without running them.

A pickled dict of numpy arrays is a common way weights are passed around, and joblib (scikit-learn's
``joblib.dump``) writes a pickle whose arrays follow their ``NumpyArrayWrapper`` as raw bytes (or,
for arrays of objects, as a pickle of their own). Both are read with the allow-listed unpickler
(:mod:`ckptkit.io.unpickler`): numeric arrays become tensors named by their key path, other plain
values extras; a pickle that calls anything outside the allow-list is refused, as ``verify``
reports it. Every pickle in the file counts: ``pickle.load`` called twice reads the second.
Compressed joblib files (zlib, gzip, bz2, xz/lzma) are inflated up to the pickle size limit.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable, Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ckptkit.core import limits
from ckptkit.core.dtypes import from_numpy
from ckptkit.core.errors import CorruptCheckpointError, UnsafeCheckpointError, UnsupportedError, describe_read_error
from ckptkit.core.format import Format
from ckptkit.core.model import Checkpoint, TensorInfo
from ckptkit.formats.numpy.npy import NUMPY_DTYPES
from ckptkit.io.unpickler import ObjectsUnpickler, OpaqueObject, PickledArray, PickledDType

if TYPE_CHECKING:
    import numpy as np

EXTENSIONS = (".pkl", ".pickle", ".joblib")
ROOT_NAME = "array"
_MAX_PICKLES = 64
_SCALARS = (type(None), bool, int, float, str)
_WRAPPERS = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("sklearn.externals.joblib.numpy_pickle", "NumpyArrayWrapper"),
}


class _ArrayWrapper:
    """joblib's ``NumpyArrayWrapper``: the shape, order and dtype of the raw array that follows it."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CorruptCheckpointError("a joblib NumpyArrayWrapper whose state is not a dict")
        self.state = state


class _Stream:
    """The unpickler's own read functions, for the pickle of a joblib object array nested in the stream."""

    def __init__(self, read: Callable[[int], bytes], readline: Callable[[], bytes]) -> None:
        self._read, self._readline = read, readline

    def read(self, n: int = -1, /) -> bytes:
        return self._read(n)

    def readline(self, limit: int = -1, /) -> bytes:
        return self._readline()


class JoblibUnpickler(ObjectsUnpickler):
    """The allow-listed unpickler, also reading joblib's arrays from the stream after their wrapper."""

    takes_state = (_ArrayWrapper,)
    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(ObjectsUnpickler.dispatch)
    read: Callable[[int], bytes]
    readline: Callable[[], bytes]

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _WRAPPERS:
            return _ArrayWrapper
        return super().find_class(module, name)

    def load_build(self) -> None:
        ObjectsUnpickler.dispatch[ord("b")](self)
        if isinstance(self.stack[-1], _ArrayWrapper):
            self.stack[-1] = self._joblib_array(self.stack[-1].state)

    dispatch[ord("b")] = load_build

    def _joblib_array(self, state: dict[str, Any]) -> object:
        import numpy as np

        dtype, shape, order = state.get("dtype"), state.get("shape"), state.get("order", "C")
        if not isinstance(dtype, PickledDType) or not isinstance(shape, tuple) or order not in ("C", "F"):
            raise CorruptCheckpointError("a joblib array without a plain dtype, a shape and an order")
        if not all(type(d) is int and d >= 0 for d in shape):
            raise CorruptCheckpointError(f"a joblib array of shape {shape!r}")
        if dtype.dtype.hasobject:
            nested = JoblibUnpickler(_Stream(self.read, self.readline), strict=False, trusted=self.trusted)
            try:
                return nested.load()
            finally:
                for key, use in nested._uses.items():
                    mine = self._uses.setdefault(key, use)
                    if mine is not use:
                        mine.calls.extend(use.calls)
        if state.get("numpy_array_alignment_bytes") is not None:
            pad = self.read(1)
            self.read(pad[0] if pad else 0)
        count = 1
        for d in shape:
            count *= d
        nbytes = count * dtype.dtype.itemsize
        if nbytes > limits.current().pickle_bytes:
            raise limits.exceeded("a joblib array", nbytes, "pickle_bytes")
        raw = self.read(nbytes)
        if len(raw) != nbytes:
            raise CorruptCheckpointError(f"a joblib array of {nbytes:,} bytes is cut short: truncated?")
        flat = np.frombuffer(raw, dtype.dtype)
        return flat.reshape(shape[::-1]).T if order == "F" else flat.reshape(shape)


def payload(path: Path) -> bytes:
    """The file's bytes, inflated when joblib compressed them; never more than the pickle size limit."""
    cap = limits.current().pickle_bytes
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    inflate: Callable[[bytes, int], bytes] | None = None
    if data[:2] == b"\x1f\x8b":
        inflate = zlib.decompressobj(31).decompress
    elif data[:1] == b"\x78" and len(data) > 1 and (data[0] * 256 + data[1]) % 31 == 0:
        inflate = zlib.decompressobj().decompress
    elif data[:3] == b"BZh":
        inflate = bz2.BZ2Decompressor().decompress
    elif data[:6] == b"\xfd7zXZ\x00" or data[:3] == b"\x5d\x00\x00":
        inflate = lzma.LZMADecompressor().decompress
    try:
        if inflate is not None:
            data = inflate(data, cap + 1)
    except (zlib.error, OSError, EOFError, lzma.LZMAError) as err:
        raise CorruptCheckpointError(f"the compressed pickle cannot be inflated: {err}") from None
    if len(data) > cap:
        raise limits.exceeded("the pickle", len(data), "pickle_bytes")
    return data


def load_pickles(data: bytes, strict: bool) -> tuple[list[object], list[JoblibUnpickler], Exception | None]:
    """Every pickle in ``data``, one after another: (objects, their unpicklers, why the stream stopped early).

    With ``strict`` a pickle that calls what is not allow-listed raises
    :class:`~ckptkit.core.errors.UnsafeCheckpointError`.
    """
    stream = BytesIO(data)
    objects: list[object] = []
    unpicklers: list[JoblibUnpickler] = []
    while stream.tell() < len(data) and len(unpicklers) < _MAX_PICKLES:
        unpickler = JoblibUnpickler(stream, strict=strict)
        unpicklers.append(unpickler)
        try:
            objects.append(unpickler.load())
        except UnsafeCheckpointError as err:
            if len(unpicklers) == 1:
                raise
            raise UnsafeCheckpointError(f"{pickle_label(len(unpicklers) - 1)}: {err.message}") from None
        except Exception as err:  # a hostile pickle can make the unpickler raise anything
            return objects, unpicklers, err
    return objects, unpicklers, None


def pickle_label(index: int) -> str:
    """How findings name the pickles after the first one in a file."""
    return f"pickle {index + 1} of the file"


def failure_message(err: Exception, index: int) -> str:
    what = "the pickle" if index == 0 else pickle_label(index)
    return f"{what} cannot be parsed to the end: {describe_read_error(err, 'the pickle is malformed')}"


class PickleCheckpoint(Checkpoint):
    """The numeric arrays of a bare pickle or joblib file, named by where they sit; the rest as extras."""

    format_name = "pickle"
    concurrent_reads = True

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        objects, _unpicklers, err = load_pickles(payload(path), strict=True)
        if err is not None:  # verify reports the same: bytes no loader could read as a pickle
            raise CorruptCheckpointError(failure_message(err, len(objects))) from None
        self._arrays: dict[str, np.ndarray] = {}
        self._walk(objects[0] if objects else None)
        if len(objects) > 1:
            self.metadata["pickle:count"] = str(len(objects))
        self._infos = [TensorInfo(n, from_numpy(a.dtype), tuple(a.shape), "pickle") for n, a in self._arrays.items()]

    def _walk(self, root: object) -> None:
        import numpy as np

        bounds = limits.current()
        stack: list[tuple[object, str, int]] = [(root, "", 0)]
        seen: set[int] = set()
        nodes = 0
        while stack:
            obj, name, depth = stack.pop()
            nodes += 1
            if nodes > bounds.pickle_objects or depth > bounds.pickle_depth:
                raise CorruptCheckpointError(
                    f"the pickle nests more than {bounds.pickle_depth} levels or expands past "
                    f"{bounds.pickle_objects:,} objects; if the file is trusted, raise the limits with "
                    f"{limits.Limits.env_name('pickle_depth')} or {limits.Limits.env_name('pickle_objects')}"
                )
            if isinstance(obj, PickledArray):
                obj = obj.array if obj.array is not None else f"<array of {len(obj.objects or [])} Python objects>"
            if isinstance(obj, np.ndarray):
                self._array(name or ROOT_NAME, obj)
                continue
            if isinstance(obj, (dict, list, tuple, OpaqueObject)):
                if id(obj) in seen:
                    self.extras[name or "value"] = "<shared>"
                    continue
                seen.add(id(obj))
            children: list[tuple[object, str]] = []
            if isinstance(obj, dict):
                children = [(v, _join(name, k)) for k, v in obj.items()]
            elif isinstance(obj, (list, tuple)) and not all(isinstance(v, _SCALARS) for v in obj):
                children = [(v, _join(name, i)) for i, v in enumerate(obj)]
            elif isinstance(obj, OpaqueObject):
                self.extras[name or "value"] = repr(obj)
                children = [(v, _join(name, f"args.{i}")) for i, v in enumerate(obj.args)]
                state = obj.state
                for part in state if isinstance(state, tuple) and len(state) == 2 else (state,):
                    if isinstance(part, Mapping):
                        children += [(v, _join(name, k)) for k, v in part.items()]
                    elif part is not None:
                        children.append((part, _join(name, "state")))
                children += [(v, _join(name, i)) for i, v in enumerate(obj.list_items)]
                children += [(v, _join(name, k)) for k, v in obj.dict_items.items()]
            else:
                self.extras[name or "value"] = _leaf(obj)
            stack.extend((c, n, depth + 1) for c, n in reversed(children))

    def _array(self, name: str, arr: np.ndarray) -> None:
        import numpy as np

        while name in self._arrays or name in self.unsupported:
            name += "~2"
        try:
            if arr.dtype.kind not in "biufc" or arr.dtype.fields is not None:
                raise UnsupportedError(f"numpy dtype {arr.dtype}")
            from_numpy(arr.dtype)
        except UnsupportedError:
            self.unsupported[name] = f"a numpy {arr.dtype} array, which ckptkit does not read as a tensor"
            return
        self._arrays[name] = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False))

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        return self._arrays[name]


def _join(prefix: str, key: object) -> str:
    text = key if isinstance(key, str) else str(key)
    return f"{prefix}.{text}" if prefix else text


def _leaf(obj: object) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        value = obj.item()
        return value if isinstance(value, _SCALARS) else str(value)
    if isinstance(obj, (list, tuple)):
        return [_leaf(v) for v in obj]
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, (bytes, bytearray)):
        return f"<{len(obj)} bytes>"
    return str(obj)


def sniff(head: bytes, path: Path) -> bool:
    """A pickle of protocol 2 to 5 (its PROTO opcode), or a file named .pkl, .pickle or .joblib."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        # A pickle that starts with a 10-byte integer is torch's legacy magic number: a torch file
        # (cut short, if the torch format did not claim it), not a bare pickle.
        return head[2:4] != b"\x8a\x0a"
    return bool(head) and path.name.lower().endswith(EXTENSIONS)


def open_pickle(path: Path, options: Mapping[str, Any]) -> Checkpoint:
    return PickleCheckpoint(path)


FORMAT = Format(
    name="pickle",
    description="bare Python pickles and joblib files (read only): numeric arrays, nothing run",
    extensions=EXTENSIONS,
    sniff=sniff,
    open=open_pickle,
    verify="ckptkit.formats.numpy.verify:check_pickle",
    dtypes=NUMPY_DTYPES,
)
