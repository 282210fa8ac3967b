"""A run's snapshots: which paths, and in what training order.

Arguments may be checkpoint files, checkpoint folders (a shard index, a DCP step folder), glob
patterns, or folders holding several checkpoints (``runs/exp1/`` with ``step_*.pt``, or
``checkpoint-*/`` folders as the transformers Trainer writes them), which stand for each checkpoint
in them. Snapshots are ordered by the step the checkpoints record themselves (``global_step``,
``step``, ``iteration``, ``save_counter``, ``epoch``, or a trainer's ``trainer_state.json``); when
not every snapshot records the same key, by the number in their names that differs between them.
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
from ckptkit.core.errors import CkptkitError, UsageError
from ckptkit.core.model import Checkpoint

# Step keys a checkpoint may record, most precise first (an epoch spans many steps).
STEP_KEYS = ("global_step", "step", "iteration", "iter", "save_counter", "epoch")
TRAINER_STATE = "trainer_state.json"  # written by transformers' Trainer beside each checkpoint
_TRAINER_STATE_MAX_BYTES = 64 * 1024 * 1024
_GLOB_CHARS = re.compile(r"[*?\[]")
# A number in a file name, not one glued to letters ("h5", "fp16") and not a fraction ("0.45").
_NAME_NUMBER = re.compile(r"(?<![A-Za-z\d.])\d+(?:\.\d+)?(?![A-Za-z\d])")
_DIGITS = re.compile(r"(\d+)")

Order = Literal["step", "given"]


@dataclass
class Snapshot:
    """One checkpoint of the run: where it is, and the step it stands for."""

    path: Path
    step: int | float | None = None
    step_source: str | None = None  # the metadata key the step came from, "name", or None


def natural_key(text: str) -> list[Any]:
    """Sort key that puts ``step_9`` before ``step_10``."""
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(text)]


def _is_checkpoint(path: Path) -> bool:
    try:
        registry.detect(path)
    except CkptkitError:
        return False
    return True


def open_snapshots(
    arguments: Sequence[str | Path], stack: ExitStack, format: str | None = None
) -> dict[Path, Checkpoint]:
    """Open the checkpoints the arguments stand for, each once, in the order given.

    A folder that is one checkpoint (an index, a DCP folder, a model folder) is one snapshot; a
    folder that holds several (checkpoint files, or ``checkpoint-*/`` folders) stands for each of
    them, in natural order, and so does a glob pattern. Inside such a folder or pattern, what is
    not a checkpoint (a README, a JSON file, a file with no tensors) is passed over.
    """
    opened: dict[Path, Checkpoint] = {}

    def add(path: Path, quiet: bool) -> bool:
        if path in opened:
            return True
        if quiet and not _is_checkpoint(path):
            return False
        try:
            ckpt = stack.enter_context(registry.open_checkpoint(path, format))
        except CkptkitError:
            if quiet and path.is_dir():
                return any([add(c, True) for c in _children(path)])
            if quiet:
                return False
            raise
        if quiet and not ckpt.tensor_infos():
            return False
        opened[path] = ckpt
        return True

    for arg in arguments:
        path = Path(arg)
        if not path.exists() and _GLOB_CHARS.search(str(arg)):
            matches = [Path(m) for m in sorted(glob.glob(str(arg)), key=natural_key)]
            if not matches:
                raise UsageError(f"no file or folder matches {str(arg)!r}")
            if not any([add(m, True) for m in matches]):
                raise UsageError(f"nothing that matches {str(arg)!r} is a checkpoint ckptkit can read")
        elif path.is_dir():
            if not add(path, True):
                registry.open_checkpoint(path, format).close()  # raises why this folder holds no checkpoint
        else:
            add(path, False)
    return opened


def _children(folder: Path) -> list[Path]:
    return sorted((c for c in folder.iterdir() if not c.name.startswith(".")), key=lambda c: natural_key(c.name))


def recorded_steps(ckpt: Checkpoint, path: Path) -> dict[str, int | float]:
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
    state = _trainer_state(path)
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


def name_numbers(paths: Sequence[Path]) -> list[int | None]:
    """For each path, the number in its name that tells it from the others (``None`` when there is none)."""
    if not paths:
        return []
    texts = [str(p) for p in paths]
    common = _common_prefix_len(texts)
    numbers = [[tok for tok in _NAME_NUMBER.findall(t[common:]) if "." not in tok] for t in texts]
    if len({len(n) for n in numbers}) == 1 and numbers[0]:
        for position in range(len(numbers[0])):
            values = [int(n[position]) for n in numbers]
            if len(set(values)) > 1:
                return list(values)
        return [int(n[-1]) for n in numbers]
    return [int(n[-1]) if n else None for n in numbers]


def _common_prefix_len(texts: Sequence[str]) -> int:
    first, last = min(texts), max(texts)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    # Back up to the start of a number cut in the middle ("step_1" | "0" and "step_1" | "5").
    while n > 0 and first[n - 1].isdigit():
        n -= 1
    return n


def order_snapshots(
    paths: Sequence[Path], checkpoints: Mapping[Path, Checkpoint], order: Order = "step"
) -> tuple[list[Snapshot], str]:
    """Snapshots with their steps, sorted unless ``order == "given"``, and how the order was found."""
    recorded = [recorded_steps(checkpoints[p], p) for p in paths]
    key = next((k for k in STEP_KEYS if recorded and all(k in r for r in recorded)), None)
    if key is not None:
        snaps = [Snapshot(p, r[key], key) for p, r in zip(paths, recorded, strict=True)]
        how = f"metadata {key}"
    else:
        numbers = name_numbers(paths)
        snaps = [Snapshot(p, n, "name" if n is not None else None) for p, n in zip(paths, numbers, strict=True)]
        how = "numbers in the names" if all(n is not None for n in numbers) else "names"
    if order == "given":
        return snaps, "as given"
    if all(s.step is not None for s in snaps):
        snaps.sort(key=lambda s: (s.step, natural_key(str(s.path))))
    else:
        snaps.sort(key=lambda s: natural_key(str(s.path)))
    return snaps, how
