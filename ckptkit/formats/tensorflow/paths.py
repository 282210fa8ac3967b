"""The names TensorFlow gives a checkpoint's files, and every path a user may give for one.

A checkpoint is known by its prefix (``ckpt-1``): its index is ``ckpt-1.index`` and its data files
``ckpt-1.data-00000-of-00002`` and so on. A folder's ``checkpoint`` file (a CheckpointState in
protobuf text form) names the latest prefix and the others kept; a SavedModel keeps its variables
under ``variables/variables``. Names in a ``checkpoint`` file are followed only inside its folder:
an absolute path from the machine that wrote it is taken by its last component, as TensorFlow
itself does for a folder that was copied elsewhere.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from pathlib import Path

from ckptkit.core.errors import CorruptCheckpointError, UsageError
from ckptkit.io.paths import is_inside_name

INDEX_SUFFIX = ".index"
STATE_FILE = "checkpoint"
SAVED_MODEL_VARIABLES = Path("variables") / "variables"
_DATA_NAME = re.compile(r"^(?P<prefix>.+)\.data-(?P<shard>\d{5,})-of-(?P<count>\d{5,})$")
_STATE_LINE = re.compile(r'^\s*(?P<key>[A-Za-z_]+)\s*:\s*(?:"(?P<text>(?:[^"\\]|\\.)*)"|(?P<number>\S+))\s*$')
_MAX_STATE_BYTES = 1 << 20
_TABLE_MAGIC = bytes.fromhex("57fb808b247547db")


def index_path(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + INDEX_SUFFIX)


def data_path(prefix: Path, shard: int, count: int) -> Path:
    """``prefix.data-00000-of-00001``, as TensorFlow's ``DataFilename`` spells it."""
    return prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{count:05d}")


def existing_data_files(prefix: Path) -> list[Path]:
    """Data files beside ``prefix`` that belong to it, whatever their shard count."""
    folder = prefix.parent
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        match = _DATA_NAME.match(p.name)
        if match and match["prefix"] == prefix.name:
            found.append(p)
    return sorted(found)


def prefix_of(path: Path) -> Path | None:
    """The prefix an index or data file belongs to, from its name."""
    if path.name.endswith(INDEX_SUFFIX) and len(path.name) > len(INDEX_SUFFIX):
        return path.with_name(path.name[: -len(INDEX_SUFFIX)])
    match = _DATA_NAME.match(path.name)
    return path.with_name(match["prefix"]) if match else None


def ends_like_table(tail: bytes, size: int) -> bool:
    """Whether a file of ``size`` bytes whose last 8 bytes are ``tail`` is a table (a URL's, say)."""
    return size >= 48 and tail == _TABLE_MAGIC


def looks_like_table(path: Path) -> bool:
    """Whether ``path`` is a file that ends with the table magic number (cheap: reads 8 bytes)."""
    try:
        size = path.stat().st_size
        if size < 48 or not path.is_file():
            return False
        with open(path, "rb") as f:
            f.seek(size - 8)
            return f.read(8) == _TABLE_MAGIC
    except OSError:
        return False


@dataclass
class State:
    """A ``checkpoint`` file: the latest checkpoint's name and every one kept, as written."""

    latest: str = ""
    kept: list[str] = field(default_factory=list)


def read_state(path: Path) -> State:
    """Parse a ``checkpoint`` file (CheckpointState in text form)."""
    size = path.stat().st_size
    if size > _MAX_STATE_BYTES:
        raise CorruptCheckpointError(f"{size:,} bytes is too large for a 'checkpoint' state file", path)
    state = State()
    for number, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _STATE_LINE.match(line)
        if match is None:
            raise CorruptCheckpointError(f"line {number} of the 'checkpoint' state file is not 'key: value'", path)
        if match["text"] is None:
            continue  # timestamps
        try:
            name = codecs.escape_decode(match["text"].encode("utf-8"))[0].decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise CorruptCheckpointError(
                f"line {number} of the 'checkpoint' state file has a bad escape", path
            ) from None
        if match["key"] == "model_checkpoint_path":
            state.latest = name
        elif match["key"] == "all_model_checkpoint_paths":
            state.kept.append(name)
    if not state.latest:
        raise CorruptCheckpointError("the 'checkpoint' state file names no model_checkpoint_path", path)
    return state


def _in_folder(folder: Path, name: str, state_file: Path) -> Path:
    """The prefix a ``checkpoint`` file's entry names, kept inside ``folder``."""
    if Path(name).is_absolute() or "\\" in name:
        pure = Path(name.replace("\\", "/"))
        try:
            relative = pure.relative_to(folder.resolve())
        except ValueError:
            relative = Path(pure.name)  # written on another machine or before the folder moved
        name = relative.as_posix()
    if not is_inside_name(name):
        raise CorruptCheckpointError(
            f"the 'checkpoint' state file names {name!r}, which is not inside its folder; refusing to read it",
            state_file,
        )
    return folder / name


def choose(state: State, wanted: str | None, state_file: Path) -> str:
    """The checkpoint to read: the latest, or the one ``wanted`` names (its prefix or its number)
    among those the ``checkpoint`` file keeps and the others in its folder."""
    if not wanted:
        return state.latest
    in_folder = sorted(p.name[: -len(INDEX_SUFFIX)] for p in state_file.parent.glob("*" + INDEX_SUFFIX))
    names = list(dict.fromkeys([*state.kept, state.latest, *in_folder]))
    for name in names:
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        if wanted in (name, base) or (wanted.isdigit() and re.search(rf"-0*{int(wanted)}$", base)):
            return name
    listed = ", ".join(dict.fromkeys(n.replace("\\", "/").rsplit("/", 1)[-1] for n in names))
    raise UsageError(f"--checkpoint {wanted!r} is not a checkpoint of this folder ({listed})", state_file)


@dataclass(frozen=True)
class Location:
    """What a path given by the user names: the checkpoint's prefix and its index file."""

    prefix: Path
    index: Path


def folder_index(folder: Path, wanted: str | None = None) -> Location | None:
    """The checkpoint a folder holds: the one its ``checkpoint`` file names, a SavedModel's variables,
    or its only index; ``None`` when it holds none of these."""
    state_file = folder / STATE_FILE
    if state_file.is_file():
        state = read_state(state_file)
        prefix = _in_folder(folder, choose(state, wanted, state_file), state_file)
        index = index_path(prefix)
        if not index.is_file():
            raise CorruptCheckpointError(
                f"the 'checkpoint' state file names {prefix.name}, but {index.name} is not in the folder", state_file
            )
        return Location(prefix, index)
    if wanted:
        raise UsageError(f"--checkpoint needs a folder with a 'checkpoint' state file; {folder} has none")
    for prefix in (folder / SAVED_MODEL_VARIABLES, folder / "variables"):
        if looks_like_table(index_path(prefix)):
            return Location(prefix, index_path(prefix))
    tables = sorted(p for p in folder.glob("*" + INDEX_SUFFIX) if not p.name.startswith(".") and looks_like_table(p))
    if len(tables) > 1:
        shown = ", ".join(p.name for p in tables[:8])
        raise UsageError(
            f"this folder holds several TensorFlow checkpoints ({shown}) and no 'checkpoint' file; name one"
        )
    if tables:
        return Location(tables[0].with_name(tables[0].name[: -len(INDEX_SUFFIX)]), tables[0])
    return None


def kept_checkpoints(folder: Path) -> list[Path] | None:
    """Every checkpoint of a training folder, as prefixes, oldest first: those its ``checkpoint`` file
    lists (``tf.train.CheckpointManager`` keeps them there), after the others whose index is in the
    folder (kept apart by ``keep_checkpoint_every_n_hours``, or left by an earlier run). ``None`` for
    a folder without a ``checkpoint`` file, which holds one checkpoint at most."""
    state_file = folder / STATE_FILE
    if not folder.is_dir() or not state_file.is_file():
        return None
    state = read_state(state_file)
    listed = [_in_folder(folder, name, state_file) for name in dict.fromkeys([*state.kept, state.latest])]
    others = sorted(
        (
            p.with_name(p.name[: -len(INDEX_SUFFIX)])
            for p in folder.glob("*" + INDEX_SUFFIX)
            if not p.name.startswith(".") and looks_like_table(p)
        ),
        key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)],
    )
    return [p for p in others if p not in listed] + listed


def locate(path: Path, wanted: str | None = None) -> Location:
    """The checkpoint ``path`` names: a prefix, an index or data file, a ``checkpoint`` file, a folder
    holding one, a SavedModel folder or its ``saved_model.pb``."""
    if path.is_dir():
        found = folder_index(path, wanted)
        if found is None:
            raise CorruptCheckpointError(
                "this folder holds no TensorFlow checkpoint (no 'checkpoint' file, no .index)", path
            )
        return found
    if wanted:
        raise UsageError("--checkpoint picks a checkpoint in a folder; give the folder, not a file")
    if path.name in (STATE_FILE, "saved_model.pb") and path.is_file():
        found = folder_index(path.parent)
        if found is not None:
            return found
    prefix = prefix_of(path) if path.exists() else path
    if prefix is None:
        raise UsageError(
            f"{path.name} is not named like a TensorFlow checkpoint's index ('PREFIX.index'); its data files are "
            "found from that name"
        )
    index = index_path(prefix)
    if not index.is_file():
        raise CorruptCheckpointError(f"the checkpoint's index {index.name} is missing", index)
    return Location(prefix, index)
