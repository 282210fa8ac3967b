"""Conversions killed with SIGKILL at many points leave the destination absent or complete, never partial.

Each kill point starts ``ckptkit convert`` on a 48 MB checkpoint in a real child process and kills
it after a delay spread over the conversion's whole run (opening, writing, checking, renaming);
half the runs replace an existing destination with ``--force``. After each kill the destination
must be absent, byte for byte the previous file, or the complete new one; hidden staging folders
may remain, and the next conversion into the folder removes them.

The children are forked from this test process, where ckptkit is already imported, so a kill
point costs only the conversion and not Python's start-up; a few points also run as fresh
``python -m ckptkit`` processes. ``pytest -m slow`` runs a longer variant with more points.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import ckptkit
from ckptkit.core.compare import arrays_identical
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.core.model import MemoryCheckpoint
from ckptkit.io import atomic as output
from ckptkit.io.atomic import STAGING_PREFIX
from tests.conftest import REPO, assert_one_line_error
from tests.helpers import print_to_terminal

TENSORS = 12
TENSOR_ELEMENTS = 1 << 20  # 4 MB of float32 each: 48 MB in all


@dataclass(frozen=True)
class Route:
    source: str  # file name of the source, made by the ``sources`` fixture
    destination: str  # file name of the destination; its extension picks the writer


ROUTES = [
    Route("src.safetensors", "out.pt"),
    Route("src.pt", "out.safetensors"),
    Route("src.safetensors", "out.onnx"),
    Route("src.pt", "out.onnx"),
    Route("src.safetensors", "out.weights.h5"),
    Route("src.pt", "out.h5"),
]
POINTS = 12


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    # Named like Keras Dense layers, so every writer (Keras 3 names groups by class) takes them.
    return {f"dense_{i}/kernel": rng.standard_normal(TENSOR_ELEMENTS, dtype=np.float32) for i in range(TENSORS)}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("kill-sources")
    arrays = _arrays()
    ckptkit.save(arrays, folder / "src.safetensors")
    ckptkit.save(arrays, folder / "src.pt")
    return folder, arrays


def fork_convert(args: list[str]) -> int:
    """Run ``ckptkit ARGS`` in a forked child; its process id."""
    pid = os.fork()
    if pid == 0:  # the child: never return into the test runner
        code = 1
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the process ends with it
            from ckptkit.cli import main

            sys.argv = ["ckptkit", *args]
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        finally:
            os._exit(code)
    return pid


_SPAWNED: list[subprocess.Popen] = []  # kept referenced: the test reaps them with waitpid


def spawn_convert(args: list[str]) -> int:
    """Run ``python -m ckptkit ARGS`` as a fresh process; its process id."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CKPTKIT_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "ckptkit", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    _SPAWNED.append(proc)
    return proc.pid


def run_and_kill(start: Callable[[list[str]], int], args: list[str], delay: float) -> bool:
    """Start a conversion, SIGKILL it after ``delay`` seconds; whether it had finished by then."""
    pid = start(args)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


def timed_run(start: Callable[[list[str]], int], args: list[str]) -> float:
    began = time.monotonic()
    pid = start(args)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, args
    return time.monotonic() - began


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_absent_previous_or_complete(dst: Path, previous: str | None, arrays: dict[str, np.ndarray]) -> str:
    """What the destination is after a kill: ``absent``, ``previous`` or ``complete``; never partial."""
    if not dst.exists():
        assert previous is None, "the previous file was removed without a replacement"
        return "absent"
    if previous is not None and digest(dst) == previous:
        return "previous"
    with ckptkit.load(dst) as out:
        assert sorted(out.names()) == sorted(arrays), "a partial file under the destination's name"
        for name, want in arrays.items():
            assert arrays_identical(out.read_tensor(name), want), name
    return "complete"


def kill_points(route: Route, sources, tmp_path: Path, points: int, start=fork_convert) -> dict[str, int]:
    folder, arrays = sources
    src = folder / route.source
    work = tmp_path / route.destination.replace(".", "_")
    work.mkdir(parents=True)
    dst = work / route.destination
    seen: dict[str, int] = {}
    # How long each kind of run takes uninterrupted, to spread the kill points over it.
    base = ["convert", str(src), str(dst), "--force"]
    durations = {flag: timed_run(start, [*base, *flag]) for flag in ((), ("--no-verify",))}
    # A complete earlier file of the same format, for the runs that replace one with --force.
    ckptkit.save({"dense_99/kernel": np.arange(10, dtype=np.float32)}, dst, force=True)
    previous_bytes = dst.read_bytes()
    dst.unlink()
    for i in range(points):
        verify_flag = () if i % 4 < 2 else ("--no-verify",)
        force = i % 2 == 1
        previous = None
        if force:
            dst.write_bytes(previous_bytes)
            previous = digest(dst)
        elif dst.exists():
            dst.unlink()
        delay = durations[verify_flag] * 1.2 * (i + 0.5) / points  # past the end too: load varies
        args = [str(src), str(dst), *verify_flag, *(["--force"] if force else [])]
        finished = run_and_kill(start, ["convert", *args], delay)
        state = assert_absent_previous_or_complete(dst, previous, arrays)
        if finished:
            assert state == "complete"
        leftovers = [p.name for p in work.iterdir() if p.name != dst.name]
        assert all(name.startswith(STAGING_PREFIX) for name in leftovers), leftovers
        seen[state] = seen.get(state, 0) + 1
    # The next conversion into the folder works and removes the dead processes' staging folders.
    assert timed_run(start, ["convert", str(src), str(dst), "--force"]) > 0
    assert_absent_previous_or_complete(dst, None, arrays)
    assert [p.name for p in work.iterdir()] == [dst.name]
    return seen


KILLS: dict[str, dict[str, int]] = {}


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    lines = [f"kill {route}: {sum(seen.values())} kills, " + ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
             for route, seen in KILLS.items()]  # fmt: skip
    lines.append(f"kill total: {sum(sum(s.values()) for s in KILLS.values())} kills, none left a partial file")
    print_to_terminal(request, lines)


def _record(name: str, seen: dict[str, int]) -> None:
    total = KILLS.setdefault(name, {})
    for state, count in seen.items():
        total[state] = total.get(state, 0) + count


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.source}->{r.destination}")
def test_killed_conversions_leave_nothing_partial(route, sources, tmp_path):
    seen = kill_points(route, sources, tmp_path, points=POINTS)
    _record(f"{route.source} -> {route.destination}", seen)
    assert sum(seen.values()) == POINTS


def test_fresh_processes_killed_mid_write(sources, tmp_path):
    seen = kill_points(Route("src.safetensors", "out.pt"), sources, tmp_path, points=4, start=spawn_convert)
    _record("python -m ckptkit src.safetensors -> out.pt", seen)
    assert sum(seen.values()) == 4


@pytest.mark.slow
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.source}->{r.destination}")
def test_killed_conversions_many_points(route, sources, tmp_path):
    _record(f"{route.source} -> {route.destination} (slow)", kill_points(route, sources, tmp_path, points=60))
    seen = kill_points(route, sources, tmp_path / "fresh", points=20, start=spawn_convert)
    _record(f"python -m ckptkit {route.source} -> {route.destination} (slow)", seen)


# --- Ordinary failures and polite interruptions clean up after themselves ----------------------------


def test_sigterm_mid_write_removes_the_staging_folder(sources, tmp_path):
    folder, arrays = sources
    for i, route in enumerate(ROUTES[:3]):
        dst = tmp_path / f"{i}" / route.destination
        dst.parent.mkdir()
        pid = fork_convert(["convert", str(folder / route.source), str(dst)])
        while not any(dst.parent.glob(STAGING_PREFIX + "*")) and not os.waitpid(pid, os.WNOHANG)[0]:
            time.sleep(0.002)
        time.sleep(0.05)
        os.kill(pid, signal.SIGTERM)
        _pid, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        state = assert_absent_previous_or_complete(dst, None, arrays)
        # Exit 143 with a complete file: the signal came while the file was being renamed into
        # place, and was held until the rename was done.
        assert code in (0, 128 + signal.SIGTERM) and (code == 143 or state == "complete"), (code, state)
        assert [p.name for p in dst.parent.iterdir()] == ([dst.name] if state == "complete" else [])


def _failing_source(folder: Path) -> Path:
    """A torch file whose last tensor cannot be read: two tensors are written before the failure."""
    from tests.hostile.generate import W_DATA, op_tensor, state_dict, torch_zip

    pkl = state_dict({"dense/kernel": op_tensor("0", 4, (2, 2), (2, 1)),
                      "dense_1/kernel": op_tensor("1", 4, (4,), (1,)),
                      "dense_2/kernel": op_tensor("2", 4, (2**20, 2**20), (0, 0))})  # fmt: skip
    path = folder / "fails_late.pt"
    path.write_bytes(torch_zip(pkl, {"0": W_DATA, "1": W_DATA, "2": W_DATA}))
    return path


@pytest.mark.parametrize("destination", ["out.safetensors", "out.pt", "out.onnx", "out.weights.h5", "out.h5"])
@pytest.mark.parametrize("force", [False, True])
def test_a_conversion_failing_mid_way_leaves_nothing(destination, force, tmp_path, cli):
    src = _failing_source(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dst = out_dir / destination
    previous = None
    if force:
        ckptkit.save({"dense_99/kernel": np.arange(3, dtype=np.float32)}, dst)
        previous = digest(dst)
    result = cli("convert", src, dst, *(["--force"] if force else []))
    assert_one_line_error(result, "tensor 'dense_2/kernel'", "repeats its data")
    assert [p.name for p in out_dir.iterdir()] == ([dst.name] if force else [])
    if force:
        assert digest(dst) == previous


class _BreaksOnThirdTensor(MemoryCheckpoint):
    def read_tensor(self, name: str) -> np.ndarray:
        if name == "dense_2/kernel":
            raise CorruptCheckpointError(f"tensor {name!r} cannot be read")
        return super().read_tensor(name)


@pytest.mark.parametrize("destination", ["out.safetensors", "out.pt", "out.onnx", "out.weights.h5", "out.h5"])
def test_a_writer_interrupted_by_its_source_removes_its_staging_folder(destination, tmp_path):
    ckpt = _BreaksOnThirdTensor({f"dense_{i}/kernel": np.full(1000, i, np.float32) for i in range(4)})
    with pytest.raises(CorruptCheckpointError, match="tensor 'dense_2/kernel'"):
        ckptkit.save(ckpt, tmp_path / destination)
    assert list(tmp_path.iterdir()) == []


def test_staging_folders_of_live_processes_and_other_machines_are_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = output._HOST
    stale = tmp_path / f"{STAGING_PREFIX}{host}-{dead_pid}-model.pt"
    live = tmp_path / f"{STAGING_PREFIX}{host}-{os.getpid()}-other.pt"
    elsewhere = tmp_path / f"{STAGING_PREFIX}{'0' * 8 if host != '0' * 8 else '1' * 8}-{dead_pid}-x.pt"
    for folder in (stale, live, elsewhere):
        folder.mkdir()
        (folder / "partial").write_bytes(b"x")
    ckptkit.save({"w": np.ones(2, np.float32)}, tmp_path / "new.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, elsewhere.name, "new.safetensors"])
