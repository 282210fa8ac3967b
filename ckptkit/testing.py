"""The format contract: what every checkpoint format must do, as a pytest class to subclass.

ckptkit's own formats and format plug-ins prove themselves the same way: one test file per format
holding a subclass of :class:`FormatContract` that names the format::

    from ckptkit.testing import FormatContract

    class TestMyFormat(FormatContract):
        format_name = "myformat"
        # myformat stores no checksum: a changed data byte is found only against a manifest.
        detects_flipped_data = False

pytest then runs every check of the contract against it. Each check applies where it can: a
format without a writer skips the writing checks, one without a reader the reading checks.

- The format declares a dtype column (:attr:`ckptkit.core.format.Format.dtypes`); its writer
  refuses every dtype outside it with :class:`~ckptkit.core.errors.UnsupportedError`.
- Round trip: one small checkpoint holding a tensor of every declared dtype and a tied alias is
  written (by the format's writer, or by :meth:`FormatContract.write_sample`) and read back bit
  for bit; the arrays given to the writer are unchanged. Where the format reads and writes, the
  file converted into the same format again reads back alike and its source is unchanged.
- Aliases (tied weights) survive: as aliases where the format can store them
  (:attr:`FormatContract.holds_aliases`), else as tensors of their own with the same values.
- Listing (opening, ``tensor_infos``, ``inspect`` without ``--stats``) reads no tensor data:
  :class:`DataReads` watches every read call and every page of every memory map while the
  listing runs, and a control read of the tensor shows that it would have seen one.
- Every other registered format's sample is refused: this format's sniffer does not claim it,
  and reading it with ``--from`` this format ends in a one-line ckptkit error, never a crash.
- A truncated file is a :class:`~ckptkit.core.errors.CkptkitError` naming the file.
- A flipped byte in tensor data makes ``ckptkit verify`` exit 1 where the format can see it
  (:attr:`FormatContract.detects_flipped_data`); elsewhere ``ckptkit verify --manifest`` with a
  manifest from ``ckptkit hash`` finds it, and plain ``verify`` is checked not to.
- A write that fails midway leaves no file under the destination name, no staging folder, and an
  existing destination as it was. A format whose writer takes ``--shard-size`` also writes the
  checkpoint as shards with an index that reads back alike, and leaves nothing when that fails.

Samples are small: one tensor of each dtype (4 x 6), plus one float32 tensor of a few MB (the
*victim*, large enough that reading it cannot hide among a header's reads) that the listing,
truncation and flipped-byte checks aim at. Each format's sample is made once per test session.
A format without a writer overrides :meth:`FormatContract.write_sample` to make its samples with
the software that writes such files; the built-in ``dcp`` and ``sharded`` formats have theirs here.

This module imports pytest: it is for test suites, and ``import ckptkit`` never imports it.
:class:`DataReads` needs Linux's ``/proc``; elsewhere the listing check is skipped.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import ml_dtypes
import numpy as np
import pytest

import ckptkit
from ckptkit import registry
from ckptkit.core.dtypes import by_name, dtype_names, from_numpy
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, UnsupportedError
from ckptkit.core.format import Format
from ckptkit.core.model import Checkpoint, MemoryCheckpoint
from ckptkit.io.atomic import STAGING_PREFIX
from ckptkit.io.shards.index import INDEX_SUFFIX
from ckptkit.io.shards.write import SHARD_SIZE_OPTION

__all__ = [
    "BUILTIN_PRODUCERS",
    "CliOutcome",
    "DataReads",
    "FormatContract",
    "Sample",
    "assert_clean_error",
    "assert_same_tensors",
    "contract_for",
    "dtype_batch",
    "fault_block",
    "run_cli",
    "sample_array",
    "sample_of",
    "snapshot",
    "write_with_format",
]

# --- Values -----------------------------------------------------------------------------------

_NO_NAN = {"float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn"}
_NO_INF = {"float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", *_NO_NAN}


def sample_array(dtype_name: str, shape: tuple[int, ...] = (3, 5), seed: int = 0) -> np.ndarray:
    """Seeded values of any ckptkit dtype, with NaN and Inf among floats where the type has them."""
    dt = by_name(dtype_name)
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if dt.kind == "b":
        return (rng.integers(0, 2, n) == 1).reshape(shape)
    if dt.kind in "iu":
        info = ml_dtypes.iinfo(dt.numpy)  # numpy's iinfo does not know int4 and friends
        carrier = dt.numpy if dt.numpy.kind in "iu" else np.int8
        values = rng.integers(int(info.min), int(info.max), n, dtype=carrier, endpoint=True)
        return values.astype(dt.numpy).reshape(shape)
    if dt.kind == "c":
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dt.numpy).reshape(shape)
    values = (rng.standard_normal(n) * 4).astype(np.float32)
    if dt.name == "float8_e8m0fnu":  # powers of two only: no sign, no zero
        values = np.abs(values) + 0.5
    if n >= 3 and dt.name not in _NO_INF:
        values[1] = np.inf
    if n >= 3 and dt.name not in _NO_NAN:
        values[2] = np.nan
    return values.astype(dt.numpy).reshape(shape)


def snapshot(arrays: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    """Every array's bytes, to show later that nothing changed them."""
    return {k: np.ascontiguousarray(v).tobytes() for k, v in arrays.items()}


def assert_same_tensors(expected: Mapping[str, np.ndarray], ckpt: Checkpoint) -> None:
    """Every expected tensor is in ``ckpt`` with the same dtype, shape and bytes (aliases count)."""
    names = set(ckpt.names()) | set(ckpt.aliases)
    assert names == set(expected), f"names differ: {sorted(names ^ set(expected))}"
    for name, want in expected.items():
        got = ckpt.read_tensor(ckpt.aliases.get(name, name))
        what = f"tensor {name!r} ({from_numpy(want.dtype).name})"
        assert got.dtype == want.dtype, f"{what} reads back as {got.dtype}"
        assert got.shape == want.shape, f"{what} reads back with shape {got.shape}, not {want.shape}"
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), f"{what}: values differ"


# --- The command line, in this process --------------------------------------------------------


@dataclass(frozen=True)
class CliOutcome:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: object) -> CliOutcome:
    """``ckptkit ARGS`` through the command's own error mapping, in this process (fast)."""
    from click.testing import CliRunner

    from ckptkit.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], env={"CKPTKIT_DEBUG": None}, catch_exceptions=False)
    return CliOutcome(result.exit_code, result.stdout, result.stderr)


def assert_clean_error(result: CliOutcome, *fragments: str) -> None:
    """Exit 2 with one line on stderr that ckptkit worded (not an unexpected exception)."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.code == 2, f"exit {result.code}, expected 2; stdout: {result.stdout[:300]!r}"
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    assert lines[0].startswith("ckptkit: error: "), lines[0]
    assert "unexpected" not in lines[0], f"a crash, not a ckptkit error: {lines[0]}"
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --- Watching what a reader reads ------------------------------------------------------------


@dataclass
class _MapRecord:
    path: str
    offset: int
    length: int
    pages: set[int] = field(default_factory=set)  # file page numbers mapped into this process


class DataReads:
    """What a block of code read from files, seen by the kernel (Linux).

    Bytes read by read calls of any thread, from any library, come from ``/proc/self/io``
    (``rchar``). Memory maps opened with :func:`mmap.mmap` inside the block are watched until they
    close: ``/proc/self/pagemap`` tells which of their pages were mapped in, which happens only
    when something touched them. The kernel maps a whole page-cache folio at a time (up to
    :func:`fault_block` bytes, aligned in the file), so bytes are "touched" at that grain.
    """

    def __init__(self) -> None:
        self.read_bytes = 0
        self.maps: list[_MapRecord] = []
        self._live: list[tuple[mmap.mmap, _MapRecord]] = []
        self._own_reads = 0
        self._saved: Any = None
        self._start = 0

    @staticmethod
    def unavailable() -> str | None:
        """Why this machine cannot watch reads, or ``None`` when it can."""
        for proc in ("/proc/self/io", "/proc/self/pagemap"):
            try:
                with open(proc, "rb") as f:
                    f.read(8)
            except OSError as err:
                return f"{proc} is not readable here ({err.strerror})"
        return None

    def __enter__(self) -> DataReads:
        monitor = self
        original = mmap.mmap

        class WatchedMap(original):  # type: ignore[valid-type, misc]
            def __new__(cls, fileno: int, length: int, *args: Any, **kwargs: Any) -> Any:
                obj = super().__new__(cls, fileno, length, *args, **kwargs)
                offset = kwargs.get("offset", args[3] if len(args) > 3 else 0)
                path = os.readlink(f"/proc/self/fd/{fileno}") if fileno >= 0 else ""
                record = _MapRecord(path, offset, len(obj))
                monitor.maps.append(record)
                monitor._live.append((obj, record))
                return obj

            def close(self) -> None:
                monitor._note(self)
                super().close()

            def __exit__(self, *exc: object) -> Any:
                monitor._note(self)
                return super().__exit__(*exc)

        self._saved = original
        mmap.mmap = WatchedMap  # type: ignore[misc]
        self._start = _rchar()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for obj, _record in list(self._live):
            if not obj.closed:
                self._note(obj)
        mmap.mmap = self._saved  # type: ignore[misc]
        self.read_bytes = _rchar() - self._start - self._own_reads
        self._live.clear()

    def _note(self, obj: mmap.mmap) -> None:
        record = next((r for o, r in self._live if o is obj), None)
        if record is None or obj.closed or not len(obj):
            return
        page = mmap.PAGESIZE
        address = np.frombuffer(obj, np.uint8).ctypes.data  # the view touches no page
        count = -(-len(obj) // page)
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(address // page * 8)
            raw = f.read(count * 8)
        self._own_reads += len(raw)
        present = np.nonzero(np.frombuffer(raw, "<u8") >> np.uint64(63))[0]  # bit 63: the page is mapped
        # Maps start on a page boundary of the file (mmap requires it): page i is file page offset/page + i.
        record.pages.update(record.offset // page + int(i) for i in present)

    def mapped_bytes(self, path: str | Path, start: int, end: int) -> int:
        """How many bytes of ``path`` in ``[start, end)`` lay on pages some watched map touched."""
        target = os.path.realpath(path)
        page = mmap.PAGESIZE
        pages: set[int] = set()
        for record in self.maps:
            if record.path == target:
                pages |= record.pages
        total = 0
        for p in pages:
            lo, hi = max(start, p * page), min(end, (p + 1) * page)
            total += max(0, hi - lo)
        return total


def _rchar() -> int:
    with open("/proc/self/io", "rb") as f:
        for line in f:
            if line.startswith(b"rchar:"):
                return int(line.split()[1])
    raise OSError("no rchar in /proc/self/io")


def fault_block() -> int:
    """The most one page fault maps: a PMD's span (2 MiB with 4 KiB pages), the largest page-cache folio."""
    page = mmap.PAGESIZE
    return page * (page // 8)


# --- Samples ----------------------------------------------------------------------------------

VICTIM_BLOCKS = 3  # the victim spans three fault blocks, so at least one lies wholly inside it


@dataclass(frozen=True)
class Sample:
    """A checkpoint written for the contract: the files in ``folder`` and nothing else.

    ``path`` is what one opens (a file or folder inside ``folder``); ``arrays`` and ``aliases``
    are what it holds; ``victim`` names its large tensor.
    """

    format_name: str
    folder: Path
    path: Path
    arrays: dict[str, np.ndarray]
    aliases: dict[str, str]
    victim: str

    def copy_to(self, dest: Path) -> Sample:
        """A copy of every file, to damage without touching the shared sample."""
        shutil.copytree(self.folder, dest, symlinks=True)
        return replace(self, folder=dest, path=dest / self.path.relative_to(self.folder))

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def digest(self) -> dict[str, str]:
        """SHA-256 of every file, by its name inside the folder."""
        return {str(p.relative_to(self.folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in self.files()}

    def expected(self) -> dict[str, np.ndarray]:
        """Every name it holds, aliases included, with its values."""
        return {**self.arrays, **{alias: self.arrays[target] for alias, target in self.aliases.items()}}

    def locate_victim(self) -> tuple[Path, int]:
        """The file holding the victim's bytes as they are, and where they start in it."""
        data = np.ascontiguousarray(self.arrays[self.victim]).tobytes()
        hits = []
        for p in self.files():
            content = p.read_bytes()
            at = content.find(data)
            while at >= 0:
                hits.append((p, at))
                at = content.find(data, at + 1)
        assert len(hits) == 1, (
            f"tensor {self.victim!r} is stored {len(hits)} times as-is in {self.folder}; the contract finds "
            "tensor data by its bytes: override FormatContract.locate_victim for a format that encodes them"
        )
        return hits[0]


def _ordered(names: frozenset[str]) -> list[str]:
    order = dtype_names()
    return sorted(names, key=order.index)


def dtype_batch(fmt: Format) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """One 4 x 6 tensor of each dtype in the column, named as Keras names Dense kernels (which
    every format can hold), and one alias tied to the first of them."""
    arrays = {f"dense_{i}/kernel": sample_array(d, (4, 6), seed=i) for i, d in enumerate(_ordered(fmt.dtypes), 1)}
    aliases = {f"dense_{len(arrays) + 1}/kernel": "dense_1/kernel"}
    return arrays, aliases


def _victim(fmt: Format, number: int) -> tuple[str, np.ndarray]:
    dtype = "float32" if "float32" in fmt.dtypes else _ordered(fmt.dtypes)[0]
    itemsize = by_name(dtype).itemsize
    return f"dense_{number}/kernel", sample_array(dtype, (VICTIM_BLOCKS * fault_block() // itemsize // 256, 256), 7)


# Samples of the formats without a writer, made by the software that writes them.
Producer = Callable[[Mapping[str, np.ndarray], Mapping[str, str], Path], Path]


def _dcp_producer(arrays: Mapping[str, np.ndarray], aliases: Mapping[str, str], folder: Path) -> Path:
    """torch.distributed.checkpoint.save of the arrays, in this process (no process group)."""
    pytest.importorskip("torch", reason="DCP samples are written by torch.distributed.checkpoint")
    import torch.distributed.checkpoint as dcp

    from ckptkit.core.torch_interop import numpy_to_torch

    state = {name: numpy_to_torch(np.array(a)) for name, a in arrays.items()}
    for alias, target in aliases.items():
        state[alias] = state[target]
    out = folder / "sample"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... assuming the intent"
        dcp.save(state, checkpoint_id=out)
    return out


def _sharded_producer(arrays: Mapping[str, np.ndarray], aliases: Mapping[str, str], folder: Path) -> Path:
    """A Hugging Face style index over shards, each tensor in the first format that writes its dtype."""
    writers = [f for f in registry.formats() if f.can_write and f.dtypes]
    groups: dict[str, dict[str, np.ndarray]] = {}
    for name, array in arrays.items():
        dtype = from_numpy(array.dtype).name
        owner = next((f.name for f in writers if dtype in f.dtypes), None)
        assert owner is not None, f"no registered format writes {dtype}"
        groups.setdefault(owner, {})[name] = array
    weight_map: dict[str, str] = {}
    for number, (format_name, tensors) in enumerate(groups.items(), 1):
        fmt = registry.get(format_name)
        shard = f"shard-{number}{fmt.default_extension}"
        tied = {alias: target for alias, target in aliases.items() if target in tensors}
        ckptkit.save(MemoryCheckpoint(tensors, aliases=tied), folder / shard, format_name)
        weight_map.update(dict.fromkeys([*tensors, *tied], shard))
    index = folder / "model.index.json"
    total = sum(a.nbytes for a in arrays.values())
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return index


BUILTIN_PRODUCERS: dict[str, Producer] = {"dcp": _dcp_producer, "sharded": _sharded_producer}


def write_with_format(
    format_name: str,
    arrays: Mapping[str, np.ndarray],
    aliases: Mapping[str, str],
    folder: Path,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """A sample written by the format's own writer, or by its producer in :data:`BUILTIN_PRODUCERS`."""
    producer = BUILTIN_PRODUCERS.get(format_name)
    if producer is not None:
        return producer(arrays, aliases, folder)
    fmt = registry.get(format_name)
    if not fmt.can_write:
        pytest.fail(f"{fmt.name} has no writer: override write_sample to make samples with the software that does")
    path = folder / ("sample" + fmt.default_extension)
    ckptkit.save(MemoryCheckpoint(arrays, aliases=aliases), path, fmt.name, **(options or {}))
    return path


_CONTRACTS: dict[str, type[FormatContract]] = {}
_SAMPLES: dict[tuple[str, str], Sample] = {}


def contract_for(format_name: str) -> type[FormatContract] | None:
    """The contract class of a format, if a test module defining it has been imported."""
    return _CONTRACTS.get(format_name)


def sample_of(format_name: str, factory: pytest.TempPathFactory) -> Sample:
    """The session's sample of a registered format, made on first use."""
    key = (str(factory.getbasetemp()), format_name)
    if key not in _SAMPLES:
        fmt = registry.get(format_name)
        contract = contract_for(format_name)
        if contract is None and not fmt.can_write and format_name not in BUILTIN_PRODUCERS:
            pytest.skip(f"no contract test of {format_name!r} is loaded to make its sample, and it has no writer")
        arrays, aliases = dtype_batch(fmt)
        victim, data = _victim(fmt, len(arrays) + len(aliases) + 1)
        arrays[victim] = data
        folder = factory.mktemp(f"sample-{format_name}")
        if contract is not None:
            path = contract().write_sample(arrays, aliases, folder)
        else:
            path = write_with_format(format_name, arrays, aliases, folder)
        _SAMPLES[key] = Sample(format_name, folder, path, arrays, aliases, victim)
    return _SAMPLES[key]


class _FailingMidway(MemoryCheckpoint):
    """A checkpoint whose ``fail_at``-th tensor read fails, as a disk or a source file might."""

    def __init__(self, arrays: Mapping[str, np.ndarray], aliases: Mapping[str, str], fail_at: int) -> None:
        super().__init__(arrays, aliases=aliases)
        self.fail_at = fail_at
        self.reads = 0

    def read_tensor(self, name: str) -> np.ndarray:
        self.reads += 1
        if self.reads >= self.fail_at:
            raise CorruptCheckpointError(f"simulated failure reading tensor {name!r}")
        return super().read_tensor(name)


def _read_everything(path: Path, format_name: str) -> None:
    with ckptkit.load(path, format_name) as ckpt:
        for ti in ckpt.tensor_infos():
            np.ascontiguousarray(ckpt.read_tensor(ti.name)).view(np.uint8).sum()


def _findings(outcome: CliOutcome) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = json.loads(outcome.stdout)["findings"]
    return findings


def _folder_listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.iterdir())}


# --- The contract -----------------------------------------------------------------------------


class FormatContract:
    """Subclass in a test module, set :attr:`format_name`, and pytest runs the contract for it.

    Set :attr:`detects_flipped_data` (with a comment saying why), :attr:`holds_aliases` when the
    format cannot store tied weights once, :attr:`write_options` for options its writer needs,
    and override :meth:`write_sample` when the format has no writer of its own.
    """

    format_name: ClassVar[str]
    # Whether ``ckptkit verify`` alone finds a changed byte of tensor data (a checksum, or structure
    # that shows it). Declare it in the subclass; the contract checks it both ways.
    detects_flipped_data: ClassVar[bool]
    # Whether tied weights are stored once and read back as aliases (else as tensors of their own).
    holds_aliases: ClassVar[bool] = True
    write_options: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("format_name")
        if name:
            _CONTRACTS[name] = cls

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "other" in metafunc.fixturenames:
            others = [f.name for f in registry.formats() if f.name != self.format_name]
            metafunc.parametrize("other", others)

    # Hooks a subclass may override.

    def write_sample(self, arrays: Mapping[str, np.ndarray], aliases: Mapping[str, str], folder: Path) -> Path:
        """Write a checkpoint of ``arrays`` with ``aliases`` into the empty ``folder``; return what to open."""
        return write_with_format(self.format_name, arrays, aliases, folder, self.write_options)

    # What the checks share (plain methods rather than fixtures, so any pytest runs them alike).

    @property
    def fmt(self) -> Format:
        return registry.get(self.format_name)

    def sample(self, tmp_path_factory: pytest.TempPathFactory) -> Sample:
        """The session's sample of this format, made on first use."""
        return sample_of(self.format_name, tmp_path_factory)

    def _need(self, read: bool = False, write: bool = False) -> Format:
        fmt = self.fmt
        if read and not fmt.can_read:
            pytest.skip(f"{fmt.name} has no reader")
        if write and not fmt.can_write:
            pytest.skip(f"{fmt.name} has no writer")
        return fmt

    # The checks.

    def test_declarations(self) -> None:
        fmt = self.fmt
        assert fmt.dtypes, f"{fmt.name} declares no dtypes: fill Format.dtypes with what its writer accepts"
        unknown = sorted(fmt.dtypes - set(dtype_names()))
        assert not unknown, f"{fmt.name} declares dtypes ckptkit does not know: {unknown}"
        assert isinstance(getattr(self, "detects_flipped_data", None), bool), (
            "set detects_flipped_data in the contract subclass: can ckptkit verify alone see a changed data byte?"
        )

    def test_sample_is_recognised_as_this_format(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        fmt = self._need(read=True)
        sample = self.sample(tmp_path_factory)
        assert fmt.sniff(registry.read_head(sample.path), sample.path), f"{fmt.name}'s sniffer refuses its own sample"
        assert registry.detect(sample.path).name == fmt.name
        with ckptkit.load(sample.path) as ckpt:
            assert ckpt.format_name == fmt.name

    def test_round_trip_of_every_declared_dtype(self, tmp_path: Path) -> None:
        fmt = self._need(read=True)
        arrays, aliases = dtype_batch(fmt)
        before = snapshot(arrays)
        folder = tmp_path / "written"
        folder.mkdir()
        path = self.write_sample(arrays, aliases, folder)
        assert snapshot(arrays) == before, "writing changed the arrays it was given"
        first = Sample(fmt.name, folder, path, arrays, aliases, "")
        with ckptkit.load(path, fmt.name) as ckpt:
            assert_same_tensors(first.expected(), ckpt)
        if not fmt.can_write:
            return
        source = first.digest()
        again = tmp_path / "again" / path.name
        again.parent.mkdir()
        receipt = ckptkit.convert(path, again, from_format=fmt.name, to_format=fmt.name, options=self.write_options)
        assert receipt.verified
        assert first.digest() == source, "converting the file changed it"
        with ckptkit.load(again, fmt.name) as ckpt:
            assert_same_tensors(first.expected(), ckpt)

    def test_writer_refuses_every_dtype_it_does_not_declare(self, tmp_path: Path) -> None:
        fmt = self._need(write=True)
        undeclared = [d for d in dtype_names() if d not in fmt.dtypes]
        if not undeclared:
            pytest.skip(f"{fmt.name} declares every dtype ckptkit knows")
        for dtype in undeclared:
            out = tmp_path / (dtype + fmt.default_extension)
            with pytest.raises(UnsupportedError, match=dtype):
                ckptkit.save({"dense_1/kernel": sample_array(dtype, (2, 3))}, out, fmt.name, **self.write_options)
            assert not out.exists()
        assert sorted(os.listdir(tmp_path)) == []

    def test_aliases_survive(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        fmt = self._need(read=True)
        sample = self.sample(tmp_path_factory)
        with ckptkit.load(sample.path, fmt.name) as ckpt:
            for alias, target in sample.aliases.items():
                if self.holds_aliases:
                    assert ckpt.aliases.get(alias) == target, f"alias {alias!r} -> {target!r} was not kept as one"
                else:
                    assert alias in ckpt.names(), f"tied tensor {alias!r} is lost"
                got = ckpt.read_tensor(ckpt.aliases.get(alias, alias))
                assert got.tobytes() == sample.arrays[target].tobytes()

    def test_listing_reads_no_tensor_data(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        fmt = self._need(read=True)
        why = DataReads.unavailable()
        if why:
            pytest.skip(why)
        block = fault_block()
        if block > 2 << 20:
            pytest.skip(f"pages of {mmap.PAGESIZE} bytes map up to {block} bytes per fault; the sample is too small")
        sample = self.sample(tmp_path_factory)
        path, at = self.locate_victim(sample)
        nbytes = sample.arrays[sample.victim].nbytes
        lo, hi = -(-at // block) * block, (at + nbytes) // block * block  # the victim's whole fault blocks
        assert hi > lo
        ckptkit.inspect(sample.path, fmt.name)  # imports and first-use work happen outside the watch
        with DataReads() as reads:
            with ckptkit.load(sample.path, fmt.name) as ckpt:
                names = {ti.name for ti in ckpt.tensor_infos()}
            report = ckptkit.inspect(sample.path, fmt.name)  # what inspect without --stats prints
        assert names >= set(sample.arrays)
        assert {t["name"] for t in report["tensors"]} == names
        assert reads.read_bytes < hi - lo, f"listing read {reads.read_bytes} bytes through read calls"
        touched = reads.mapped_bytes(path, lo, hi)
        assert touched == 0, f"listing touched {touched} bytes of tensor {sample.victim!r} through a memory map"
        # The control: reading the tensor is seen, so the silence above means something.
        with DataReads() as control, ckptkit.load(sample.path, fmt.name) as ckpt:
            np.ascontiguousarray(ckpt.read_tensor(sample.victim)).view(np.uint8).sum()
        seen = control.read_bytes + control.mapped_bytes(path, lo, hi)
        assert seen >= hi - lo, "reading the tensor went unseen: DataReads cannot watch this reader"

    def locate_victim(self, sample: Sample) -> tuple[Path, int]:
        """Where the victim's bytes lie; override for a format that does not store them as-is."""
        return sample.locate_victim()

    def test_other_formats_are_refused(self, other: str, tmp_path_factory: pytest.TempPathFactory) -> None:
        fmt = self.fmt
        theirs = sample_of(other, tmp_path_factory)
        head = registry.read_head(theirs.path)
        assert not fmt.sniff(head, theirs.path), f"{fmt.name}'s sniffer claims a {other} checkpoint"
        if not fmt.can_read:
            return
        with pytest.raises(CkptkitError):
            _read_everything(theirs.path, fmt.name)
        assert_clean_error(run_cli("inspect", "--from", fmt.name, theirs.path), theirs.path.name)

    def test_truncated_files_are_ckptkit_errors(self, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
        fmt = self._need(read=True)
        sample = self.sample(tmp_path_factory)
        holder, at = self.locate_victim(sample)
        middle = at + sample.arrays[sample.victim].nbytes // 2
        cuts = [(holder, middle), (holder, holder.stat().st_size - 1)]
        cuts += [(p, p.stat().st_size // 2) for p in sample.files() if p != holder]
        for number, (victim_file, cut) in enumerate(cuts):
            damaged = sample.copy_to(tmp_path / f"cut{number}")
            target = damaged.folder / victim_file.relative_to(sample.folder)
            os.truncate(target, cut)
            with pytest.raises(CkptkitError) as refused:
                _read_everything(damaged.path, fmt.name)
            assert damaged.folder.name in str(refused.value), f"the error does not name the file: {refused.value}"

    def test_flipped_data_byte_is_found(self, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
        self._need(read=True)
        sample = self.sample(tmp_path_factory)
        copy = sample.copy_to(tmp_path / "ckpt")
        manifest = tmp_path / "manifest.json"
        made = run_cli("hash", copy.path, "-o", manifest)
        assert made.code == 0, made.stderr
        clean = run_cli("verify", "--json", copy.path)
        assert clean.code == 0, f"the sample does not verify clean: {_findings(clean)}"
        holder, at = self.locate_victim(sample)
        victim = sample.arrays[sample.victim]
        # The low byte of an element in the middle: a float stays finite, so only the data changed.
        position = at + victim.size // 2 * victim.itemsize
        target = copy.folder / holder.relative_to(sample.folder)
        with open(target, "r+b") as f:
            f.seek(position)
            byte = f.read(1)[0]
            f.seek(position)
            f.write(bytes([byte ^ 0x01]))
        plain = run_cli("verify", "--json", copy.path)
        if self.detects_flipped_data:
            assert plain.code == 1, f"verify missed a changed byte of tensor {sample.victim!r}"
            assert sample.victim in {f["tensor"] for f in _findings(plain) if f["severity"] == "error"}
            return
        assert plain.code == 0, (
            f"verify alone found the changed byte ({_findings(plain)}): set detects_flipped_data = True"
        )
        against = run_cli("verify", "--json", "--manifest", manifest, copy.path)
        assert against.code == 1, "verify --manifest missed a changed byte"
        found = {(f["check"], f["tensor"]) for f in _findings(against)}
        assert ("manifest.hash", sample.victim) in found, found

    def test_shards_round_trip_and_fail_atomically(self, tmp_path: Path) -> None:
        fmt = self._need(write=True)
        if SHARD_SIZE_OPTION not in fmt.write_options:
            pytest.skip(f"{fmt.name} writes no shards")
        arrays, aliases = dtype_batch(fmt)
        index = tmp_path / "written" / f"model{fmt.default_extension}{INDEX_SUFFIX}"
        index.parent.mkdir()
        options = {**self.write_options, "shard_size": "1KB"}  # a few tensors per shard
        receipt = ckptkit.save(MemoryCheckpoint(arrays, aliases=aliases), index, fmt.name, **options)
        assert len(receipt.files) > 2, receipt.files  # shards and their index
        with ckptkit.load(index) as ckpt:
            assert_same_tensors({**arrays, **{a: arrays[t] for a, t in aliases.items()}}, ckpt)
        failed = tmp_path / "failed"
        failed.mkdir()
        with pytest.raises(CorruptCheckpointError, match="simulated failure"):
            ckptkit.save(
                _FailingMidway(arrays, aliases, len(arrays) // 2 + 1), failed / index.name, fmt.name, **options
            )
        assert sorted(os.listdir(failed)) == [], "a sharded write that failed midway left files behind"

    def test_failed_write_leaves_nothing(self, tmp_path: Path) -> None:
        fmt = self._need(write=True)
        arrays, aliases = dtype_batch(fmt)
        out = tmp_path / ("out" + fmt.default_extension)
        (tmp_path / "unrelated.txt").write_text("not ckptkit's")
        fail_at = len(arrays) // 2 + 1
        for existing in (None, b"an earlier file"):
            if existing is not None:
                out.write_bytes(existing)
            before = _folder_listing(tmp_path)
            failing = _FailingMidway(arrays, aliases, fail_at)
            with pytest.raises(CorruptCheckpointError, match="simulated failure"):
                ckptkit.save(failing, out, fmt.name, force=True, **self.write_options)
            after = _folder_listing(tmp_path)
            assert after == before, (
                f"a write that failed midway changed the folder: {sorted(set(before) ^ set(after))} appeared or "
                f"went, {sorted(n for n in before if n in after and before[n] != after[n])} changed"
            )
            assert not [p for p in os.listdir(tmp_path) if p.startswith(STAGING_PREFIX)]
