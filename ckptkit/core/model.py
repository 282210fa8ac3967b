"""The checkpoint model: an ordered set of named tensors, known from headers, read one at a time."""

from __future__ import annotations

import functools
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptkit.core.dtypes import DType, from_numpy
from ckptkit.core.errors import READ_ERRORS, CorruptCheckpointError, UnsupportedError, UsageError, describe_read_error

if TYPE_CHECKING:
    import numpy as np

ProgressFn = Callable[[int], None]
"""Called with a number of bytes just processed; the caller knows the total."""

MAX_DIMS = 64  # numpy's limit on dimensions
_MAX_ELEMENTS = 2**62  # far past any real tensor, still clear of numpy's index overflow


@dataclass(frozen=True)
class TensorInfo:
    """What a header says about one tensor, before any of its data is read."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    location: str = ""  # where the bytes live, for people: "data/3", "offset 1024", ...

    def __post_init__(self) -> None:
        # Every reader builds these from a header: refuse shapes numpy cannot hold here, once.
        try:
            shape = tuple(operator.index(d) for d in self.shape)
        except TypeError:
            raise CorruptCheckpointError(f"tensor {self.name!r}: shape {self.shape!r} is not a list of sizes") from None
        if len(shape) > MAX_DIMS:
            raise CorruptCheckpointError(
                f"tensor {self.name!r} has {len(shape)} dimensions; at most {MAX_DIMS} are possible"
            )
        if any(d < 0 or d > _MAX_ELEMENTS for d in shape) or math.prod(shape) * self.dtype.itemsize > _MAX_ELEMENTS:
            raise CorruptCheckpointError(f"tensor {self.name!r}: shape {list(shape)} is not a possible tensor size")
        object.__setattr__(self, "shape", shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class RawExtent:
    """A tensor's bytes lying contiguous, C-ordered and little-endian inside one file.

    Writers use it to copy data without decoding it. ``crc32c`` is the CRC-32C (unmasked) the
    file records for these bytes, where its format records one (TensorFlow checkpoints); readers
    do not check it, and a check after a copy compares it with the copy's own (see
    :mod:`ckptkit.io.extents`).
    """

    path: Path
    offset: int
    nbytes: int
    crc32c: int | None = None


class Checkpoint(ABC):
    """A checkpoint opened for reading.

    Readers list every tensor from the header (:meth:`tensor_infos`) and load data only when
    :meth:`read_tensor` is called, one tensor at a time. ``aliases`` maps extra names to the
    tensor they share storage with (tied weights); alias names are not in :meth:`tensor_infos`.
    ``metadata`` holds string metadata, format-specific keys namespaced as ``"format:key"``.
    ``extras`` holds the non-tensor content of training checkpoints (epoch, optimizer scalars,
    hyperparameters), flattened to dotted names.
    ``unsupported`` maps the names of tensors the file holds but ckptkit cannot represent (a
    quantized or sparse PyTorch tensor, complex32, ...) to why and what to do, worded to follow
    "tensor 'name' is ...". They are not in :meth:`tensor_infos`: the rest of the checkpoint
    stays readable, and writers refuse the checkpoint until they are left out (:func:`refuse_unsupported`).
    ``concurrent_reads`` says that :meth:`read_tensor` and :meth:`raw_extent` may be called from
    several threads at once (readers over memory maps can; readers sharing one file position
    cannot), so work over its tensors may run on threads.
    """

    format_name: str = "?"
    concurrent_reads: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every reader, built-in or plug-in, reports a damaged file as CorruptCheckpointError
        # rather than whatever numpy or the standard library raised on the way.
        super().__init_subclass__(**kwargs)
        for attr in ("tensor_infos", "read_tensor", "raw_extent"):
            fn = cls.__dict__.get(attr)
            if fn is not None and not getattr(fn, "_ckptkit_guarded", False):
                setattr(cls, attr, _guarded(fn))

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.metadata: dict[str, str] = {}
        self.extras: dict[str, Any] = {}
        self.aliases: dict[str, str] = {}
        self.unsupported: dict[str, str] = {}

    @abstractmethod
    def tensor_infos(self) -> Sequence[TensorInfo]:
        """Every tensor, in the checkpoint's own order."""

    @abstractmethod
    def read_tensor(self, name: str) -> np.ndarray:
        """The tensor's data as a C-contiguous, native-endian numpy array (may be read-only)."""

    def raw_extent(self, name: str) -> RawExtent | None:
        """Where the tensor's bytes lie as-is in a file, if they do; else ``None``."""
        return None

    def data_files(self) -> list[Path]:
        """Files besides :attr:`path` that hold the checkpoint's data (a TensorFlow checkpoint's data
        files), whether or not a tensor lies in them as-is; listed by ``hash`` manifests."""
        return []

    def span_reader(self, name: str) -> Callable[[int, int], np.ndarray] | None:
        """For a tensor decoded when read (a quantized GGUF tensor): a function giving its flat,
        C-order elements ``start:stop`` without building the whole tensor, so that a pass over it
        (``diff``) holds one span at a time. The array it returns may be a buffer that function
        reuses for its next call from the same thread. ``None`` (the default) when :meth:`read_tensor`
        costs no more (a view of a mapped file) or the reader has no such path."""
        return None

    def structure(self) -> dict[str, Any] | None:
        """How the format groups the tensors, for ``inspect`` (``None``: a flat list).

        ``{"kind": ..., "sections": [{"title": ..., "groups": [{"name", "kind", "tensors"}]}]}``:
        for example a Keras file's layers with their weights, and its optimizer variables apart.
        """
        return None

    def stored_type(self, name: str) -> str:
        """How the tensor is stored: its dtype's name, or the format's own encoding when that differs
        (a GGUF quantization such as ``Q4_K``, read back as float32)."""
        return self.info(name).dtype.name

    def stored_bytes(self, name: str) -> int:
        """The bytes the tensor takes in the file (fewer than ``nbytes`` for a quantized tensor)."""
        return self.info(name).nbytes

    def read_torch(self, name: str) -> Any:
        """The tensor as a ``torch.Tensor`` (needs torch installed; bfloat16 and float8 kept)."""
        from ckptkit.core.torch_interop import numpy_to_torch

        return numpy_to_torch(self.read_tensor(name))

    def close(self) -> None:  # noqa: B027 - readers without open resources need not override it
        """Release files and maps. Arrays returned earlier may become invalid."""

    def among_shards(self, shards: Sequence[Checkpoint]) -> Checkpoint:
        """This checkpoint read as one shard of a checkpoint split over ``shards`` (itself among them).

        A format whose shards state something only once (Keras writes a layer's name only into the
        shard where the layer starts) returns the shard reopened with what the others state, and
        closes this one. By default a shard needs nothing from the others and is returned as is.
        """
        return self

    def shard_of(self, name: str) -> Checkpoint:
        """The checkpoint that holds tensor ``name``: one shard of a sharded checkpoint, else itself."""
        return self

    # Conveniences built on the abstract methods.

    def info(self, name: str) -> TensorInfo:
        """The header entry of one tensor; ``KeyError`` if there is none of that name."""
        index = self.__dict__.get("_info_index")
        if index is None:
            index = self.__dict__["_info_index"] = {ti.name: ti for ti in self.tensor_infos()}
        return index[name]

    def names(self) -> list[str]:
        return [ti.name for ti in self.tensor_infos()]

    def __contains__(self, name: object) -> bool:
        try:
            self.info(str(name))
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self.tensor_infos())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    @property
    def total_bytes(self) -> int:
        return sum(ti.nbytes for ti in self.tensor_infos())

    @property
    def total_params(self) -> int:
        return sum(ti.numel for ti in self.tensor_infos())

    url: str | None = None  # where a checkpoint read from a URL lies (its ``path`` is then None)
    # Set by the registry on a checkpoint it opened: a picklable call that opens it again.
    reopen: Callable[[], Checkpoint] | None = None

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A checkpoint holds open files and maps; sent to another process (a Dask worker) it
        # travels as the recipe that reopens it there. Views and in-memory checkpoints pickle
        # their attributes as usual.
        if self.reopen is not None:
            return (self.reopen, ())
        return super().__reduce_ex__(protocol)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.format_name} {self.path} tensors={len(self)}>"


def refuse_unsupported(ckpt: Checkpoint) -> None:
    """Raise :class:`UnsupportedError` naming the first tensor ckptkit cannot read, if there is one.

    What writes or hashes a whole checkpoint calls it: such tensors are never dropped silently.
    """
    if not ckpt.unsupported:
        return
    names = list(ckpt.unsupported)
    first = names[0]
    count = ""
    if len(names) > 1:
        shown = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
        count = f" (1 of {len(names)} such tensors: {shown}; ckptkit inspect lists them)"
    raise UnsupportedError(
        f"tensor {first!r} is {ckpt.unsupported[first]}, or leave it out with --exclude {first!r}{count}", ckpt.path
    )


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with the errors of reading a damaged file turned into :class:`CorruptCheckpointError`."""

    @functools.wraps(fn)
    def guarded(self: Checkpoint, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except READ_ERRORS as err:
            if isinstance(err, KeyError) and args and args[0] not in self:
                raise  # the caller asked for a tensor that is not there
            what = f"tensor {args[0]!r}" if args else "the tensor list"
            raise CorruptCheckpointError(f"cannot read {what}: {describe_read_error(err)}", self.path) from err

    guarded._ckptkit_guarded = True  # type: ignore[attr-defined]
    return guarded


class MemoryCheckpoint(Checkpoint):
    """A checkpoint held in memory, for saving a dict of arrays through any writer."""

    format_name = "memory"
    concurrent_reads = True

    def __init__(
        self,
        tensors: Mapping[str, Any],
        metadata: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        import numpy as np

        super().__init__(None)
        self._arrays: dict[str, np.ndarray] = {}
        for name, value in tensors.items():
            self._arrays[name] = np.asarray(to_numpy(value), order="C")
        self._infos = [TensorInfo(n, from_numpy(a.dtype), tuple(a.shape), "memory") for n, a in self._arrays.items()]
        self.metadata.update(metadata or {})
        self.aliases.update(aliases or {})

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        return self._arrays[name]


def to_numpy(value: Any) -> np.ndarray:
    """A numpy view of an array-like; torch tensors (bfloat16 and float8 too) without copying."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch"):
        from ckptkit.core.torch_interop import torch_to_numpy

        return torch_to_numpy(value)
    return np.asarray(value)


@dataclass
class Receipt:
    """What a conversion did, for the user to read and for tests to check."""

    source: str
    destination: str
    source_format: str
    destination_format: str
    tensors_written: int = 0
    bytes_written: int = 0
    renamed: dict[str, str] = field(default_factory=dict)
    cast: dict[str, str] = field(default_factory=dict)
    transformed: dict[str, str] = field(default_factory=dict)  # new name -> how its layout was changed
    aliased: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verified: bool = False
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_size(text: str) -> int:
    """Parse ``5GB`` (decimal, as Hugging Face counts), ``4GiB``, ``500MB`` or a plain byte count."""
    units = {
        "": 1, "b": 1,
        "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
        "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    }  # fmt: skip
    s = text.strip().lower().replace(" ", "")
    num = s.rstrip("kmgtib")
    unit = s[len(num) :]
    try:
        value = float(num)
    except ValueError:
        raise UsageError(f"cannot read size {text!r}; write it like 5GB, 500MB or 2GiB") from None
    if unit not in units or value <= 0:
        raise UsageError(f"cannot read size {text!r}; write it like 5GB, 500MB or 2GiB")
    return int(value * units[unit])
