"""How many threads a command uses, and the one place they are started.

Every pass that runs on several threads (writing and checking shards, the check after a
conversion, hashing and ``verify``'s reading, ``diff``'s metrics, CRC checks of zip records) asks
:func:`worker_count` how many, and runs its tasks on an :class:`Executor` from
:func:`default_executor`. The policy, in order:

1. an explicit request: ``diff --threads N``, or ``workers=``/``threads=`` in the Python API;
2. else ``CKPTKIT_WORKERS`` (``CKPTKIT_WORKERS=1`` runs everything in the calling thread);
3. else the CPUs this process may use (its CPU affinity);

and never more than those CPUs, nor :data:`MAX_WORKERS`. The work in the tasks (file copies,
hashing, CRCs, numpy loops) releases the GIL, so threads use cores; more threads than CPUs would
only take turns on them. The cap keeps a large machine from starting dozens of threads that
contend for the same memory bandwidth and page cache.

Commands express work as a list of small task records (plain data: paths, tensor names) and a
function applied to each (:meth:`Executor.map`), or hand tasks out one at a time while they read
(:meth:`Executor.stream`). Tasks must not depend on each other's side effects, and results come
back in task order, so the outcome is the same whichever executor runs them.

The passes over whole shards (writing output shards, hashing and verifying shards) ask
:func:`shard_executor` instead: it is :func:`default_executor` unless ``--executor`` or
``CKPTKIT_EXECUTOR`` names a Dask cluster (``dask://HOST:PORT``), where :class:`DaskExecutor` runs
each shard's task on a worker process of the cluster. Such tasks and their functions are pickled:
functions are importable module-level functions, records hold paths, names and open checkpoints
(which pickle as the recipe that reopens them, :meth:`ckptkit.core.model.Checkpoint.__reduce__`).
"""

from __future__ import annotations

import contextvars
import functools
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from ckptkit.core.errors import CkptkitError, MissingDependencyError, UsageError
from ckptkit.core.model import Checkpoint
from ckptkit.core.trust import trusted_globals, trusting

T = TypeVar("T")
R = TypeVar("R")

WORKERS_ENV = "CKPTKIT_WORKERS"
EXECUTOR_ENV = "CKPTKIT_EXECUTOR"
LOCAL = "local"
DASK_SCHEME = "dask://"
# A task that fails with an error that is not ckptkit's verdict on the input (a worker's disk or
# network hiccup) is run again up to this many times; a worker lost mid-task is Dask's own
# business (its tasks go to the other workers, ``distributed.scheduler.allowed-failures`` times).
TASK_RETRIES = 2
MAX_WORKERS = 8
THREAD_NAME_PREFIX = "ckptkit"


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def worker_count(requested: int | None = None) -> int:
    """Threads for one pass: ``requested`` if given, else ``CKPTKIT_WORKERS``, else the CPUs
    available; never more than those CPUs nor :data:`MAX_WORKERS`. A count below 1 is refused."""
    if requested is None:
        requested = _from_environment()
    elif requested < 1:
        raise UsageError(f"the number of threads must be 1 or more, not {requested}")
    cpus = available_cpus()
    return max(1, min(cpus if requested is None else requested, cpus, MAX_WORKERS))


def _from_environment() -> int | None:
    text = os.environ.get(WORKERS_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{WORKERS_ENV}={text!r} is not a whole number of threads") from None
    if value < 1:
        raise UsageError(f"{WORKERS_ENV}={text!r} must be 1 or more (1 runs everything in one thread)")
    return value


class Stream(ABC):
    """Tasks handed out one at a time (see :meth:`Executor.stream`)."""

    @abstractmethod
    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        """Run ``fn(*args)``; its result (or error) comes from the returned future."""


class _InlineStream(Stream):
    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        done: Future[R] = Future()
        done.set_result(fn(*args))  # an error is raised here, at once, as a plain call would
        return done


class _PoolStream(Stream):
    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        return self._pool.submit(contextvars.copy_context().run, fn, *args)


class Executor(ABC):
    """Runs tasks for a command: all at once with :meth:`map`, or one by one with :meth:`stream`."""

    workers: int = 1
    remote = False  # tasks run in other processes: records and functions are pickled, no callbacks

    @abstractmethod
    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        """``[fn(t) for t in tasks]``, possibly concurrently; the first error raised is re-raised."""

    @abstractmethod
    def stream(self) -> AbstractContextManager[Stream]:
        """A scope in which tasks are submitted one at a time, for a caller that reads while
        earlier tasks run; leaving it waits for the tasks, leaving it by an error drops those not
        yet started."""


class SerialExecutor(Executor):
    """Runs tasks one after another in the calling thread."""

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        return [fn(t) for t in tasks]

    @contextmanager
    def stream(self) -> Iterator[Stream]:
        yield _InlineStream()


class ThreadExecutor(Executor):
    """Runs tasks on a pool of threads; after a failure, tasks not yet started are cancelled.

    This is the only place ckptkit starts threads.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        if self.workers == 1 or len(tasks) < 2:
            return [fn(t) for t in tasks]
        with ThreadPoolExecutor(min(self.workers, len(tasks)), thread_name_prefix=THREAD_NAME_PREFIX) as pool:
            # Each task runs in a copy of the caller's context (trusted pickle globals travel there).
            futures: list[Future[R]] = [pool.submit(contextvars.copy_context().run, fn, t) for t in tasks]
            done, _pending = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in futures:
                err = fut.exception() if fut in done else None
                if err is not None:
                    for other in futures:
                        other.cancel()
                    raise err
            return [fut.result() for fut in futures]

    @contextmanager
    def stream(self) -> Iterator[Stream]:
        if self.workers == 1:
            yield _InlineStream()
            return
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix=THREAD_NAME_PREFIX)
        try:
            yield _PoolStream(pool)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def default_executor(concurrent: bool = True, workers: int | None = None) -> Executor:
    """The executor a pass runs on: :func:`worker_count` threads (``workers`` is an explicit
    request), or serial when the work cannot run concurrently (``concurrent=False``, as for a
    checkpoint whose reads cannot overlap) or one worker is asked for."""
    count = worker_count(workers)
    if not concurrent or count <= 1:
        return SerialExecutor()
    return ThreadExecutor(count)


_chosen: ContextVar[str | None] = ContextVar("ckptkit_executor", default=None)


def executor_spec(spec: str | None = None) -> str:
    """The executor named by ``spec``, else by :func:`use_executor`, else by ``CKPTKIT_EXECUTOR``,
    else ``local``; checked: ``local`` or ``dask://HOST:PORT``."""
    text = (spec or _chosen.get() or os.environ.get(EXECUTOR_ENV, "") or LOCAL).strip()
    if text == LOCAL:
        return text
    if text.startswith(DASK_SCHEME) and text[len(DASK_SCHEME) :].strip("/"):
        return text.rstrip("/")
    raise UsageError(f"executor {text!r} is neither {LOCAL!r} nor {DASK_SCHEME}HOST:PORT (a Dask scheduler)")


@contextmanager
def use_executor(spec: str | None) -> Iterator[None]:
    """Within the block, :func:`shard_executor` runs on ``spec`` (``local`` or ``dask://HOST:PORT``;
    ``None`` leaves the choice to ``CKPTKIT_EXECUTOR``)."""
    token = _chosen.set(executor_spec(spec) if spec else None)
    try:
        yield
    finally:
        _chosen.reset(token)


def shard_executor(concurrent: bool = True, workers: int | None = None) -> Executor:
    """The executor for a pass whose tasks are whole shards: a :class:`DaskExecutor` when one is
    chosen (:func:`use_executor`, ``CKPTKIT_EXECUTOR``), else :func:`default_executor`."""
    spec = executor_spec()
    if spec == LOCAL:
        return default_executor(concurrent, workers)
    return DaskExecutor(spec[len(DASK_SCHEME) :])


@dataclass(frozen=True)
class _Refusal:
    """A task's CkptkitError, returned rather than raised so that Dask does not retry it: the
    input's verdict is the same on every try."""

    error: CkptkitError


def _run_task(fn: Callable[[T], R], trusted: frozenset[str], task: T) -> R | _Refusal:
    # The trusted pickle globals travel with each task: a worker process has no context of ours.
    try:
        with trusting(trusted):
            return fn(task)
    except CkptkitError as err:
        return _Refusal(err)


def _run_trusted(fn: Callable[..., R], trusted: frozenset[str], *args: Any) -> R:
    with trusting(trusted):
        return fn(*args)


class _DaskStream(Stream):
    def __init__(self, client: Any) -> None:
        self._client = client
        self.pending: list[Any] = []

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        remote = self._client.submit(_run_trusted, fn, trusted_globals(), *args, pure=False, retries=TASK_RETRIES)
        self.pending.append(remote)
        done: Future[R] = Future()

        def settle(finished: Any) -> None:
            try:
                done.set_result(finished.result())
            except BaseException as err:
                done.set_exception(err)

        remote.add_done_callback(settle)
        return done


class DaskExecutor(Executor):
    """Runs tasks on a Dask cluster's workers (``distributed.Client(address)``).

    Functions and task records are pickled to the workers. A task that raises a
    :class:`~ckptkit.core.errors.CkptkitError` fails the pass with that error (the first in task
    order); other errors are retried :data:`TASK_RETRIES` times; tasks of a worker that dies are
    rerun by Dask on the others. Files a task writes must be where the client can see them (a
    shared file system or an object store).
    """

    remote = True

    def __init__(self, address: str) -> None:
        self.address = address
        self.client = _client(address)
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})))

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        if not tasks:
            return []
        run = functools.partial(_run_task, fn, trusted_globals())
        # Keys named after the function: the dashboard and the scheduler show what runs.
        token = uuid.uuid4().hex
        keys = [f"{getattr(fn, '__name__', 'task')}-{token}-{i}" for i in range(len(tasks))]
        futures = self.client.map(run, list(tasks), key=keys, pure=False, retries=TASK_RETRIES)
        try:
            results = self.client.gather(futures)
        except BaseException as err:
            self.client.cancel(futures)
            verdict = _ckptkit_cause(err)
            if verdict is not None:
                raise verdict from None
            raise
        for result in results:
            if isinstance(result, _Refusal):
                raise result.error
        return list(results)

    @contextmanager
    def stream(self) -> Iterator[Stream]:
        stream = _DaskStream(self.client)
        try:
            yield stream
        except BaseException:
            self.client.cancel(stream.pending)
            raise
        wait_all = [f for f in stream.pending if not f.done()]
        if wait_all:
            self.client.gather(wait_all, errors="skip")


def _ckptkit_cause(err: BaseException) -> CkptkitError | None:
    """The ckptkit error behind a task's failure, if one is: a checkpoint that a worker could not
    reopen while unpickling the task (the file changed or went away since the client opened it)
    reaches the client wrapped in Dask's own error, with ckptkit's as its cause."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, CkptkitError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


@functools.lru_cache(maxsize=4)
def _client(address: str) -> Any:
    """One client per scheduler address and process: connecting costs a round of handshakes."""
    try:
        from distributed import Client
    except ImportError:
        raise MissingDependencyError(
            "running on a Dask cluster needs the distributed package: pip install 'ckptkit[dask]'"
        ) from None
    try:
        return Client(address, set_as_default=False, timeout="10s")
    except (OSError, TimeoutError) as err:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {err}") from None


def balanced_groups(sizes: Sequence[int], groups: int) -> list[list[int]]:
    """Split item indices into at most ``groups`` lists of similar total size, keeping each list in
    the original order (largest items placed first, each into the lightest group)."""
    groups = max(1, min(groups, len(sizes)))
    loads = [0] * groups
    members: list[list[int]] = [[] for _ in range(groups)]
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        g = loads.index(min(loads))
        members[g].append(i)
        loads[g] += sizes[i]
    return [sorted(m) for m in members if m]


def map_tensors(
    ckpt: Checkpoint, fn: Callable[[str], R], names: Sequence[str] | None = None, executor: Executor | None = None
) -> dict[str, R]:
    """``fn(name)`` for every tensor (or those in ``names``), in the order given.

    The tensors are dealt into one task per worker of similar total size; the tasks run on
    ``executor`` (default: :func:`default_executor`, serial unless ``ckpt.concurrent_reads``).
    ``fn`` may read the tensor from ``ckpt`` and report progress; it must not depend on the other
    tensors' results.
    """
    todo = list(ckpt.names() if names is None else names)
    runner = executor or default_executor(ckpt.concurrent_reads)
    groups = balanced_groups([ckpt.info(n).nbytes for n in todo], runner.workers)
    results: dict[str, R] = {}
    for group, values in zip(groups, runner.map(lambda g: [fn(todo[i]) for i in g], groups), strict=True):
        results.update((todo[i], v) for i, v in zip(group, values, strict=True))
    return {n: results[n] for n in todo}
