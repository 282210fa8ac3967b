"""A run's snapshots: which paths, and in what training order.

Arguments may be checkpoint files, checkpoint folders (a shard index, a DCP step folder, a
transformers ``checkpoint-N/`` folder), glob patterns, or folders holding several checkpoints
(``runs/exp1/`` with ``step_*.pt``, or ``checkpoint-*/`` folders), which stand for each checkpoint in
them. A folder that a format knows as a series of checkpoints (a TensorFlow training folder with
its ``checkpoint`` file) stands for every checkpoint it keeps (:attr:`Format.snapshots`). A shard of a
sharded set is no snapshot: the set's index is.

Snapshots are ordered by the step the checkpoints record (``global_step``, ``step``, ``iteration``,
``iter``, or a trainer's ``trainer_state.json``); else by the step their names give
(:func:`name_step`); else by a coarser count they record (``save_counter``, ``epoch``); else they
keep the order given, and the report says so.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ckptkit import registry
from ckptkit.core.errors import CkptkitError, NoSuchFileError, UnsafeCheckpointError, UsageError
from ckptkit.core.model import Checkpoint
from ckptkit.io.shards.index import find_indexes, read_index
from ckptkit.io.source import is_url

# Step keys a checkpoint may record, most precise first (an epoch spans many steps; a save counter
# counts saves, and a name's number is at least as precise: CheckpointManager names by step when asked).
PRECISE_STEP_KEYS = ("global_step", "step", "iteration", "iter")
COARSE_STEP_KEYS = ("save_counter", "epoch")
STEP_KEYS = PRECISE_STEP_KEYS + COARSE_STEP_KEYS
TRAINER_STATE = "trainer_state.json"  # written by transformers' Trainer beside each checkpoint
_TRAINER_STATE_MAX_BYTES = 64 * 1024 * 1024
_GLOB_CHARS = re.compile(r"[*?\[]")
_DIGITS = re.compile(r"(\d+)")

# Names: what never counts as a step. Shard counters (model-00001-of-00004), GGUF quantization
# types (Q8_0, Q4_K_M, IQ2_XXS, TQ1_0), fractions (a loss 0.43, a version v0.2, a size 1.5B). Tokens
# glued to letters (fp16, bf16, int8, 7b, 13B, h5, v2) never count either: a step stands alone.
_SHARD = re.compile(r"\d+-of-\d+", re.IGNORECASE)
_QUANT = re.compile(r"(?<![A-Za-z0-9])[it]?q\d+(?:_[a-z0-9]+)+(?![A-Za-z0-9])", re.IGNORECASE)
_FRACTION = re.compile(r"(?<![0-9.])\d+(?:\.\d+)+[a-z]*", re.IGNORECASE)
_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]*$")
# A step word and its number: step_100, global_step100, iter_0001000, checkpoint-500, ckpt-7, epoch=3.
_STEP_WORD = r"global_?step|steps?|iteration|iters?"
_SAVE_WORD = r"checkpoint|ckpt"
_EPOCH_WORD = r"epochs?"
_WORD_NUMBER = r"(?<![A-Za-z])(?:{words})[-_=]?(\d+)(?![A-Za-z0-9])"
_STEP = re.compile(_WORD_NUMBER.format(words=_STEP_WORD), re.IGNORECASE)
_SAVE = re.compile(_WORD_NUMBER.format(words=_SAVE_WORD), re.IGNORECASE)
_EPOCH = re.compile(_WORD_NUMBER.format(words=_EPOCH_WORD), re.IGNORECASE)
_TRAILING = re.compile(r"(?:^|[-_.=\s])(\d+)[-_.=\s]*$")
# A shard's file name as transformers and ckptkit write them.
_SHARD_FILE = re.compile(r"-\d{5}-of-\d{5}\.")

Order = Literal["step", "given"]


@dataclass
class Snapshot:
    """One checkpoint of the run: where it is, and the step it stands for."""

    path: Path | str  # a str for a checkpoint at a URL
    step: int | float | None = None
    step_source: str | None = None  # the metadata key the step came from, "name", or None


def natural_key(text: str) -> list[Any]:
    """Sort key that puts ``step_9`` before ``step_10``."""
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(text)]


def _stem(name: str) -> str:
    """``name`` less its extensions (``.safetensors``, ``.weights.h5``, ``.index``); ``.05`` is no extension."""
    while True:
        cut = _EXTENSION.sub("", name)
        if cut == name or not cut:
            return name
        name = cut


def _step_in(text: str, bare: bool) -> int | None:
    text = _FRACTION.sub(" ", _QUANT.sub(" ", _SHARD.sub(" ", text)))
    for pattern in (_STEP, None, _SAVE, _EPOCH):
        if pattern is None:
            trailing = _TRAILING.search(text) if bare else None
            if trailing:
                return int(trailing[1])
            continue
        found = pattern.findall(text)
        if found:
            return int(found[-1])
    return None


def name_step(path: str | Path, within: int | None = None) -> int | None:
    """The training step a checkpoint's name gives, or ``None``.

    A step is the number after a step word (``step``, ``global_step``, ``iter``, ``iteration``),
    else a bare number ending the name (``model_100.pt``, ``weights.05-0.43.h5`` once the loss is
    set aside), else the number after ``checkpoint``/``ckpt``, else after ``epoch``. Numbers glued to
    letters (``fp16``, ``bf16``, ``7b``, ``h5``), fractions (a loss, ``v0.2``, ``1.5B``),
    quantization types (``Q8_0``, ``Q4_K_M``) and shard counters (``00001-of-00004``) never count.
    When the file's own name gives none, the nearest folder above it does, by a step word or a
    name that is a bare number (``checkpoint-500/model.safetensors``, ``ckpt/100/``); ``within`` limits
    that search to the last ``within`` parts of the path.
    """
    parts = Path(path).parts
    if not parts:
        return None
    step = _step_in(_stem(parts[-1]), bare=True)
    if step is not None:
        return step
    folders = parts[:-1] if within is None else parts[max(0, len(parts) - within) : -1]
    for folder in reversed(folders):
        if folder.isdigit():
            return int(folder)
        step = _step_in(folder, bare=False)
        if step is not None:
            return step
    return None


def name_steps(paths: Sequence[Path | str]) -> list[int | None]:
    """:func:`name_step` of each path (a URL by the path part after its host), looking only at the
    parts that are not common to all of them."""
    if not paths:
        return []
    named = [Path(p.split("://", 1)[1]) if isinstance(p, str) else p for p in paths]
    parts = [p.parts for p in named]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return [name_step(p, within=len(p.parts) - common) for p in named]


def _is_checkpoint(path: Path) -> bool:
    try:
        registry.detect(path)
    except CkptkitError:
        return False
    return True


def _series(path: Path) -> list[Path] | None:
    """The checkpoints a folder keeps, when its format knows it as a series (a TensorFlow training folder)."""
    try:
        fmt = registry.detect(path)
    except CkptkitError:
        return None
    return fmt.snapshots(path) if fmt.snapshots is not None else None


def _shard_index(path: Path) -> Path | None:
    """For a file named like a shard (``model-00001-of-00004.safetensors``), the index in its folder that lists it."""
    if not _SHARD_FILE.search(path.name):
        return None
    for index in find_indexes(path.parent):
        try:
            if path.name in read_index(index).shard_names:
                return index
        except CkptkitError:
            continue
    return None


def open_snapshots(
    arguments: Sequence[str | Path], stack: ExitStack, format: str | None = None, notes: list[str] | None = None
) -> dict[Path | str, Checkpoint]:
    """Open the checkpoints the arguments stand for, each once, in the order given.

    A folder that is one checkpoint (an index, a DCP folder, a model folder) is one snapshot, after
    those in its subfolders named by a step (a Trainer's output folder: ``checkpoint-*/``, then the
    final model); a folder that holds several (checkpoint files, ``checkpoint-*/`` folders, or the checkpoints a
    TensorFlow ``checkpoint`` file keeps) stands for each of them, in natural order (TensorFlow's:
    oldest first), and so does a glob pattern. Inside such a folder or pattern, what is not a
    checkpoint (a README, a JSON file, a file with no tensors) is passed over, and a shard stands
    for its index; what was passed over that looked like a checkpoint (one that cannot be read, a
    pickle that needs ``--allow-global``) is told in ``notes``. A URL names one checkpoint file (or
    shard index), read by range requests.
    """
    opened: dict[Path | str, Checkpoint] = {}
    held: set[Path] = set()  # the files the opened checkpoints are read from, resolved
    folders: dict[Path, bool] = {}  # folders looked into (resolved) and whether they held a checkpoint
    said = notes if notes is not None else []

    def add(path: Path, quiet: bool) -> bool:
        if path in opened:
            return True
        if not path.is_dir():
            return add_one(path, quiet)
        # A folder is looked into once, however it is reached: twice on the command line, or
        # through a symbolic link back to itself (a link loop contributes nothing new).
        real = path.resolve()
        if real in folders:
            return folders[real]
        folders[real] = False
        folders[real] = found = add_one(path, quiet)
        return found

    def add_one(path: Path, quiet: bool) -> bool:
        if path.is_dir():
            try:
                kept = _series(path)
            except CkptkitError as err:
                # A state file that cannot be parsed (truncated, edited by hand) loses the folder its
                # list of kept checkpoints, not the checkpoints themselves: each is read on its own.
                said.append(f"{err}; the checkpoints in {path} were read one by one instead")
                return any([add(c, True) for c in _children(path)])
            if kept:
                return any([add_kept(p) for p in kept])
        elif quiet and _SHARD_FILE.search(path.name):
            index = _shard_index(path)
            if index is None:
                said.append(f"{path} is one shard of a set with no index listing it; passed over")
                return False
            return add(index, True)
        if quiet and not _is_checkpoint(path):
            return False
        try:
            ckpt = registry.open_checkpoint(path, format)
        except CkptkitError as err:
            if quiet and isinstance(err, UnsafeCheckpointError):
                # Not fatal (a training_args.bin beside the checkpoints needs --allow-global too), but told.
                said.append(f"passed over {path}: {err.message}")
                return False
            if quiet and path.is_dir():
                return any([add(c, True) for c in _children(path)])
            if quiet:
                said.append(f"passed over {path}: {err.message}")
                return False
            raise
        if quiet and not ckpt.tensor_infos():
            ckpt.close()
            return False
        real = Path(ckpt.path).resolve() if ckpt.path is not None else None
        if real is not None and real in held:
            ckpt.close()
            # Another name of a checkpoint already in: a TensorFlow index and its data file, a prefix
            # and its index, a relative and an absolute path, a link.
            return True
        if quiet and path.is_dir():
            # A run's output folder holding the final model and the checkpoint-N/ (step_N/) folders saved
            # on the way: those first, then the final model.
            for child in _children(path):
                if child.is_dir() and name_step(child.name) is not None:
                    add(child, True)
        # A file found in a folder or by a pattern that is one part of a checkpoint (a TensorFlow
        # data file) stands for the checkpoint's main file, as a shard stands for its index.
        key = ckpt.path if quiet and ckpt.path is not None and path.is_file() else path
        opened[key] = stack.enter_context(ckpt)
        if real is not None:
            held.add(real)
        return True

    def add_kept(path: Path) -> bool:
        # A state file may still list a checkpoint deleted since (to free space): passed over, and told.
        try:
            return add(path, False)
        except NoSuchFileError as err:
            said.append(f"passed over {path}: {err.message}")
            return False

    for arg in arguments:
        if is_url(arg):
            if str(arg) not in opened:
                opened[str(arg)] = stack.enter_context(registry.open_checkpoint(str(arg), format))
            continue
        path = Path(arg)
        if not path.exists() and _GLOB_CHARS.search(str(arg)):
            matches = [Path(m) for m in sorted(glob.glob(str(arg)), key=natural_key)]
            if not matches:
                raise UsageError(f"no file or folder matches {str(arg)!r}")
            before = len(said)
            if not any([add(m, True) for m in matches]):
                why = "".join(f"; {note}" for note in said[before:])
                raise UsageError(f"nothing that matches {str(arg)!r} is a checkpoint ckptkit can read{why}")
        elif path.is_dir():
            before = len(said)
            if not add(path, True):
                if len(said) > before:
                    raise UsageError(f"no checkpoint in this folder could be read; {'; '.join(said[before:])}", path)
                registry.open_checkpoint(path, format).close()  # raises why this folder holds no checkpoint
        else:
            add(path, False)
    return opened


def _children(folder: Path) -> list[Path]:
    return sorted((c for c in folder.iterdir() if not c.name.startswith(".")), key=lambda c: natural_key(c.name))


def recorded_steps(ckpt: Checkpoint, path: Path | str) -> dict[str, int | float]:
    """The step keys a checkpoint records: top-level extras, top-level scalar tensors, a trainer state file."""
    steps: dict[str, int | float] = {}
    for key, value in ckpt.extras.items():
        leaf = re.split(r"[./]", key)[-1]
        if leaf in STEP_KEYS and _is_number(value) and (leaf not in steps or key == leaf):
            steps[leaf] = value
    for name in STEP_KEYS:
        if name not in steps and name in ckpt:
            info = ckpt.info(name)
            if info.numel == 1 and info.dtype.kind in "iuf":
                steps[name] = ckpt.read_tensor(name).reshape(-1)[0].item()
    state = _trainer_state(path) if isinstance(path, Path) else None
    if state is not None and "global_step" not in steps:
        steps["global_step"] = state
    return steps


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _trainer_state(path: Path) -> int | None:
    folder = path if path.is_dir() else path.parent
    state = folder / TRAINER_STATE
    if not state.is_file() or state.stat().st_size > _TRAINER_STATE_MAX_BYTES:
        return None
    try:
        value = json.loads(state.read_text(encoding="utf-8")).get("global_step")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return value if _is_number(value) else None


def order_snapshots(
    paths: Sequence[Path | str], checkpoints: Mapping[Path | str, Checkpoint], order: Order = "step"
) -> tuple[list[Snapshot], str, list[str]]:
    """Snapshots with their steps, sorted unless ``order == "given"``; how the order was found, and notes.

    The steps come from the first of: a precise step every snapshot records, the names when every
    one gives a different step, a coarse count every snapshot records. With none of these the
    snapshots keep the order given (a note says so) rather than an order made up from their names.
    """
    notes: list[str] = []
    recorded = [recorded_steps(checkpoints[p], p) for p in paths]
    numbers = name_steps(paths)
    distinct = all(n is not None for n in numbers) and len(set(numbers)) == len(numbers)
    key = next((k for k in PRECISE_STEP_KEYS if recorded and all(k in r for r in recorded)), None)
    if key is None and not distinct:
        key = next((k for k in COARSE_STEP_KEYS if recorded and all(k in r for r in recorded)), None)
    if key is not None:
        snaps = [Snapshot(p, r[key], key) for p, r in zip(paths, recorded, strict=True)]
        how = f"metadata {key}"
    elif distinct:
        snaps = [Snapshot(p, n, "name") for p, n in zip(paths, numbers, strict=True)]
        how = "steps in the names"
    else:
        snaps = [Snapshot(p, n, "name" if n is not None else None) for p, n in zip(paths, numbers, strict=True)]
        unknown = [str(p) for p, n in zip(paths, numbers, strict=True) if n is None]
        why = f"no step recorded in or named by {_few(unknown)}" if unknown else "the names give the same step twice"
        if order == "step":
            notes.append(f"{why}: the snapshots are in the order given, not ordered by step")
        return snaps, "as given", notes
    if order == "given":
        return snaps, "as given", notes
    snaps.sort(key=lambda s: s.step if s.step is not None else 0)  # every step is known here; ties keep their order
    return snaps, how, notes


def _few(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown if len(items) <= n else f"{shown} and {len(items) - n} more"
