"""What a format is: how it is recognised, read and written. The registry holds these.

A format plug-in builds one :class:`Format`; readers and writers meet the rest of ckptkit only
through :class:`~ckptkit.core.model.Checkpoint`, :class:`WriteContext` and the errors of
:mod:`ckptkit.core.errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ckptkit.core.model import Checkpoint, ProgressFn

OptionKind = Literal["flag", "text", "path"]


class OutputTarget(Protocol):
    """Where a writer puts its files (:class:`ckptkit.io.atomic.AtomicOutput` or a shard's view of it).

    ``temp_for(final)`` is the staging path to write the file that will be published as ``final``
    (the main file when omitted); nothing is visible under the final names until the write commits.
    """

    @property
    def path(self) -> Path: ...

    def temp_for(self, final: str | Path | None = None) -> Path: ...

    def replaces(self, stale: list[Path]) -> None: ...


@dataclass
class WriteContext:
    """What a writer is given besides the checkpoint: where to write and how."""

    output: Any  # ckptkit.io.atomic.AtomicOutput
    options: Mapping[str, Any] = field(default_factory=dict)
    progress: ProgressFn | None = None
    notes: list[str] = field(default_factory=list)  # the writer's receipt lines
    transformed: dict[str, str] = field(default_factory=dict)  # written name -> how the writer derived it
    # A writer that renames or re-lays tensors sets what the written file should read back as,
    # for the check after writing; by default that is the checkpoint it was given.
    expected: Checkpoint | None = None


@dataclass(frozen=True)
class OptionSpec:
    """An option a format's reader or writer takes; the CLI turns it into ``--name``.

    ``kind`` is "flag" (on/off), "text", or "path"; ``multiple`` lets it be given repeatedly.
    Formats that share an option name must declare it alike.
    """

    name: str
    help: str
    kind: OptionKind = "text"
    multiple: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# Declared once because two formats take it (ONNX and Keras) and the CLI has one --template.
TEMPLATE_OPTION = OptionSpec(
    "template",
    "Write into this model (.onnx, Keras .keras, .h5, .weights.h5, or a TensorFlow object-based checkpoint "
    "of the model): the output is a complete model laid out like it, its weights replaced by the "
    "checkpoint's tensors, every shape checked.",
    kind="path",
)


Sniffer = Callable[[bytes, Path], bool]
Locator = Callable[[Path], "Path | None"]
SeriesFinder = Callable[[Path], "list[Path] | None"]
Opener = Callable[[Path, Mapping[str, Any]], Checkpoint]
Writer = Callable[[Checkpoint, WriteContext], None]


@dataclass(frozen=True)
class Format:
    """One checkpoint format: how to recognise it, read it and write it.

    ``sniff(head, path)`` answers from the first bytes (and, for containers, a cheap look inside)
    whether the file is of this format; it must not raise for files of other formats.
    ``read_options`` and ``write_options`` are the options its reader and writer take; they
    reach ``open`` and ``write`` as a mapping of option name to value.
    ``verify`` names, as ``"module:function"`` (imported only when ``ckptkit verify`` runs), the
    format's structure check: ``function(path) -> list[ckptkit.core.findings.Finding]``,
    reporting every fault it finds without stopping at the first. Formats that read
    directories are asked with an empty ``head`` for them.
    ``locate(path)``, for a path that does not exist, returns the file that holds the checkpoint it
    names (a TensorFlow prefix ``ckpt-1`` is held by ``ckpt-1.index``), or ``None``.
    ``snapshots(folder)``, for a folder this format reads as one checkpoint, returns every
    checkpoint it keeps when the folder is a series of them (a TensorFlow training folder: what its
    ``checkpoint`` file lists and the other checkpoints beside it, oldest first), each a path
    ``open`` reads; ``None`` when the folder is one checkpoint. ``ckptkit timeline`` expands such a
    folder into its checkpoints.
    ``dtypes`` is the format's dtype column: the ckptkit dtype names (:mod:`ckptkit.core.dtypes`)
    a checkpoint of this format holds. Its writer accepts exactly these (and refuses the others
    with :class:`~ckptkit.core.errors.UnsupportedError`), its reader returns them bit for bit;
    the format contract (:mod:`ckptkit.testing`) checks both.
    """

    name: str
    description: str
    extensions: tuple[str, ...]
    sniff: Sniffer
    open: Opener | None = None
    write: Writer | None = None
    write_options: tuple[OptionSpec, ...] = ()
    read_options: tuple[OptionSpec, ...] = ()
    default_extension: str = ""
    verify: str = ""
    weights_name: str = ""  # the file's name inside a model folder; default "model" + default_extension
    # Reads a remote file (a ckptkit.io.source.Source at a URL) by range requests; formats without
    # it read local files only.
    open_remote: Callable[[Any, Mapping[str, Any]], Checkpoint] | None = None
    # For a file at a URL, where ``sniff`` cannot look inside a container: answers from the first
    # bytes and the Source (range reads); without it, ``sniff`` is asked with the URL's file name.
    sniff_remote: Callable[[bytes, Any], bool] | None = None
    # For a URL that names no file, the URL of the file that holds the checkpoint it names (a
    # TensorFlow prefix's index), tried when the URL itself is missing.
    locate_remote: Callable[[str], str] | None = None
    locate: Locator | None = None
    snapshots: SeriesFinder | None = None
    dtypes: frozenset[str] = frozenset()

    @property
    def folder_file_name(self) -> str:
        """The name a checkpoint of this format gets when the output is a folder."""
        return self.weights_name or "model" + self.default_extension

    @property
    def can_read(self) -> bool:
        return self.open is not None

    @property
    def can_write(self) -> bool:
        return self.write is not None
