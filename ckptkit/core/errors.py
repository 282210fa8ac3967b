"""The exceptions ckptkit raises. Only the CLI turns them into messages and exit codes."""

from __future__ import annotations

import struct
import zipfile
import zlib


class CkptkitError(Exception):
    """Base of every error ckptkit raises on purpose.

    ``path`` names the file the error is about, when there is one; the CLI puts it first in the
    one-line message so the user sees which input or output is at fault.
    """

    exit_code = 2

    def __init__(self, message: str, path: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class UsageError(CkptkitError):
    """The request itself is wrong: bad option values, conflicting options."""


class UnknownFormatError(CkptkitError):
    """No registered format recognises the file, or the named format does not exist."""


class NoSuchFileError(CkptkitError):
    """An input path names nothing: no such file or directory."""


class NotAFileError(UsageError):
    """An input path is neither a regular file nor a folder (a pipe, a device, a socket)."""


class CorruptCheckpointError(CkptkitError):
    """The file is of a known format but its content is broken (truncated, bad header, ...)."""


class UnsafeCheckpointError(CorruptCheckpointError):
    """The file asks for something ckptkit refuses to do, such as calling ``os.system``."""


class EmptyFileError(CorruptCheckpointError):
    """An input file holds no bytes at all."""


class LfsPointerError(CorruptCheckpointError):
    """An input file is a Git LFS pointer, committed or checked out in place of the checkpoint."""


class UnsupportedError(CkptkitError):
    """The file is valid but holds something this format or writer cannot represent."""


class OutputExistsError(CkptkitError):
    """The destination exists and ``force`` was not given."""


class MissingDependencyError(CkptkitError):
    """A format needs an optional package that is not installed."""


class UploadError(CkptkitError):
    """Writing to an object store failed part way; what the write had uploaded was removed."""


# What parsing a damaged file raises from the standard library and numpy: readers let these
# escape only by mistake, and the registry and :class:`ckptkit.core.model.Checkpoint` turn them into
# :class:`CorruptCheckpointError` so a caller sees one kind of error for a bad file.
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, ValueError, KeyError, IndexError, TypeError, OverflowError, MemoryError, RecursionError,
    struct.error, zlib.error, zipfile.BadZipFile,
    NotImplementedError,  # zipfile, for compression methods and zip features it lacks
)  # fmt: skip

# What each of those means in a file being read, most specific first (UnicodeDecodeError is a
# ValueError, RecursionError a RuntimeError ...). Users get these words and the library's own
# detail; the exception's class name is left to the traceback CKPTKIT_DEBUG=1 shows.
_READ_ERROR_WORDS: tuple[tuple[type[BaseException], str], ...] = (
    (UnicodeDecodeError, "text in it is not valid UTF-8"),
    (zipfile.BadZipFile, "its zip structure is damaged"),
    (zlib.error, "compressed data in it is damaged"),
    (struct.error, "a binary field in it is cut short or malformed"),
    (EOFError, "it ends before the data it announces"),
    (MemoryError, "it claims more memory than there is"),
    (RecursionError, "it nests data too deeply"),
    (OverflowError, "a number in it is out of range"),
    (KeyError, "an entry it refers to is missing"),
    (IndexError, "an index in it is out of range"),
    (NotImplementedError, "it uses a zip feature ckptkit cannot read"),
    (OSError, "reading it failed"),
    (TypeError, "a field in it has the wrong type"),
    (ValueError, "a value in it is malformed"),
)


def describe_read_error(err: BaseException, otherwise: str = "its content is malformed") -> str:
    """What ``err``, met while parsing a file, says is wrong with the file, in words.

    A :class:`CkptkitError` gives its own message; a library error gives the meaning of its kind
    (``otherwise`` for kinds not listed) and its own text, if any, in parentheses.
    """
    if isinstance(err, CkptkitError):
        return err.message
    words = next((w for kind, w in _READ_ERROR_WORDS if isinstance(err, kind)), otherwise)
    detail = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())
    return f"{words} ({detail})" if detail else words
