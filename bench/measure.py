"""Run one command as a child process and measure its wall time and peak anonymous memory.

Peak RSS would count the file pages a lazy reader maps (a 4 GB mmap shows as 4 GB of RSS while
holding nothing), so the child's ``RssAnon`` line in ``/proc/<pid>/status`` is polled instead:
heap, numpy buffers and other private memory, which is what runs a machine out of memory.
Polling every few milliseconds can miss a spike shorter than that; allocations the size of a
tensor live far longer.

CPU time (user + system, of the child and whatever it waited for) is reported beside wall time:
on a machine shared with other work, wall time measures the queue for the cores as much as the
command, while CPU time stays close to what the command costs.
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

POLL_SECONDS = 0.003
# Compiled bytecode of the children, kept outside the source tree. An installed package starts
# from compiled bytecode; an environment that forbids writing it (PYTHONDONTWRITEBYTECODE) would
# otherwise make every measured run recompile ckptkit, which no user pays for.
PYCACHE = Path(tempfile.gettempdir()) / "ckptkit-bench-pycache"


def child_env(repo: Path) -> dict[str, str]:
    """The environment measured children run in: ckptkit from ``repo``, bytecode cached."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(repo), "PYTHONPYCACHEPREFIX": str(PYCACHE)}


@dataclass
class Run:
    """One measured command."""

    seconds: float
    peak_anon_bytes: int
    returncode: int
    stderr: str
    cpu_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def rss_anon(pid: int) -> int:
    """The process's private anonymous resident memory in bytes (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run(cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run ``cmd`` to completion, discarding its output; stderr is kept for failure reports."""
    with tempfile.TemporaryFile() as err:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, rss_anon(proc.pid))
            time.sleep(POLL_SECONDS)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # children run one at a time here
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return Run(seconds, peak, proc.returncode, text, cpu)
