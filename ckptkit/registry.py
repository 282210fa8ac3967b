"""The registry of checkpoint formats, and detection of a file's format from its bytes.

Each built-in format is a folder under :mod:`ckptkit.formats` whose module, named by one line of
``_BUILTIN_MODULES``, ends by declaring ``FORMAT``, a :class:`Format` (with its dtype column).
Format modules import their heavy libraries (h5py, onnx, ...) inside their functions, so listing
formats or detecting a file loads no framework. Other packages add formats through the
``ckptkit.formats`` entry-point group, whose entries point at a :class:`Format` object; either
kind proves itself with a test subclassing :class:`ckptkit.testing.FormatContract`. Plug-ins come
after the built-in formats, so they are looked up only when no built-in one answers: scanning
the installed packages' entry points costs more than reading a header.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ckptkit.core.errors import (
    READ_ERRORS,
    CkptkitError,
    CorruptCheckpointError,
    EmptyFileError,
    LfsPointerError,
    NoSuchFileError,
    NotAFileError,
    UnknownFormatError,
    UsageError,
    describe_read_error,
)
from ckptkit.core.format import Format, Opener, OptionSpec, Sniffer, WriteContext, Writer
from ckptkit.core.model import Checkpoint
from ckptkit.core.trust import trusted_globals, trusting
from ckptkit.io.shards.index import INDEX_SUFFIX
from ckptkit.io.source import Source, current_storage_options, is_url, open_source, use_storage_options

__all__ = [
    "ENTRY_POINT_GROUP",
    "INDEX_SUFFIX",
    "Format",
    "Opener",
    "OptionSpec",
    "Sniffer",
    "WriteContext",
    "Writer",
    "detect",
    "for_output",
    "formats",
    "get",
    "locate",
    "open_as",
    "open_checkpoint",
    "register",
]  # the types live in ckptkit.core.format; plug-ins import them from here

SNIFF_BYTES = 4096
ENTRY_POINT_GROUP = "ckptkit.formats"

# Built-in formats, in detection order: a format that claims a file stops the search.
_BUILTIN_MODULES = (
    "ckptkit.formats.safetensors",
    "ckptkit.formats.torch.dcp",  # before torch: each piece of a .distcp file is a torch.save archive
    "ckptkit.formats.torch",
    "ckptkit.formats.tensorflow",  # before onnx, which would claim a SavedModel's saved_model.pb
    "ckptkit.formats.onnx",
    "ckptkit.formats.keras.v3",
    "ckptkit.formats.keras.legacy",
    "ckptkit.formats.gguf",
    "ckptkit.formats.numpy",
    "ckptkit.formats.numpy.pickled",  # after torch, whose legacy files are pickles too
    "ckptkit.formats.sharded",  # keep last: it claims any folder that no format before it claims
)

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"


_formats: dict[str, Format] | None = None
_plugins_loaded = False
plugin_errors: list[str] = []  # entry points that failed to load, for ``ckptkit formats`` to show


def register(fmt: Format) -> None:
    """Add a format; a second format of the same name, or an option declared unlike another format's, is an error."""
    formats = _load()
    if fmt.name in formats:
        raise CkptkitError(f"a format named {fmt.name!r} is already registered")
    _check_options(fmt, formats.values())
    formats[fmt.name] = fmt


def _check_options(fmt: Format, others: Iterable[Format]) -> None:
    """Refuse an option ``fmt`` declares unlike a registered format: the command line has one ``--name`` for both."""
    declared: dict[str, tuple[OptionSpec, Format]] = {}
    for other in others:
        for spec in (*other.read_options, *other.write_options):
            declared.setdefault(spec.name, (spec, other))
    for spec in (*fmt.read_options, *fmt.write_options):
        first, first_format = declared.get(spec.name, (spec, fmt))
        if first != spec:
            raise CkptkitError(
                f"format {fmt.name!r} declares the option {spec.flag} unlike format {first_format.name!r} "
                "(its kind, help or repeatability differ); formats that share an option must declare the same "
                "OptionSpec, since one command-line option serves both"
            )


def _load(plugins: bool = True) -> dict[str, Format]:
    """The formats by name: the built-in ones, then (``plugins``) those of entry points."""
    global _formats, _plugins_loaded
    if _formats is None:
        formats: dict[str, Format] = {}
        _formats = formats
        _plugins_loaded = False
        for module_name in _BUILTIN_MODULES:
            fmt = importlib.import_module(module_name).FORMAT
            _check_options(fmt, formats.values())
            formats[fmt.name] = fmt
    if plugins and not _plugins_loaded:
        _plugins_loaded = True
        _load_plugins(_formats)
    return _formats


def entry_points(group: str) -> Any:
    """The installed entry points of ``group``; importlib.metadata is imported only when asked."""
    from importlib.metadata import entry_points as installed

    return installed(group=group)


def _load_plugins(formats: dict[str, Format]) -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            fmt = ep.load()
        except Exception as err:
            if os.environ.get("CKPTKIT_DEBUG"):
                raise  # the traceback shows where
            plugin_errors.append(f"format plug-in {ep.value} could not be loaded: {_load_failure(err)}")
            continue
        if not isinstance(fmt, Format):
            plugin_errors.append(f"format plug-in {ep.value} is not a ckptkit.registry.Format")
            continue
        if fmt.name in formats:
            raise CkptkitError(f"entry point {ep.value} registers format {fmt.name!r}, which exists already")
        _check_options(fmt, formats.values())
        formats[fmt.name] = fmt


def _load_failure(err: Exception) -> str:
    """Why a plug-in's entry point did not load, in words (CKPTKIT_DEBUG=1 raises the error instead)."""
    if isinstance(err, ModuleNotFoundError) and err.name:
        return f"it needs the module {err.name!r}, which is not installed"
    if isinstance(err, ImportError):
        return f"its module cannot be imported ({err})"
    if isinstance(err, AttributeError):
        return f"its module does not define the object the entry point names ({err})"
    return f"importing it failed ({err})" if str(err) else "importing it failed"


def formats() -> list[Format]:
    """Every registered format, built-in ones first."""
    return list(_load().values())


def get(name: str) -> Format:
    """The format of that name (case-insensitive); lists the known names when there is none."""
    key = name.strip().lower()
    builtin = _load(plugins=False)
    if key in builtin:
        return builtin[key]
    fmts = _load()
    if key in fmts:
        return fmts[key]
    for fmt in fmts.values():
        if key.lstrip(".") in (e.lstrip(".") for e in fmt.extensions):
            return fmt
    raise UnknownFormatError(f"unknown format {name!r}; known: {', '.join(fmts)}")


def read_head(path: Path) -> bytes:
    if path.is_dir():
        return b""
    with open(path, "rb") as f:
        return f.read(SNIFF_BYTES)


def locate(path: Path) -> Path:
    """``path`` if it exists; else the file a format finds for the checkpoint it names (a TensorFlow
    prefix ``ckpt-1`` is ``ckpt-1.index``); else ``path`` unchanged."""
    if path.exists() or path.is_symlink():
        return path
    for fmt in _load().values():
        if fmt.locate is not None:
            found = fmt.locate(path)
            if found is not None:
                return found
    return path


def require_exists(path: Path) -> None:
    """Refuse a path that names nothing (:class:`NoSuchFileError`)."""
    if not path.exists():
        raise NoSuchFileError("no such file or directory", path)


def check_input(path: Path) -> bytes:
    """The first bytes of an input, after the checks every format shares (``b""`` for a folder).

    The input check of every command, ``verify`` included: each condition has its own error,
    :class:`NoSuchFileError`, :class:`NotAFileError`, :class:`EmptyFileError` and
    :class:`LfsPointerError` (:func:`detect` adds :class:`UnknownFormatError`).
    """
    require_exists(path)
    if path.is_dir():
        return b""
    if not path.is_file():
        raise NotAFileError("not a regular file (a pipe or a device?); give a checkpoint file", path)
    head = read_head(path)
    if not head:
        raise EmptyFileError("the file is empty", path)
    if head.startswith(LFS_POINTER_PREFIX):
        raise LfsPointerError(_lfs_message(head), path)
    return head


def _lfs_message(head: bytes) -> str:
    text = head.decode("utf-8", "replace")
    oid = re.search(r"^oid sha256:([0-9a-f]{64})$", text, re.MULTILINE)
    size = re.search(r"^size (\d+)$", text, re.MULTILINE)
    stands_for = f"it stands for {size.group(1)} bytes with sha256 {oid.group(1)}; " if oid and size else ""
    return (
        "this is a Git LFS pointer file, not the checkpoint itself; fetch it with 'git lfs pull' "
        f"({stands_for}in CI: actions/checkout with lfs: true)"
    )


def detect(path: Path, head: bytes | None = None) -> Format:
    """The format of an existing file or directory: by content first, then by extension.

    ``head`` is what :func:`check_input` returned, for a caller that has checked the input already.
    A name that is no file is first looked up with :func:`locate` (a TensorFlow prefix).
    """
    if head is None:
        path = locate(path)
        head = check_input(path)
    known = list(_load(plugins=False).values())
    for fmt in known:
        if fmt.can_read and _sniff(fmt, head, path):
            return fmt
    for fmt in list(_load().values())[len(known) :]:  # plug-ins, loaded only now
        if fmt.can_read and _sniff(fmt, head, path):
            return fmt
    by_ext = [f for f in _load().values() if f.can_read and _has_extension(path, f)]
    if by_ext and path.is_dir():
        return by_ext[0]
    kind = "directory" if path.is_dir() else "file"
    hint = f" (its extension suggests {by_ext[0].name}, but the content does not match)" if by_ext else ""
    raise UnknownFormatError(f"not a checkpoint ckptkit can read: no format recognises this {kind}{hint}", path)


def _sniff(fmt: Format, head: bytes, path: Path) -> bool:
    # A sniffer that chokes on a stranger's bytes has not recognised them.
    try:
        return fmt.sniff(head, path)
    except READ_ERRORS:
        return False


# A remote sniffer parses a container's directory, with the limits: a refusal there is "not mine".
_REMOTE_SNIFF_ERRORS: tuple[type[BaseException], ...] = (*READ_ERRORS, CkptkitError)


def _sniff_remote(fmt: Format, head: bytes, source: Source) -> bool:
    if fmt.sniff_remote is None:
        return _sniff(fmt, head, Path("/", source.basename))  # sniffers look only at the name's suffix here
    try:
        return fmt.sniff_remote(head, source)
    except _REMOTE_SNIFF_ERRORS:
        return False


def for_output(path: Path, name: str | None = None) -> Format:
    """The format to write ``path`` in: ``name`` if given, else from the extension.

    ``model.safetensors.index.json`` names the index of a sharded output; its format is that of
    ``model.safetensors``.
    """
    if name:
        fmt = get(name)
    else:
        named = path.with_name(path.name.removesuffix(INDEX_SUFFIX)) if path.name.endswith(INDEX_SUFFIX) else path
        matches = [f for f in _load().values() if f.can_write and _has_extension(named, f)]
        if not matches:
            raise UsageError(f"cannot tell which format to write from the name {path.name!r}; pass --to FORMAT")
        fmt = matches[0]
    if not fmt.can_write:
        raise UsageError(f"ckptkit cannot write {fmt.name} files")
    return fmt


def _has_extension(path: Path, fmt: Format) -> bool:
    name = path.name.lower()
    return any(name.endswith(ext) for ext in fmt.extensions)


def open_checkpoint(
    path: str | Path, format: str | None = None, options: Mapping[str, Any] | None = None
) -> Checkpoint:
    """Open a checkpoint for reading, detecting its format unless ``format`` is given.

    ``path`` may be a URL (``s3://``, ``hf://``, ``https://``, ...: see :mod:`ckptkit.io.source`),
    read by range requests by the formats that can (:attr:`Format.open_remote`). A local name that
    is no file is looked up with :func:`locate` (a TensorFlow prefix).
    """
    if is_url(path):
        source = open_remote_located(str(path))
        if source.remote:
            return _open_remote(source, format, options)
        path = str(source.local_path)
    p = locate(Path(path))
    if format:
        fmt = get(format)
        check_input(p)
        if fmt.can_read and p.is_dir() and not fmt.sniff(b"", p):
            raise UsageError(
                f"this is a folder, not a {fmt.name} file; leave out --from to read the checkpoint in it", p
            )
    else:
        fmt = detect(p)
    return open_as(fmt, p, options)


def open_remote_located(url: str) -> Source:
    """The source at ``url``; when no file is there, the one a format locates for it (a TensorFlow
    prefix's index), else :class:`NoSuchFileError`."""
    try:
        return open_source(url)
    except NoSuchFileError:
        for fmt in _load().values():
            if fmt.locate_remote is not None and fmt.open_remote is not None:
                try:
                    return open_source(fmt.locate_remote(url))
                except NoSuchFileError:
                    continue
        raise


def _open_remote(source: Source, format: str | None, options: Mapping[str, Any] | None) -> Checkpoint:
    """A checkpoint at a URL: the same input checks as a local file, on its first bytes."""
    head = check_remote_input(source)
    fmt = get(format) if format else detect_remote(source, head)
    return open_remote_as(fmt, source, options)


def check_remote_input(source: Source) -> bytes:
    """:func:`check_input` for a file at a URL: its first bytes, refused when empty or a Git LFS pointer."""
    if source.size == 0:
        raise EmptyFileError("the file is empty", source.name)
    head = source.read_at(0, SNIFF_BYTES)
    if head.startswith(LFS_POINTER_PREFIX):
        raise LfsPointerError(_lfs_message(head), source.name)
    return head


def detect_remote(source: Source, head: bytes) -> Format:
    """The format of a file at a URL, among those that read URLs (:attr:`Format.open_remote`)."""
    remote = [f for f in _load().values() if f.open_remote is not None]
    found = [f for f in remote if _sniff_remote(f, head, source)]
    if not found:
        readable = ", ".join(f.name for f in remote)
        raise UnknownFormatError(
            f"not a checkpoint ckptkit can read from a URL (it reads {readable} there; download other files)",
            source.name,
        )
    return found[0]


def open_remote_as(fmt: Format, source: Source, options: Mapping[str, Any] | None = None) -> Checkpoint:
    """Open the file at a URL with ``fmt`` (:func:`open_as` for a remote source)."""
    if fmt.open_remote is None:
        raise UsageError(f"ckptkit reads {fmt.name} files from local paths only; download it first", source.name)
    opts = {k: v for k, v in (options or {}).items() if v not in (None, False, (), "")}
    try:
        ckpt = fmt.open_remote(source, opts)
    except CkptkitError as err:
        if err.path is None:
            err.path = source.name
        raise
    except READ_ERRORS as err:
        raise CorruptCheckpointError(f"cannot read as {fmt.name}: {describe_read_error(err)}", source.name) from err
    source.forget()  # the structure is parsed: a checkpoint holding many shards keeps no copies of theirs
    # Sent to another process (a Dask worker), it reopens the URL there, with the same fsspec options.
    ckpt.reopen = functools.partial(
        reopen_remote, fmt.name, source.name, tuple(sorted(opts.items())), tuple(current_storage_options().items())
    )
    return ckpt


def reopen_remote(
    format_name: str, url: str, options: tuple[tuple[str, Any], ...], storage: tuple[tuple[str, Any], ...]
) -> Checkpoint:
    """The checkpoint :func:`open_remote_as` opened at ``url``, opened again in this process."""
    with use_storage_options(dict(storage)):
        return open_remote_as(get(format_name), open_source(url), dict(options))


def open_as(fmt: Format, path: Path, options: Mapping[str, Any] | None = None) -> Checkpoint:
    """Open ``path`` with ``fmt``, for a caller that has checked the input and chosen its format."""
    if not fmt.can_read or fmt.open is None:
        raise UsageError(f"ckptkit cannot read {fmt.name} files")
    opts = {k: v for k, v in (options or {}).items() if v not in (None, False, (), "")}
    unknown = set(opts) - {o.name for o in fmt.read_options}
    if unknown:
        flags = ", ".join("--" + o.replace("_", "-") for o in sorted(unknown))
        raise UsageError(f"{flags} cannot be used when reading {fmt.name}")
    try:
        ckpt = fmt.open(path, opts)
    except CkptkitError as err:
        if err.path is None:
            err.path = str(path)
        raise
    except READ_ERRORS as err:
        raise CorruptCheckpointError(f"cannot read as {fmt.name}: {describe_read_error(err)}", path) from err
    # The recipe carries the trusted pickle globals: a worker process reopening it has no context of ours.
    ckpt.reopen = functools.partial(reopen, fmt.name, str(path), tuple(sorted(opts.items())), trusted_globals())
    return ckpt


# Checkpoints reopened in this process (a Dask worker), so that the tasks of one job that read the
# same source open it once per worker, not once per task. The key holds the file's size and
# modification time: a file replaced between jobs is opened afresh.
_reopened: dict[tuple[Any, ...], Checkpoint] = {}
_reopened_lock = threading.Lock()
_REOPENED_MAX = 16


def reopen(
    format_name: str, path: str, options: tuple[tuple[str, Any], ...], trusted: frozenset[str] = frozenset()
) -> Checkpoint:
    """The checkpoint :func:`open_as` opened as ``format_name`` at ``path``, opened again in this
    process (what a pickled checkpoint unpickles to), shared by the tasks that ask for it.
    ``trusted``: the pickle globals trusted where it was first opened (``--allow-global``)."""
    p = Path(path)
    try:
        st = p.stat()
        stamp: tuple[int, ...] = (st.st_size, st.st_mtime_ns, st.st_ino)
    except OSError:
        stamp = ()
    key = (format_name, path, repr(options), tuple(sorted(trusted)), stamp)
    with _reopened_lock:
        found = _reopened.get(key) or _reopened.get((*key, threading.get_ident()))
        if found is not None:
            return found
    with trusting(trusted):
        ckpt = open_as(get(format_name), p, dict(options))
    with _reopened_lock:
        if len(_reopened) >= _REOPENED_MAX:
            _reopened.pop(next(iter(_reopened)))  # the oldest goes; tasks still reading it keep it open
        # A checkpoint whose reads share one file position is kept for this thread only.
        _reopened[key if ckpt.concurrent_reads else (*key, threading.get_ident())] = ckpt
    return ckpt
