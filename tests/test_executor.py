import threading

import numpy as np
import pytest

import ckptkit
from ckptkit.core.compare import arrays_identical
from ckptkit.core.errors import CorruptCheckpointError, UsageError
from ckptkit.io import workers
from ckptkit.io.workers import SerialExecutor, ThreadExecutor, balanced_groups, default_executor, worker_count


@pytest.mark.parametrize("executor", [SerialExecutor(), ThreadExecutor(2)], ids=["serial", "threads"])
def test_results_come_back_in_task_order(executor):
    assert executor.map(lambda x: x * x, list(range(20))) == [x * x for x in range(20)]


def test_threads_run_tasks_on_two_threads_at_once():
    both_inside = threading.Barrier(2, timeout=10)
    names = ThreadExecutor(2).map(lambda _: (both_inside.wait(), threading.current_thread().name)[1], [0, 1])
    assert len(set(names)) == 2  # the barrier only opens when two tasks are running together


def test_first_error_is_raised_and_later_tasks_do_not_start():
    started = []

    def task(i):
        started.append(i)
        if i == 0:
            raise CorruptCheckpointError("shard 0 is broken")
        return i

    with pytest.raises(CorruptCheckpointError, match="shard 0"):
        ThreadExecutor(1).map(task, list(range(50)))
    assert started == [0]
    with pytest.raises(CorruptCheckpointError, match="shard 0"):
        ThreadExecutor(2).map(task, list(range(50)))


def test_default_executor_follows_the_environment(monkeypatch):
    monkeypatch.setenv("CKPTKIT_WORKERS", "1")
    assert isinstance(default_executor(), SerialExecutor)
    monkeypatch.setenv("CKPTKIT_WORKERS", "2")
    assert default_executor().workers == min(2, __import__("os").cpu_count())
    assert isinstance(default_executor(concurrent=False), SerialExecutor)


def test_balanced_groups_keep_order_and_balance():
    sizes = [100, 1, 1, 1, 50, 50, 2]
    groups = balanced_groups(sizes, 2)
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    assert all(g == sorted(g) for g in groups)
    loads = sorted(sum(sizes[i] for i in g) for g in groups)
    assert loads == [102, 103]
    assert balanced_groups([5], 4) == [[0]]
    assert balanced_groups([], 2) == []


@pytest.mark.parametrize("nbytes", [0, 1, 7, 8, 9, 4096 + 3])
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_arrays_identical_finds_any_flipped_bit(nbytes, offset):
    raw = np.random.default_rng(nbytes).integers(0, 256, nbytes + offset, dtype=np.uint8)
    a = raw[offset:]  # unaligned start, as tensors in safetensors files often are
    assert arrays_identical(a, a.copy())
    for pos in {0, nbytes // 2, nbytes - 1} if nbytes else set():
        b = a.copy()
        b[pos] ^= 0x10
        assert not arrays_identical(a, b), pos


def test_convert_verification_reports_the_first_differing_tensor(tmp_path, monkeypatch):
    from ckptkit.formats import safetensors as st

    src = tmp_path / "a.safetensors"
    ckptkit.save({f"t{i}": np.full(1000, i, np.float32) for i in range(6)}, src)
    original = st.SafetensorsCheckpoint.read_tensor
    original_extent = st.SafetensorsCheckpoint.raw_extent

    def corrupt(self, name):
        data = original(self, name)
        return data + 1 if ".ckptkit-tmp-" in str(self.path) and name in ("t2", "t4") else data

    def decoded_only(self, name):  # copies are compared as bytes; this checks the decoding comparison
        return None if ".ckptkit-tmp-" in str(self.path) else original_extent(self, name)

    monkeypatch.setattr(st.SafetensorsCheckpoint, "read_tensor", corrupt)
    monkeypatch.setattr(st.SafetensorsCheckpoint, "raw_extent", decoded_only)
    with pytest.raises(CorruptCheckpointError, match="'t2' differs"):
        ckptkit.convert(src, tmp_path / "b.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_map_tensors_returns_every_result_in_order_and_runs_serially_when_reads_cannot_overlap():
    from ckptkit.core.model import MemoryCheckpoint
    from ckptkit.io.workers import map_tensors

    ckpt = MemoryCheckpoint({f"t{i}": np.full(10 * (i + 1), i, np.int32) for i in range(9)})
    threads = set()

    def total(name):
        threads.add(threading.current_thread().name)
        return int(ckpt.read_tensor(name).sum())

    got = map_tensors(ckpt, total, executor=ThreadExecutor(2))
    assert list(got) == ckpt.names()
    assert got == {f"t{i}": i * 10 * (i + 1) for i in range(9)}
    assert map_tensors(ckpt, total, names=["t3", "t1"]) == {"t3": 120, "t1": 20}
    ckpt.concurrent_reads = False
    threads.clear()
    map_tensors(ckpt, total)
    assert threads == {threading.current_thread().name}


# --- the one worker policy ------------------------------------------------------------------------


@pytest.fixture
def cpus(monkeypatch):
    """Pretend this process may run on N CPUs; CKPTKIT_WORKERS starts unset."""
    monkeypatch.delenv(workers.WORKERS_ENV, raising=False)

    def set_cpus(n):
        monkeypatch.setattr(workers, "available_cpus", lambda: n)

    return set_cpus


def test_worker_count_is_the_request_else_the_environment_else_the_cpus(cpus, monkeypatch):
    cpus(6)
    assert worker_count() == 6
    monkeypatch.setenv("CKPTKIT_WORKERS", "3")
    assert worker_count() == 3
    assert worker_count(5) == 5  # an explicit request (--threads, workers=) wins over the environment
    assert worker_count(1) == 1


def test_worker_count_never_exceeds_the_cpus_nor_the_cap(cpus, monkeypatch):
    cpus(64)
    assert worker_count() == workers.MAX_WORKERS == 8
    assert worker_count(100) == 8
    monkeypatch.setenv("CKPTKIT_WORKERS", "100")
    assert worker_count() == 8
    cpus(2)
    assert worker_count() == worker_count(4) == 2


@pytest.mark.parametrize("text", ["zero", "0", "-2", "1.5"])
def test_a_bad_worker_setting_is_refused_by_name(cpus, monkeypatch, text):
    monkeypatch.setenv("CKPTKIT_WORKERS", text)
    with pytest.raises(UsageError, match="CKPTKIT_WORKERS"):
        worker_count()
    monkeypatch.delenv("CKPTKIT_WORKERS")
    with pytest.raises(UsageError, match="1 or more"):
        worker_count(0)


def test_default_executor_applies_the_policy(cpus, monkeypatch):
    cpus(4)
    assert isinstance(default_executor(), ThreadExecutor) and default_executor().workers == 4
    assert default_executor(workers=2).workers == 2
    assert isinstance(default_executor(workers=1), SerialExecutor)
    assert isinstance(default_executor(concurrent=False), SerialExecutor)
    monkeypatch.setenv("CKPTKIT_WORKERS", "1")
    assert isinstance(default_executor(), SerialExecutor)


@pytest.mark.parametrize("executor", [SerialExecutor(), ThreadExecutor(2)], ids=["serial", "threads"])
def test_streamed_tasks_give_their_results_and_errors(executor):
    with executor.stream() as tasks:
        futures = [tasks.submit(pow, x, 2) for x in range(10)]
    assert [f.result() for f in futures] == [x * x for x in range(10)]
    with pytest.raises(ZeroDivisionError), executor.stream() as tasks:
        tasks.submit(divmod, 1, 0).result()


@pytest.fixture
def pools(monkeypatch, cpus):
    """The size of every thread pool started, on a pretend 4-CPU machine."""
    started = []

    class CountingPool(workers.ThreadPoolExecutor):
        def __init__(self, max_workers=None, *args, **kwargs):
            started.append(max_workers)
            super().__init__(max_workers, *args, **kwargs)

    monkeypatch.setattr(workers, "ThreadPoolExecutor", CountingPool)
    cpus(4)
    return started


def _threaded_passes(tmp_path, monkeypatch, **diff_options):
    """Each pass that runs on threads, ready to run once on small files."""
    from ckptkit.diffing import engine
    from ckptkit.formats.torch.verify import check_structure
    from ckptkit.hashing.scan import scan

    monkeypatch.setattr(engine, "PARALLEL_MIN_BYTES", 0)  # so that a small diff uses threads too
    arrays = {f"t{i}": np.full(4000 + i, i, np.float32) for i in range(6)}
    st = tmp_path / "a.safetensors"
    ckptkit.save(arrays, st)
    pt = tmp_path / "a.pt"
    ckptkit.save(arrays, pt, "torch")
    later = tmp_path / "later.safetensors"
    ckptkit.save({n: a + 1 for n, a in arrays.items()}, later)

    def hash_tensors():
        with ckptkit.load(st) as ckpt:
            scan(ckpt, hashes=True)

    return {
        "check after convert": lambda: ckptkit.convert(st, tmp_path / "b.safetensors", force=True),
        "shard writing": lambda: ckptkit.convert(
            st, tmp_path / "s.safetensors", force=True, options={"shard_size": "40KB"}
        ),
        "hash and verify reading": hash_tensors,
        "torch CRC checks": lambda: check_structure(pt),
        "diff": lambda: ckptkit.diff(st, pt, **diff_options),
        "timeline": lambda: ckptkit.timeline([st, later], order="given"),
    }


@pytest.mark.parametrize("setting", ["1", "3"])
def test_every_threaded_pass_follows_ckptkit_workers(tmp_path, monkeypatch, pools, setting):
    monkeypatch.setenv("CKPTKIT_WORKERS", setting)
    for what, run in _threaded_passes(tmp_path, monkeypatch).items():
        pools.clear()
        run()
        if setting == "1":
            assert pools == [], what  # everything in the calling thread
        else:
            assert pools and max(pools) == 3, (what, pools)


def test_diff_threads_is_an_explicit_request_over_the_environment(tmp_path, monkeypatch, pools):
    monkeypatch.setenv("CKPTKIT_WORKERS", "3")
    _threaded_passes(tmp_path, monkeypatch, threads=2)["diff"]()
    assert pools == [2]
