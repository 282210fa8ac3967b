"""Crash-safe output: every file is written in a staging folder beside the target, then renamed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from ckptkit.core.errors import OutputExistsError, UsageError

STAGING_PREFIX = ".ckptkit-tmp-"
# Staging folders are named .ckptkit-tmp-<host>-<pid>-<file name>, so that a later run on the same
# machine can tell a dead process's leftovers from a live process's work in progress.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"([0-9a-f]{8})-(\d+)-")


class AtomicOutput:
    """The files one write produces, made visible only when all of them are complete.

    Writers ask :meth:`temp_for` for the path to write each final file at; it lies in a hidden
    staging folder in the target's directory and keeps the final file's name, so files that refer
    to each other (an ONNX model and its external data, shards and their index) can be re-read
    there before anything is published. :meth:`commit` renames each into place, the main file
    last, so that a process killed at any point never leaves a partial file under a final name.
    On error the staging folder is removed. Existing files are replaced only with ``force``; files
    the output supersedes under other names (:meth:`replaces`) are removed after the new files are
    in place.
    A process killed outright (SIGKILL, out of memory) cannot clean up: its staging folder stays
    until the next write into the same folder removes it (:func:`remove_stale_staging`).
    (Files are not fsynced: that guards against power loss, costs seconds on multi-GB outputs,
    and ``cp`` does not do it either.)
    """

    def __init__(self, path: str | Path, force: bool = False) -> None:
        self.path = Path(path)
        self.force = force
        self._finals: list[Path] = []
        self._stale: list[Path] = []
        self._committed = False
        if self.path.is_dir():
            raise UsageError(f"{self.path} is a directory; give a file name to write")
        if not self.path.parent.exists():
            raise UsageError(f"the directory {self.path.parent} does not exist")
        self.check_free(self.path)
        remove_stale_staging(self.path.parent)
        self.staging = self.path.parent / f"{STAGING_PREFIX}{_HOST}-{os.getpid()}-{self.path.name}"

    def check_free(self, final: Path) -> None:
        if final.exists() and not self.force:
            raise OutputExistsError("exists already; pass --force to overwrite it", final)

    def temp_for(self, final: str | Path | None = None) -> Path:
        """Where to write ``final`` (default: the main output) until :meth:`commit`."""
        target = self.path if final is None else Path(final)
        try:
            relative = target.relative_to(self.path.parent)
        except ValueError:
            raise UsageError(f"{target} is not beside {self.path}; outputs go in one folder") from None
        if target not in self._finals:
            if target != self.path:
                self.check_free(target)
            self._finals.append(target)
        staged = self.staging / relative
        staged.parent.mkdir(parents=True, exist_ok=True)
        return staged

    def set_main(self, final: str | Path) -> None:
        """Make ``final`` the file readers open (the index of a set of shards): it is published
        last and :meth:`temp_for` without an argument returns its staged path."""
        self.temp_for(final)
        self.path = Path(final)

    def replaces(self, stale: list[Path]) -> None:
        """Files of an earlier output that this one supersedes under other names (the single file
        a set of shards replaces, or old shards). They stop the write unless ``force``; with it they
        are removed by :meth:`commit`, after the new files are in place."""
        for path in stale:
            if not (path.exists() or path.is_symlink()):
                continue
            if not self.force:
                raise OutputExistsError(
                    "exists already, from an earlier checkpoint this output replaces; pass --force to replace it", path
                )
            if path not in self._stale:
                self._stale.append(path)

    @property
    def files(self) -> list[Path]:
        """The final paths this output creates, the main file last."""
        return [f for f in self._finals if f != self.path] + ([self.path] if self.path in self._finals else [])

    def commit(self) -> None:
        """Publish every staged file under its final name, remove the files it :meth:`replaces`, then
        the staging folder.

        Ctrl-C and SIGTERM wait until every file is renamed, so an interruption never publishes
        some files of a multi-file output and not others.
        """
        with _interruptions_held():
            for final in self.files:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.staging / final.relative_to(self.path.parent), final)
            for stale in self._stale:
                if stale not in self._finals:
                    stale.unlink(missing_ok=True)
            self._committed = True
            shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        """Remove everything staged; nothing under a final name is touched."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None and not self._committed:
            self.commit()
        elif exc_type is not None:
            self.abort()


@contextlib.contextmanager
def _interruptions_held() -> Iterator[None]:
    """SIGINT and SIGTERM delivered only after the block (where the platform can hold signals)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging folders in ``folder`` left by ckptkit processes of this machine that died.

    A folder is removed only when its name carries this machine's tag and a process id that no
    longer runs, so another machine's write on a shared file system is never touched.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING_NAME.match(entry.name)
        if match is None or match[1] != _HOST or _alive(int(match[2])):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process id this machine could have given: leave the folder alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but belongs to another user, or the platform cannot tell
    return True
