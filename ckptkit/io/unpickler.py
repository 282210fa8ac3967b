"""An unpickler for checkpoint pickles that never imports or calls what the pickle names.

A pickle is a small program: its GLOBAL opcodes name any importable callable and REDUCE calls it,
which is how a malicious checkpoint runs ``os.system`` inside ``torch.load``. This unpickler
resolves every global itself (:meth:`SafeUnpickler.find_class`) and judges what the pickle does
with it, by allow-list:

* allow-listed globals (the tensor rebuild functions, storage and dtype markers, plain-data
  builtins, numpy scalars and arrays, a few pure data constructors) map to ckptkit's own
  stand-ins, which build lightweight records (:class:`TensorRecord`) instead of tensors;
* every other global becomes a named placeholder class (:class:`OpaqueObject`) that records its
  arguments and state, so tensors inside an ``argparse.Namespace`` are still found;
* a pickle that **calls** a global outside the allow-list (REDUCE, INST, OBJ, NEWOBJ_EX with
  keyword arguments, or calls what such a call returned) is a ``pickle.call`` error, named as
  written and as resolved, with the key path where the call's result sits; a global on
  :data:`DANGEROUS_GLOBALS` is an error even when only named; an unknown class only
  instantiated (NEWOBJ, then its state) is a warning.

Dotted names (protocol 4 walks attributes: ``pathlib`` + ``os.system`` reaches ``os.system``)
are resolved as the stock unpickler would and judged by what they reach (:func:`resolve_global`).
``strict=True`` (reading) raises :class:`UnsafeCheckpointError` with the first error's words once
the pickle is parsed; ``strict=False`` (``verify``) keeps every finding in
:attr:`SafeUnpickler.findings`. Globals trusted with ``--allow-global`` (:mod:`ckptkit.core.trust`)
give no finding.
"""

from __future__ import annotations

import _compat_pickle
import functools
import math
import pickle
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from ckptkit.core import dtypes, limits, trust
from ckptkit.core.dtypes import DType
from ckptkit.core.errors import CorruptCheckpointError, UnsafeCheckpointError
from ckptkit.core.findings import Finding

if TYPE_CHECKING:
    import numpy as np

Severity = Literal["error", "warning"]


class Readable(Protocol):
    """What the unpickler reads from: a binary file or ``io.BytesIO``."""

    def read(self, n: int = -1, /) -> bytes: ...

    def readline(self, limit: int = -1, /) -> bytes: ...


CALL = "pickle.call"
DANGEROUS = "pickle.dangerous-global"
UNKNOWN = "pickle.unknown-global"
_NOT_ALLOWED = "is not on the allow-list of data constructors"


@dataclass(frozen=True)
class PickleFinding:
    """What a pickle does with a global that is not on the allow-list.

    ``check`` is :data:`CALL` (the pickle calls it: an error), :data:`DANGEROUS` (a global on
    :data:`DANGEROUS_GLOBALS` named without a call: an error) or :data:`UNKNOWN` (a class only
    instantiated or referred to: a warning). ``module.name`` is the global as resolved;
    ``written`` the spelling in the pickle when it differs. ``site`` is the key path where a
    call's result sits (``""``: the pickle's root), ``None`` when the result is not kept.
    """

    module: str
    name: str
    severity: Severity
    reason: str
    check: str = UNKNOWN
    written: str = ""
    site: str | None = None
    more_sites: int = 0

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def to_finding(self, file: object, member: str = "") -> Finding:
        """The finding as ``verify`` reports it; ``member`` names the archive member that holds the pickle."""
        return Finding(self.severity, self.check, f"{member}: {self.message}" if member else self.message, str(file))

    @property
    def message(self) -> str:
        """The finding in words; ``verify`` and a refusing reader say the same."""
        spelled = f" (written {self.written})" if self.written and self.written != self.qualname else ""
        if self.site is None:
            where = ""
        else:
            where = f" at {self.site!r}" if self.site else " as the pickle's root object"
            if self.more_sites:
                where += f" and {self.more_sites} more place(s)"
        if self.check == CALL and self.name.endswith("()"):
            return (
                f"the pickle calls what {self.qualname[:-2]} returned{where}; "
                "nothing was run, but torch.load(weights_only=False) or pickle.load would run whatever that is"
            )
        if self.check == CALL:
            hint = (
                f"; if you trust it, pass --allow-global {self.qualname}"
                if self.reason == _NOT_ALLOWED and not self.name.endswith("()")
                else ""
            )
            return (
                f"the pickle calls {self.qualname}{spelled}{where}, which {self.reason}; nothing was run, but "
                f"torch.load(weights_only=False) or pickle.load would run it{hint}"
            )
        if self.check == DANGEROUS:
            return f"the pickle refers to {self.qualname}{spelled}, which {self.reason}; nothing was run"
        return f"the pickle names {self.qualname}{spelled}, not on the allow-list: {self.reason}"


# What a pickle may not call. ``None`` means every name in the module (and its submodules).
# fmt: off
DANGEROUS_GLOBALS: tuple[tuple[str, frozenset[str] | None, str], ...] = (
    # module            names                                           why it is refused
    ("os",              None, "runs shell commands and changes files"),
    ("posix",           None, "runs shell commands and changes files"),
    ("nt",              None, "runs shell commands and changes files"),
    ("subprocess",      None, "starts processes"),
    ("_posixsubprocess", None, "starts processes"),
    ("pty",             None, "spawns a shell"),
    ("multiprocessing", None, "starts processes"),
    ("asyncio",         None, "starts processes and opens connections"),
    ("signal",          None, "sends signals to processes"),
    ("sys",             None, "reaches interpreter internals"),
    ("gc",              None, "reaches every live object"),
    ("builtins", frozenset({
        "eval", "exec", "compile", "getattr", "setattr", "delattr", "__import__", "open", "input",
        "breakpoint", "globals", "locals", "vars", "exit", "quit", "help", "apply", "type", "super",
    }), "evaluates code or reaches arbitrary attributes"),
    ("operator", frozenset({"attrgetter", "methodcaller", "call", "itemgetter"}),
     "calls or reaches arbitrary attributes and methods"),
    ("types", frozenset({
        "CodeType", "FunctionType", "LambdaType", "MethodType", "ModuleType", "CellType",
    }), "builds code or functions"),
    ("code",            None, "runs Python code"),
    ("codeop",          None, "compiles Python code"),
    ("runpy",           None, "runs Python modules"),
    ("timeit",          None, "runs code strings"),
    ("pdb",             None, "runs code in a debugger"),
    ("bdb",             None, "runs code in a debugger"),
    ("trace",           None, "runs code under tracing"),
    ("profile",         None, "runs code under the profiler"),
    ("cProfile",        None, "runs code under the profiler"),
    ("importlib",       None, "imports arbitrary modules"),
    ("imp",             None, "imports arbitrary modules"),
    ("zipimport",       None, "imports arbitrary modules"),
    ("pip",             None, "installs packages"),
    ("ctypes",          None, "calls native code"),
    ("_ctypes",         None, "calls native code"),
    ("shutil",          None, "copies and deletes files"),
    ("io",              frozenset({"open", "open_code", "FileIO"}), "opens files"),
    ("_io",             frozenset({"open", "open_code", "FileIO"}), "opens files"),
    ("tempfile",        None, "creates files"),
    ("platform",        frozenset({"popen"}), "runs shell commands"),
    ("commands",        None, "runs shell commands"),
    ("popen2",          None, "runs shell commands"),
    ("socket",          None, "opens network connections"),
    ("ssl",             None, "opens network connections"),
    ("urllib",          None, "downloads from the network"),
    ("http",            None, "talks to the network"),
    ("ftplib",          None, "talks to the network"),
    ("smtplib",         None, "talks to the network"),
    ("telnetlib",       None, "talks to the network"),
    ("xmlrpc",          None, "calls remote servers"),
    ("requests",        None, "downloads from the network"),
    ("webbrowser",      None, "opens URLs"),
    ("pickle",          None, "unpickles nested data, which can run code"),
    ("_pickle",         None, "unpickles nested data, which can run code"),
    ("cPickle",         None, "unpickles nested data, which can run code"),
    ("marshal",         None, "loads code objects"),
    ("shelve",          None, "unpickles nested data, which can run code"),
    ("dill",            None, "unpickles nested data and code"),
    ("cloudpickle",     None, "unpickles nested data and code"),
    ("joblib",          None, "unpickles nested data, which can run code"),
    ("numpy",           frozenset({"load", "loads", "fromfile"}), "reads files or unpickles nested data"),
    ("torch",           frozenset({"load"}), "unpickles nested data, which can run code"),
    ("torch.serialization", None, "unpickles nested data, which can run code"),
    ("torch.storage",   frozenset({"_load_from_bytes"}), "unpickles nested data, which can run code"),
    ("torch.hub",       None, "downloads and runs code"),
    ("torch.jit",       None, "loads and runs TorchScript"),
    ("torch._C",        None, "calls native code"),
    ("torch.ops",       None, "calls native operators"),
    ("torch.package",   None, "unpickles nested data and imports packaged code"),
    ("torch.fx",        None, "builds and runs generated code"),
    ("torch._dynamo",   None, "evaluates guard expressions as code"),
    ("torch._inductor", None, "compiles and runs code"),
    ("torch.utils.collect_env", None, "runs shell commands"),
    ("torch.utils.bottleneck", None, "runs code under the profiler"),
    ("torch.utils._config_module", None, "unpickles nested data, which can run code"),
    ("torch.utils.data.datapipes", None, "unpickles nested data, which can run code"),
    ("torch.testing",   None, "runs code for tests"),
    ("_operator", frozenset({"attrgetter", "methodcaller", "call", "itemgetter"}),
     "calls or reaches arbitrary objects"),
    ("functools",       frozenset({"partial", "partialmethod", "reduce"}), "calls what it wraps"),
    ("pydoc",           None, "imports modules by name and runs a pager command"),
    ("pkgutil",         None, "imports modules by name"),
    ("venv",            None, "creates environments and runs pip"),
    ("ensurepip",       None, "runs pip"),
    ("setuptools",      None, "runs build commands"),
    ("distutils",       None, "runs build commands and writes files"),
    ("uuid", frozenset({
        "_get_command_stdout", "_ifconfig_getnode", "_ip_getnode", "_arp_getnode", "_lanscan_getnode",
        "_netstat_getnode", "_find_mac_near_keyword", "_find_mac_under_heading", "getnode",
    }), "runs shell commands"),
    ("logging",         None, "opens files and sockets"),
    ("idlelib",         None, "runs Python code"),
    ("lib2to3",         None, "evaluates code strings"),
    ("doctest",         None, "runs Python code"),
    ("test",            None, "runs Python code and subprocesses"),
    ("imaplib",         None, "runs commands and talks to the network"),
    ("poplib",          None, "talks to the network"),
    ("nntplib",         None, "talks to the network"),
    ("aiohttp",         None, "talks to the network"),
    ("httplib",         None, "talks to the network"),
    ("_osx_support",    None, "runs shell commands"),
    ("_aix_support",    None, "runs shell commands"),
    ("_pyrepl",         None, "runs a pager command"),
    ("antigravity",     None, "opens a web browser when imported"),
    ("numpy.testing",   None, "runs code strings"),
    ("numpy.f2py",      None, "evaluates code strings"),
    ("numpy.distutils", None, "runs build commands"),
    ("numpy.ctypeslib", None, "loads native libraries"),
    ("pandas",          frozenset({"read_pickle", "eval"}), "unpickles nested data or evaluates code"),
    ("keras",           frozenset({"models", "saving"}), "loads models, which can run their code"),
)
# fmt: on


def dangerous_reason(module: str, name: str) -> str | None:
    """Why a pickle may not name ``module.name``, or ``None`` if it is not on the danger list."""
    parts = name.split(".")
    if any(p.startswith("__") and p.endswith("__") for p in parts[1:]):
        # A dotted name walks attributes (protocol 4): OrderedDict.__init__.__globals__ reaches os.
        return "walks attributes to reach interpreter internals"
    first = parts[0]
    for mod, names, reason in DANGEROUS_GLOBALS:
        if (module == mod or module.startswith(mod + ".")) and (names is None or first in names):
            return reason
    return None


@dataclass(frozen=True)
class Resolution:
    """A global as the pickle writes it and what the stock unpickler would reach with it.

    ``status`` is ``"allowed"`` (an allow-listed name, however spelled), ``"dangerous"`` (it
    reaches a name on :data:`DANGEROUS_GLOBALS`, or walks attributes a data pickle never walks) or
    ``"unknown"``.
    """

    written: str
    module: str
    name: str
    status: Literal["allowed", "dangerous", "unknown"]
    reason: str = ""

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


# Modules an attribute walk may reach by the name a module imports them under (pathlib.os is os).
_KNOWN_MODULES = frozenset(sys.stdlib_module_names) | {m.split(".")[0] for m, _n, _r in DANGEROUS_GLOBALS} | {
    "torch", "numpy", "keras", "tensorflow", "joblib", "dill", "cloudpickle", "requests", "pandas",
}  # fmt: skip


def _readings(module: str, name: str) -> list[tuple[str, str]]:
    """Every (module, name) the stock unpickler may reach with ``name`` walked from ``module``.

    Protocol 4 resolves ``torch`` + ``serialization.load`` through attributes: a component can be
    a submodule (``torch.serialization``) or a module imported under that name (``pathlib.os`` is
    ``os``; ``tempfile._os`` is ``os``).
    """
    parts = name.split(".")
    out = [(module, name)]
    for k in range(1, len(parts)):
        tail = ".".join(parts[k:])
        out.append((".".join([module, *parts[:k]]), tail))
        for start in range(k):
            head = parts[start]
            for alias in (head, head.lstrip("_")):
                if alias in _KNOWN_MODULES:
                    out.append((".".join([alias, *parts[start + 1 : k]]), tail))
    return list(dict.fromkeys(out))


def resolve_global(module: str, name: str, allowed: Callable[[str, str], bool]) -> Resolution:
    """What ``module`` + ``name`` reaches, judged: dangerous if any reading is, else allowed if one is.

    ``allowed(module, name)`` tells whether a plain (undotted) global is on the allow-list.
    """
    written = f"{module}.{name}"
    module, name = normalize_global(module, name)
    if "." not in name and allowed(module, name):
        return Resolution(written, module, name, "allowed")  # named exactly as allow-listed
    readings = _readings(module, name)
    # The last dangerous reading is the most specific: tempfile + _os.system reaches os.system.
    for mod, attr in reversed(readings):
        reason = dangerous_reason(mod, attr)
        if reason is not None:
            return Resolution(written, mod, attr, "dangerous", reason)
    for mod, attr in readings:
        if "." not in attr and allowed(mod, attr):
            return Resolution(written, mod, attr, "allowed")
    parts = name.split(".")
    if any(p[:1].islower() or p[:1] == "_" for p in parts[:-1]):
        # Classes are walked through classes (Outer.Inner, Class.method); a lowercase step is a
        # module or function attribute, which only a pickle hiding what it reaches needs.
        return Resolution(
            written, module, name, "dangerous",
            f"walks the attribute {module}.{'.'.join(parts[:-1])} to reach a name its module only imports",
        )  # fmt: skip
    return Resolution(written, module, name, "unknown")


# --- Records the unpickler builds instead of torch objects -----------------------------------


@dataclass(frozen=True, slots=True)
class Marker:
    """A torch or numpy name the pickle refers to as a value: a dtype, a layout, a storage class."""

    kind: str  # "dtype", "storage", "layout", "memory_format", "qscheme", "class"
    name: str
    dtype: DType | None = None  # the element type of a dtype or typed-storage marker, if known

    def __repr__(self) -> str:
        return self.name if self.kind == "class" else f"torch.{self.name}"


@dataclass(frozen=True, slots=True)
class StorageRef:
    """A persistent id: one storage of the checkpoint, named by ``key``; its data is not read.

    ``nbytes`` is the storage's size; ``view_offset`` (legacy files only) is where a view
    storage starts inside its root storage, in bytes.
    """

    key: str
    storage: Marker
    location: str
    nbytes: int
    view_offset: int = 0


@dataclass(frozen=True, eq=False, slots=True)
class TensorRecord:
    """A tensor as the pickle describes it: a strided view of a storage. No data is read."""

    storage: StorageRef
    dtype: DType
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    # torch.save keeps the lazy conjugate and negative bits of views (``t.conj()``, ``t.conj().imag``)
    # beside the unchanged storage: the values are the stored ones conjugated or negated.
    conj: bool = False
    neg: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def is_contiguous(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def is_raw(self) -> bool:
        """True when the tensor's values are its storage bytes as they lie (contiguous, no lazy bits)."""
        return self.is_contiguous() and not (self.conj or self.neg)

    def storage_span(self) -> int:
        """Elements of the storage this view reaches, counted from the storage's start."""
        if self.numel == 0:
            return self.offset
        return self.offset + 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))

    def identity(self) -> tuple[object, ...]:
        """Equal for two records that view the same bytes the same way (tied weights)."""
        return (
            self.storage.key, self.storage.view_offset, self.dtype.name, self.offset, self.shape, self.stride,
            self.conj, self.neg,
        )  # fmt: skip


@dataclass(frozen=True, eq=False, slots=True)
class UnsupportedTensor:
    """A tensor ckptkit recognises but cannot represent (quantized, sparse, nested, ...).

    Readers list it apart from the tensors (:attr:`ckptkit.core.model.Checkpoint.unsupported`);
    ``detail`` (the quantized dtype and scheme, ...) and ``shape`` are shown when the pickle gives them.
    """

    kind: str
    shape: tuple[int, ...] | None = None
    detail: str = ""


class _OpaqueType(type):
    """Placeholder classes are per-pickle; BUILD opcodes must still not rewire their methods."""

    def __setattr__(cls, key: str, value: object) -> None:
        raise CorruptCheckpointError(f"the pickle sets attribute {key!r} on the class {cls.__name__}")


class OpaqueObject(metaclass=_OpaqueType):
    """Stand-in for an instance of a class the unpickler does not import.

    Keeps what the pickle gave it (constructor arguments, ``__setstate__`` state, list and dict
    items) so the reader can still find tensors inside and show the object's content.
    Each unknown global gets its own subclass named after it (see :meth:`qualname`).
    """

    pickled_module: ClassVar[str] = ""
    pickled_name: ClassVar[str] = ""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    list_items: list[Any]
    dict_items: dict[Any, Any]
    callee: Any  # for the result of calling an unknown call's result: what was called

    # __new__ rather than __init__: the NEWOBJ opcode creates instances without calling __init__.
    def __new__(cls, *args: Any, **kwargs: Any) -> OpaqueObject:
        obj = super().__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        obj.list_items = []
        obj.dict_items = {}
        obj.callee = None
        return obj

    @classmethod
    def qualname(cls) -> str:
        return f"{cls.pickled_module}.{cls.pickled_name}"

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.list_items.append(item)

    def extend(self, items: Iterable[Any]) -> None:
        self.list_items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.dict_items[key] = value

    def __repr__(self) -> str:
        return f"<opaque {self.qualname()}>"


class PickledDType:
    """A numpy dtype from a pickle, restricted to plain (non-object, non-structured) types.

    ``objects=True`` (scanning pickled object arrays) also takes ``"O"``: the array's items are
    then built by the unpickler like any other pickled value.
    """

    def __init__(self, spec: object, align: object = False, copy: object = False, *, objects: bool = False) -> None:
        import numpy as np

        if not isinstance(spec, str):
            raise CorruptCheckpointError(f"numpy dtype spec {spec!r} is not a type code")
        try:
            dtype = np.dtype(spec)
        except TypeError:
            raise CorruptCheckpointError(f"unknown numpy dtype {spec!r}") from None
        if dtype.kind not in ("biufcmMSUO" if objects else "biufcmMSU"):
            raise CorruptCheckpointError(f"numpy dtype {spec!r} may hold Python objects; ckptkit does not build it")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise CorruptCheckpointError(f"numpy dtype state {state!r} is not understood")
        if len(state) >= 5 and (state[3] is not None or state[4] is not None):
            raise CorruptCheckpointError("structured numpy dtypes are not supported in checkpoints")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class PickledArray:
    """A numpy array rebuilt from its pickled bytes; ``array`` is ``None`` until its state arrives.

    An array of Python objects keeps its items, as the unpickler built them, in ``objects``.
    """

    def __init__(self) -> None:
        self.array: np.ndarray | None = None
        self.objects: list[Any] | None = None
        self.shape: tuple[int, ...] = ()

    def __setstate__(self, state: Any) -> None:
        import numpy as np

        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise CorruptCheckpointError("numpy array state is not (shape, dtype, fortran, data)")
        shape, dtype, fortran, raw = state
        if not isinstance(dtype, PickledDType):
            raise CorruptCheckpointError("numpy array state lacks a dtype")
        shape = _int_tuple(shape, "numpy array shape")
        self.shape = shape
        if dtype.dtype.kind == "O" and isinstance(raw, list):
            self.objects = raw
            return
        if not isinstance(raw, (bytes, bytearray)):
            raise CorruptCheckpointError("numpy array data is not raw bytes (object arrays are not supported)")
        if len(raw) != math.prod(shape) * dtype.dtype.itemsize:
            raise CorruptCheckpointError(f"numpy array of shape {shape} has {len(raw)} bytes of data")
        arr = np.frombuffer(bytes(raw), dtype=dtype.dtype)
        self.array = arr.reshape(shape, order="F" if fortran else "C")


# --- Allow-listed callables ---------------------------------------------------------------------


def _int_tuple(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise CorruptCheckpointError(f"{what} {value!r} is not a tuple of non-negative integers")
    return tuple(value)


def _tensor(
    storage: object, offset: object, size: object, stride: object, dtype: DType | None, metadata: object = None
) -> TensorRecord | UnsupportedTensor:
    if not isinstance(storage, StorageRef):
        raise CorruptCheckpointError(f"a tensor's storage is {type(storage).__name__}, not a storage reference")
    if type(offset) is not int or offset < 0:
        raise CorruptCheckpointError(f"tensor storage offset {offset!r} is not a non-negative integer")
    shape = _int_tuple(size, "tensor shape")
    strides = _int_tuple(stride, "tensor stride")
    if len(shape) != len(strides):
        raise CorruptCheckpointError(f"tensor shape {shape} and stride {strides} differ in length")
    if dtype is None:
        dtype = storage.storage.dtype if storage.storage.name != "UntypedStorage" else dtypes.by_name("uint8")
    if dtype is None:
        return UnsupportedTensor(storage.storage.name, shape)
    bits = _view_bits(metadata)
    if isinstance(bits, UnsupportedTensor):
        return bits
    return TensorRecord(storage, dtype, offset, shape, strides, conj="conj" in bits, neg="neg" in bits)


_VIEW_BITS = frozenset({"conj", "neg"})


def _view_bits(metadata: object) -> frozenset[str] | UnsupportedTensor:
    """The lazy bits set in the metadata dict ``_rebuild_tensor_v2``/``_v3`` take last (``{"conj": True}``)."""
    if metadata is None:
        return frozenset()
    if not isinstance(metadata, dict):
        raise CorruptCheckpointError(f"tensor metadata {metadata!r} is not a dict")
    bits = frozenset(str(key) for key, value in metadata.items() if value)
    unknown = sorted(bits - _VIEW_BITS)
    if unknown:
        return UnsupportedTensor(f"tensor with metadata {unknown}")
    return bits


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object, *_: object) -> object:
    return _tensor(storage, offset, size, stride, None)


def _rebuild_tensor_v2(
    storage: object, offset: object, size: object, stride: object, requires_grad: object = False,
    hooks: object = None, metadata: object = None, *_: object,
) -> object:  # fmt: skip
    return _tensor(storage, offset, size, stride, None, metadata)


def _rebuild_tensor_v3(
    storage: object, offset: object, size: object, stride: object, requires_grad: object, hooks: object,
    dtype: object, metadata: object = None, *_: object,
) -> object:  # fmt: skip
    if not (isinstance(dtype, Marker) and dtype.kind == "dtype"):
        raise CorruptCheckpointError(f"_rebuild_tensor_v3 got {dtype!r} where a dtype belongs")
    if dtype.dtype is None:
        return UnsupportedTensor(dtype.name, _shape_or_none(size))
    return _tensor(storage, offset, size, stride, dtype.dtype, metadata)


def _rebuild_parameter(data: object, *_: object) -> object:
    return data


def _rebuild_from_type(func: object, new_type: object, args: object, state: object = None) -> object:
    if not isinstance(func, _Allowed) or not isinstance(args, tuple):
        raise CorruptCheckpointError(f"_rebuild_from_type needs a tensor rebuild function, not {func!r:.100}")
    return func(*args)


def _unsupported(kind: str) -> Callable[..., UnsupportedTensor]:
    def rebuild(*args: object) -> UnsupportedTensor:
        return UnsupportedTensor(kind)

    return rebuild


def _shape_or_none(value: object) -> tuple[int, ...] | None:
    """``value`` as a shape if it is one; what a tensor ckptkit does not read says about itself is not trusted."""
    if isinstance(value, (tuple, list)) and len(value) <= 64 and all(type(v) is int and v >= 0 for v in value):
        return tuple(value)
    return None


def _rebuild_qtensor(storage: object, offset: object = 0, size: object = None, *rest: object) -> UnsupportedTensor:
    # torch._utils._rebuild_qtensor(storage, offset, size, stride, quantizer_params, requires_grad, hooks)
    parts = []
    if isinstance(storage, StorageRef) and storage.storage.name.endswith("Storage"):
        parts.append(storage.storage.name.removesuffix("Storage").lower())
    params = rest[1] if len(rest) > 1 else None
    if isinstance(params, tuple) and params and isinstance(params[0], Marker):
        parts.append(params[0].name)
    return UnsupportedTensor("quantized", _shape_or_none(size), ", ".join(parts))


def _rebuild_sparse_tensor(layout: object = None, data: object = None, *_: object) -> UnsupportedTensor:
    # data is (indices, values, size[, coalesced]) for COO, (compressed, plain, values, size) otherwise.
    items = data if isinstance(data, tuple) else ()
    shape = next((s for s in (_shape_or_none(v) for v in items[2:4]) if s is not None), None)
    detail = layout.name if isinstance(layout, Marker) else ""
    return UnsupportedTensor("sparse", shape, detail)


def _ordered_dict(*args: object) -> OrderedDict[Any, Any]:
    return _PickledOrderedDict(*args)


class _PickledOrderedDict(OrderedDict):
    """An OrderedDict whose pickled attributes (``_metadata`` of a state_dict) are kept aside."""

    def __setstate__(self, state: Any) -> None:
        self.pickled_state = state


def _torch_size(dims: object = ()) -> tuple[Any, ...]:
    if not isinstance(dims, (tuple, list)):
        raise CorruptCheckpointError(f"torch.Size of {dims!r}")
    return tuple(dims)


def _torch_device(kind: object, index: object = None) -> str:
    return f"{kind}" if index is None else f"{kind}:{index}"


def _get_layout(name: object) -> Marker:
    # torch.serialization._get_layout turns "torch.sparse_coo" back into the layout object.
    layout = str(name).removeprefix("torch.")
    if _TORCH_MARKERS.get(layout) != "layout":
        raise CorruptCheckpointError(f"unknown tensor layout {name!r}")
    return Marker("layout", layout)


def _codecs_encode(text: object, encoding: object = "utf-8") -> bytes:
    # Protocol-2 pickles made by Python 3 store bytes as latin-1 text plus this call.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CorruptCheckpointError("_codecs.encode is allowed only to rebuild bytes from latin-1 text")
    return text.encode("latin-1")


def _byte_string(kind: type) -> Callable[..., object]:
    def build(*args: object) -> object:
        # bytes(10**12) would allocate a terabyte: only rebuild from data, never from a size.
        if args and not isinstance(args[0], (bytes, bytearray, str, list)):
            raise CorruptCheckpointError(f"{kind.__name__} may only be rebuilt from data, not from {args[0]!r}")
        return kind(*args)

    return build


def _plain(kind: type) -> Callable[..., object]:
    def build(*args: object) -> object:
        return kind(*args)

    return build


def _np_scalar(dtype: object, data: object = None) -> object:
    import numpy as np

    if not isinstance(dtype, PickledDType) or not isinstance(data, (bytes, bytearray)):
        raise CorruptCheckpointError("numpy scalar without a plain dtype and raw bytes")
    if len(data) != dtype.dtype.itemsize:
        raise CorruptCheckpointError(f"numpy {dtype.dtype} scalar has {len(data)} bytes")
    return np.frombuffer(bytes(data), dtype=dtype.dtype)[0]


def _np_reconstruct(subtype: object, shape: object = None, typecode: object = None) -> PickledArray:
    if not (isinstance(subtype, Marker) and subtype.name == "numpy.ndarray"):
        raise CorruptCheckpointError(f"numpy _reconstruct of {subtype!r}; only plain arrays are rebuilt")
    return PickledArray()


def _np_frombuffer(buffer: object, dtype: object = None, shape: object = None, order: object = "C") -> PickledArray:
    # numpy's protocol-5 reduction of a contiguous array: its bytes, dtype, shape and order.
    arr = PickledArray()
    arr.__setstate__((1, shape, dtype, order == "F", bytes(buffer) if isinstance(buffer, bytearray) else buffer))
    return arr


def _reconstructor(cls: object, base: object = None, state: object = None) -> object:
    # copyreg._reconstructor is how protocol 0 and 1 pickle plain objects.
    if not (isinstance(cls, type) and issubclass(cls, OpaqueObject)):
        raise CorruptCheckpointError(f"copyreg._reconstructor of {cls!r}")
    return cls.__new__(cls)


_REBUILDERS: dict[str, Callable[..., object]] = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
    "_rebuild_qtensor": _rebuild_qtensor,
    "_rebuild_sparse_tensor": _rebuild_sparse_tensor,
    "_rebuild_sparse_csr_tensor": _unsupported("sparse"),
    "_rebuild_nested_tensor": _unsupported("nested"),
    "_rebuild_meta_tensor_no_storage": _unsupported("meta (no data)"),
    "_rebuild_wrapper_subclass": _unsupported("tensor-subclass"),
    "_rebuild_device_tensor_from_numpy": _unsupported("device"),
    "_rebuild_device_tensor_from_cpu_tensor": _unsupported("device"),
    "_rebuild_xla_tensor": _unsupported("XLA"),
    "_rebuild_mlc_tensor": _unsupported("MLC"),
    "_rebuild_mkldnn_tensor": _unsupported("MKL-DNN"),
}

_ALLOWED: dict[tuple[str, str], Callable[..., object]] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._tensor", "_rebuild_from_type"): _rebuild_from_type,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("torch.serialization", "_get_layout"): _get_layout,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "set"): _plain(set),
    ("builtins", "frozenset"): _plain(frozenset),
    ("builtins", "slice"): _plain(slice),
    ("builtins", "complex"): _plain(complex),
    ("builtins", "bytearray"): _byte_string(bytearray),
    ("builtins", "bytes"): _byte_string(bytes),
    ("copyreg", "_reconstructor"): _reconstructor,
    ("numpy", "dtype"): PickledDType,
    **{(m, "scalar"): _np_scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_reconstruct"): _np_reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _np_frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    **{("torch._utils", name): fn for name, fn in _REBUILDERS.items()},
}

# torch names that pickles use as values. Dtypes ckptkit cannot hold are still recognised, so a
# tensor of such a type is refused by name rather than its dtype being taken for an unknown class.
OTHER_TORCH_DTYPES = frozenset({
    "complex32", "chalf", "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "bits1x8", "bits2x4",
    "bits4x2", "bits8", "bits16", "float8_e8m0fnu", "float4_e2m1fn_x2",
    "int1", "int2", "int3", "int4", "int5", "int6", "int7",
    "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7",
})  # fmt: skip
_TORCH_MARKERS: dict[str, str] = {
    **dict.fromkeys(("strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn",
                     "jagged"), "layout"),
    **dict.fromkeys(("contiguous_format", "channels_last", "channels_last_3d", "preserve_format"), "memory_format"),
    **dict.fromkeys(("per_tensor_affine", "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric",
                     "per_channel_affine_float_qparams"), "qscheme"),
}  # fmt: skip
_CLASS_MARKERS = {
    ("torch", "Tensor"), ("torch._tensor", "Tensor"), ("torch.nn.parameter", "Parameter"), ("torch.nn", "Parameter"),
    ("numpy", "ndarray"), ("builtins", "object"), ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "str"),
}  # fmt: skip
_DTYPE_NAMES = frozenset(dtypes.dtype_names())


def _torch_marker(module: str, name: str) -> Marker | None:
    """The marker for a torch dtype, storage class, layout and the like, or ``None``."""
    if module in ("torch.storage", "torch") and name in ("UntypedStorage", "TypedStorage"):
        return Marker("storage", name)
    if module in ("torch", "torch.cuda") and name.endswith("Storage") and name[:1].isupper():
        return Marker("storage", name, dtypes.by_torch_storage(name))
    if module != "torch":
        return None
    if name in _DTYPE_NAMES:
        return Marker("dtype", name, dtypes.by_name(name))
    if name in OTHER_TORCH_DTYPES:
        return Marker("dtype", name)
    if name in _TORCH_MARKERS:
        return Marker(_TORCH_MARKERS[name], name)
    return None


def normalize_global(module: str, name: str) -> tuple[str, str]:
    """Python 2 names (``__builtin__.set``) as Python 3 knows them, as the stock unpickler maps them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _Allowed:
    """An allow-listed callable as handed to the pickle machinery; attributes cannot be set on it.

    BUILD opcodes can set attributes on whatever object they are given; wrapping keeps them off
    ckptkit's own functions.
    """

    __slots__ = ("_fn", "_qualname")
    _fn: Callable[..., object]
    _qualname: str

    def __init__(self, qualname: str, fn: Callable[..., object]) -> None:
        object.__setattr__(self, "_qualname", qualname)
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self._fn(*args, **kwargs)

    def __setattr__(self, key: str, value: object) -> None:
        raise CorruptCheckpointError(f"the pickle sets attribute {key!r} on {self._qualname}")

    def __repr__(self) -> str:
        return self._qualname


# Pure data constructors ckptkit keeps as placeholders without a finding, called or not: building
# them touches no file, process or network, and real checkpoints hold them (paths in configs,
# timestamps, run ids, numpy random generators, torch's version string).
DATA_CONSTRUCTORS = frozenset({
    *(f"pathlib.{n}" for n in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")),
    *(f"pathlib._local.{n}" for n in ("Path", "PosixPath", "WindowsPath")),
    *(f"datetime.{n}" for n in ("datetime", "date", "time", "timedelta", "timezone")),
    "uuid.UUID", "uuid.SafeUUID", "decimal.Decimal", "fractions.Fraction",
    "collections.deque", "collections.defaultdict", "collections.Counter",
    "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__generator_ctor",
    "numpy.random._pickle.__bit_generator_ctor", "torch.torch_version.TorchVersion",
})  # fmt: skip


@dataclass
class _Use:
    """One global a pickle names that is not allow-listed, and the results of each call of it."""

    resolution: Resolution
    trusted: bool
    calls: list[Any] = field(default_factory=list)


def _locate(root: object, targets: set[int], max_depth: int, max_objects: int) -> dict[int, str]:
    """The key path (as ``inspect`` names extras) of each target object reachable from ``root``."""
    found: dict[int, str] = {}
    seen: set[int] = set()
    stack: list[tuple[object, str, int]] = [(root, "", 0)]
    budget = max_objects
    while stack and budget > 0 and len(found) < len(targets):
        obj, path, depth = stack.pop()
        budget -= 1
        if id(obj) in targets and id(obj) not in found:
            found[id(obj)] = path
        if id(obj) in seen or depth >= max_depth:
            continue
        seen.add(id(obj))
        children: list[tuple[object, str]] = []
        if isinstance(obj, dict):
            children = [(v, _key_path(path, k)) for k, v in obj.items()]
        elif isinstance(obj, (list, tuple)):
            children = [(v, _key_path(path, i)) for i, v in enumerate(obj)]
        elif isinstance(obj, OpaqueObject):
            children = [(v, _key_path(path, f"args.{i}")) for i, v in enumerate(obj.args)]
            children += [(v, _key_path(path, f"kwargs.{k}")) for k, v in obj.kwargs.items()]
            state = obj.state
            parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
            for part in parts:
                if isinstance(part, dict):
                    children += [(v, _key_path(path, k)) for k, v in part.items()]
                elif part is not None:
                    children.append((part, _key_path(path, "state")))
            children += [(v, _key_path(path, i)) for i, v in enumerate(obj.list_items)]
            children += [(v, _key_path(path, k)) for k, v in obj.dict_items.items()]
            if obj.callee is not None:
                children.append((obj.callee, path))  # a call chain sits where its last result does
        elif isinstance(obj, PickledArray) and obj.objects is not None:
            children = [(v, _key_path(path, i)) for i, v in enumerate(obj.objects)]
        stack.extend((child, p, depth + 1) for child, p in reversed(children))
    return found


def _key_path(prefix: str, key: object) -> str:
    text = key if isinstance(key, str) else str(key)
    return f"{prefix}.{text}" if prefix else text


class SafeUnpickler(pickle._Unpickler):
    """Unpickles a ``torch.save`` pickle into records, without importing or calling its globals.

    ``strict=True`` (reading) raises :class:`UnsafeCheckpointError` at the first dangerous
    global; ``strict=False`` (auditing) records it and goes on, so :attr:`findings` lists every
    global that is not allow-listed. Persistent ids (storages) become :class:`StorageRef`.

    It builds on the pure-Python unpickler: the C one sizes its memo from the index a
    ``LONG_BINPUT`` opcode names, so a 5-byte forged opcode makes it allocate and zero gigabytes.

    ``takes_state`` lists the types a BUILD opcode may give state to; a subclass that allows
    record classes of its own (DCP metadata) extends it.
    """

    takes_state: ClassVar[tuple[type, ...]] = ()
    objects_allowed: ClassVar[bool] = False  # numpy object arrays: kept with their items, each item judged

    def __init__(self, file: Readable, *, strict: bool = True, trusted: frozenset[str] | None = None) -> None:
        super().__init__(file, encoding="utf-8")
        self.strict = strict
        self.trusted = trust.trusted_globals() if trusted is None else trusted
        self.findings: list[PickleFinding] = []  # complete once load() has returned or raised
        self._uses: dict[tuple[str, str], _Use] = {}
        self.storages: dict[str, StorageRef] = {}  # key -> the whole (root) storage
        self._placeholders: dict[tuple[str, str], type[OpaqueObject]] = {}
        bounds = limits.current()
        self._max_depth = bounds.pickle_depth
        self._max_objects = bounds.pickle_objects
        self._objects = 0
        # Tuples already measured as keys, with their expanded size; holding them keeps ids unique.
        self._key_sizes: dict[int, tuple[int, tuple[Any, ...]]] = {}

    def find_class(self, module: str, name: str) -> Any:
        res = resolve_global(module, name, lambda m, n: self._allowed(m, n) is not None)
        if res.status == "allowed":
            return self._allowed(res.module, res.name)
        key = (res.module, res.name)
        if key not in self._uses:
            trusted = res.status != "dangerous" and (
                res.qualname in DATA_CONSTRUCTORS or res.qualname in self.trusted or res.written in self.trusted
            )
            self._uses[key] = _Use(res, trusted)
        return self._placeholder(res.module, res.name)

    def _allowed(self, module: str, name: str) -> object | None:
        """ckptkit's stand-in for an allow-listed global, or ``None``."""
        fn = _ALLOWED.get((module, name))
        if fn is PickledDType and self.objects_allowed:
            fn = functools.partial(PickledDType, objects=True)
        elif fn is _reconstructor:
            fn = self._reconstructor
        if fn is not None:
            keys_of = _HASHES_ARGUMENT.get((module, name))
            if keys_of is not None:
                fn = self._keys_checked(fn, keys_of)
            return _Allowed(f"{module}.{name}", fn)
        marker = _torch_marker(module, name)
        if marker is not None:
            return marker
        if (module, name) in _CLASS_MARKERS:
            return Marker("class", f"{module}.{name}")
        return None

    def _placeholder(self, module: str, name: str) -> type[OpaqueObject]:
        cls = self._placeholders.get((module, name))
        if cls is None:
            attrs = {"pickled_module": module, "pickled_name": name, "__module__": __name__}
            cls = self._placeholders[(module, name)] = type(name, (OpaqueObject,), attrs)
        return cls

    # --- Calls ------------------------------------------------------------------------------------
    # The stock unpickler calls what REDUCE, INST and OBJ name, and what NEWOBJ_EX names with
    # keyword arguments (they reach a custom __new__). Here an allow-listed stand-in runs; anything
    # else is recorded as a call and replaced by a placeholder holding the arguments.

    def call(self, func: Any, args: Any, kwargs: dict[str, Any] | None = None) -> Any:
        """What ``func(*args, **kwargs)`` gives, without calling anything outside the allow-list."""
        if not isinstance(args, tuple):
            raise CorruptCheckpointError(f"the pickle calls with arguments {type(args).__name__}, not a tuple")
        kwargs = kwargs or {}
        if isinstance(func, _Allowed):
            return func(*args, **kwargs)
        if isinstance(func, type) and issubclass(func, OpaqueObject):
            key = (func.pickled_module, func.pickled_name)
        elif isinstance(func, OpaqueObject):
            # Calling what an unknown call returned (getattr(...)(...), attrgetter("system")(os)).
            module, name = type(func).pickled_module, type(func).pickled_name.removesuffix("()") + "()"
            key = (module, name)
            if key not in self._uses:
                called = self._uses.get((module, name[:-2]))
                self._uses[key] = _Use(
                    Resolution(f"{module}.{name}", module, name, "dangerous", "runs what an earlier call returned"),
                    called is not None and called.trusted,
                )  # fmt: skip
            result = self._placeholder(*key).__new__(self._placeholder(*key), *args, **kwargs)
            result.callee = func
            self._uses[key].calls.append(result)
            return result
        elif isinstance(func, type) and issubclass(func, self.takes_state):
            return func(*args, **kwargs)  # a record class a subclass allows (DCP metadata)
        else:
            raise CorruptCheckpointError(f"the pickle calls {func!r:.100}, which cannot be called")
        result = func.__new__(func, *args, **kwargs)
        self._uses[key].calls.append(result)
        return result

    def _reconstructor(self, cls: object, base: object = None, state: object = None) -> object:
        # copyreg._reconstructor(cls, base, state) makes base.__new__(cls, state) and, unless base is
        # object, calls base.__init__(obj, state): a call of base.
        obj = _reconstructor(cls, base, state)
        if isinstance(base, type) and issubclass(base, OpaqueObject):
            self.call(base, (state,))
        elif not (base is None or (isinstance(base, Marker) and base.kind == "class")):
            raise CorruptCheckpointError(f"copyreg._reconstructor with base {base!r:.100}")
        return obj

    def _instantiate(self, klass: Any, args: list[Any]) -> None:
        # INST and OBJ: the stock unpickler calls the class (or function) with the arguments.
        self.stack.append(self.call(klass, tuple(args)))

    # --- Findings ---------------------------------------------------------------------------------

    def load(self) -> Any:
        """Unpickle; in strict mode, refuse with the first error finding once the pickle is parsed."""
        try:
            obj = super().load()
        except Exception:
            self._finish(None)
            if self.strict:
                self._refuse()
            raise
        self._finish(obj)
        if self.strict:
            self._refuse()
        return obj

    def _refuse(self) -> None:
        first = next((f for f in self.findings if f.severity == "error"), None)
        if first is not None:
            raise UnsafeCheckpointError(first.message)

    def _finish(self, root: object) -> None:
        calls = {id(r): r for use in self._uses.values() if not use.trusted for r in use.calls}
        sites = _locate(root, set(calls), self._max_depth, self._max_objects) if calls else {}
        findings: list[PickleFinding] = []
        for use in self._uses.values():
            if use.trusted:
                continue
            res = use.resolution
            written = res.written if res.written != res.qualname else ""
            if use.calls:
                found = [sites[id(r)] for r in use.calls if id(r) in sites]
                site = found[0] if found else None
                reason = res.reason if res.status == "dangerous" else _NOT_ALLOWED
                findings.append(PickleFinding(
                    res.module, res.name, "error", reason, CALL, written, site, max(0, len(set(found)) - 1),
                ))  # fmt: skip
            elif res.status == "dangerous":
                findings.append(PickleFinding(res.module, res.name, "error", res.reason, DANGEROUS, written))
            else:
                findings.append(PickleFinding(
                    res.module, res.name, "warning", "unknown class, kept as a placeholder", UNKNOWN, written,
                ))  # fmt: skip
        self.findings = findings

    # --- Bounds on what the pickle builds ---------------------------------------------------------
    # CPython hashes a tuple by recursing through it in C, with no depth check and no cached
    # hash: a dict key of a million nested tuples (a 2 MB pickle) overflows the C stack, and 60
    # tuples that each hold the previous one twice take 2**60 steps to hash. Every key the pickle
    # makes Python hash is measured first. Building containers is counted too, since one opcode
    # byte can make a 200-byte object.

    def check_keys(self, keys: Iterable[object]) -> None:
        """Refuse tuple keys nested deeper than the depth limit or expanding past the object limit."""
        for key in keys:
            if type(key) is tuple and id(key) not in self._key_sizes:
                self._measure_tuple(key)

    def _measure_tuple(self, root: tuple[Any, ...]) -> None:
        # Post-order walk, each distinct tuple once; sizes count elements as hashing visits them.
        sizes = self._key_sizes
        stack: list[tuple[tuple[Any, ...], int, bool]] = [(root, 1, False)]
        while stack:
            node, depth, children_done = stack.pop()
            if id(node) in sizes:
                continue
            if depth > self._max_depth:
                raise CorruptCheckpointError(
                    f"the pickle nests tuples more than {self._max_depth} levels deep; if the file is trusted, "
                    f"raise the limit with {limits.Limits.env_name('pickle_depth')}"
                )
            if children_done:
                size = 1 + sum(sizes[id(c)][0] if type(c) is tuple else 1 for c in node)
                if size > self._max_objects:
                    raise CorruptCheckpointError(
                        f"the pickle uses as a key a tuple that expands to more than {self._max_objects:,} items; "
                        f"if the file is trusted, raise the limit with {limits.Limits.env_name('pickle_objects')}"
                    )
                sizes[id(node)] = (size, node)
            else:
                stack.append((node, depth, True))
                stack.extend((c, depth + 1, False) for c in node if type(c) is tuple and id(c) not in sizes)

    def _keys_checked(self, fn: Callable[..., object], keys_of: str) -> Callable[..., object]:
        def call(*args: object) -> object:
            items = args[0] if args else ()
            if isinstance(items, (list, tuple)):
                if keys_of == "pairs":
                    self.check_keys(p[0] for p in items if isinstance(p, (list, tuple)) and p)
                else:
                    self.check_keys(items)
            return fn(*args)

        return call

    def count_objects(self) -> None:
        self._objects += 1
        if self._objects > self._max_objects:
            raise CorruptCheckpointError(
                f"the pickle builds more than {self._max_objects:,} objects; if the file is trusted, raise the "
                f"limit with {limits.Limits.env_name('pickle_objects')}"
            )

    stack: list[Any]  # the pure-Python unpickler's stack (items since the last MARK)
    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")):
            raise CorruptCheckpointError(f"unknown persistent id {pid!r:.200}")
        storage, key, location, numel = pid[1:5]
        if not (isinstance(storage, Marker) and storage.kind == "storage"):
            raise CorruptCheckpointError(f"persistent id names {storage!r}, not a storage class")
        if type(numel) is not int or numel < 0:
            raise CorruptCheckpointError(f"storage {key!r} has size {numel!r}")
        key = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
        location = location.decode("ascii", "replace") if isinstance(location, bytes) else str(location)
        itemsize = storage.dtype.itemsize if storage.dtype else 1
        ref = StorageRef(key, storage, location, numel * itemsize)
        known = self.storages.setdefault(key, ref)
        if known.nbytes != ref.nbytes:
            raise CorruptCheckpointError(f"storage {key!r} is given sizes {known.nbytes} and {ref.nbytes} bytes")
        view = pid[5] if len(pid) == 6 else None
        if view is not None:
            # Legacy (torch < 0.4) storage views: (view_key, offset, size) in elements of the root.
            if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int and v >= 0 for v in view[1:])):
                raise CorruptCheckpointError(f"storage {key!r} has view metadata {view!r}")
            _key, offset, size = view
            ref = StorageRef(key, storage, ref.location, size * itemsize, offset * itemsize)
            if ref.view_offset + ref.nbytes > numel * itemsize:
                raise CorruptCheckpointError(f"storage view of {key!r} reaches past its storage")
        return ref


def _load_reduce(self: SafeUnpickler) -> None:
    args = self.stack.pop()
    self.stack[-1] = self.call(self.stack[-1], args)


def _load_newobj_ex(self: SafeUnpickler) -> None:
    kwargs = self.stack.pop()
    args = self.stack.pop()
    cls = self.stack.pop()
    if not isinstance(kwargs, dict):
        raise CorruptCheckpointError("NEWOBJ_EX with keyword arguments that are not a dict")
    if kwargs:
        self.stack.append(self.call(cls, args, kwargs))  # keyword arguments only matter to a custom __new__
    else:
        self.stack.append(cls.__new__(cls, *args))


SafeUnpickler.dispatch[pickle.REDUCE[0]] = _load_reduce
SafeUnpickler.dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex


def _before(opcode: bytes, check: Callable[[Any], None]) -> None:
    run = SafeUnpickler.dispatch[opcode[0]]

    def checked(self: Any) -> None:
        check(self)
        run(self)

    SafeUnpickler.dispatch[opcode[0]] = checked


def _check_build(u: Any) -> None:
    target = u.stack[-2] if len(u.stack) >= 2 else None
    if not isinstance(target, _TAKES_STATE + u.takes_state):
        if isinstance(target, type):
            what = f"the class {target.qualname()}" if issubclass(target, OpaqueObject) else f"the class {target!r}"
        else:
            what = repr(target) if isinstance(target, _Allowed) else f"a {type(target).__name__}"
        raise CorruptCheckpointError(
            f"the pickle changes the state of {what} (BUILD), which no torch.save file does; ckptkit refuses it"
        )


# BUILD may give state only to objects made to hold it; on anything else (a checked tensor
# record, an allowed function, a class) it would overwrite what ckptkit has validated.
_before(pickle.BUILD, _check_build)

# Opcodes that hash what the pickle built: the key below the value; every other item after the
# mark (dict items); every item after the mark (set items).
_before(pickle.SETITEM, lambda u: u.check_keys(u.stack[-2:-1]))
_before(pickle.SETITEMS, lambda u: u.check_keys(u.stack[0::2]))
_before(pickle.DICT, lambda u: u.check_keys(u.stack[0::2]))
_before(pickle.ADDITEMS, lambda u: u.check_keys(u.stack))
_before(pickle.FROZENSET, lambda u: u.check_keys(u.stack))
for _op in (
    pickle.EMPTY_DICT, pickle.EMPTY_LIST, pickle.EMPTY_SET, pickle.DICT, pickle.LIST, pickle.TUPLE, pickle.TUPLE1,
    pickle.TUPLE2, pickle.TUPLE3, pickle.FROZENSET, pickle.REDUCE, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.OBJ,
    pickle.INST,
):  # fmt: skip
    _before(_op, SafeUnpickler.count_objects)

# Allowed callables that hash their argument's items ("items") or the first item of each pair.
_HASHES_ARGUMENT = {
    ("builtins", "set"): "items",
    ("builtins", "frozenset"): "items",
    ("collections", "OrderedDict"): "pairs",
}

_TAKES_STATE = (OpaqueObject, PickledDType, PickledArray, _PickledOrderedDict)

_LOAD_ERRORS = (
    pickle.UnpicklingError, struct.error, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
    OverflowError, RecursionError, MemoryError,
)  # fmt: skip


def load(
    file: Readable, what: str, *, strict: bool = True, unpickler_class: type[SafeUnpickler] = SafeUnpickler
) -> tuple[Any, SafeUnpickler]:
    """Unpickle one pickle from ``file`` safely; broken pickles raise :class:`CorruptCheckpointError`.

    ``what`` names the pickle in error messages (``"data.pkl"``). Returns the object and the
    unpickler, whose ``findings`` and ``storages`` tell what the pickle referred to. Formats whose
    pickles name a few more plain-data classes pass a subclass that allows them in ``find_class``.
    """
    unpickler = unpickler_class(file, strict=strict)
    try:
        return unpickler.load(), unpickler
    except _LOAD_ERRORS as err:
        raise CorruptCheckpointError(f"{what} is not a valid pickle: {type(err).__name__}: {err}") from None


class ObjectsUnpickler(SafeUnpickler):
    """The allow-listed unpickler for pickles of numpy object arrays (``np.save``, joblib, bare pickles)."""

    objects_allowed = True
    failure: Exception | None = None  # why the pickle could not be parsed to the end, when scanning
