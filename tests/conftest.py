"""Shared fixtures: running the CLI as a user would, and locating the bundled and real files."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"


def _realworld() -> Path:
    """../shared/realworld beside the repository, or beside the folder of its git worktree."""
    if os.environ.get("CKPTKIT_REALWORLD"):
        return Path(os.environ["CKPTKIT_REALWORLD"])
    candidates = [d / "shared" / "realworld" for d in REPO.parents[:2]]
    return next((p for p in candidates if p.is_dir()), candidates[0])


REALWORLD = _realworld()


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
    """Run ``python -m ckptkit ARGS`` in a fresh process, as a user's shell would."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("CKPTKIT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "ckptkit", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=300,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli():
    return run_cli


def assert_one_line_error(result: CliResult, *fragments: str, code: int = 2) -> None:
    """A failed command: the expected exit code, one line on stderr containing each fragment, no traceback."""
    assert result.code == code, (result.code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def realworld_files(pattern: str) -> list[Path]:
    """Checkpoints in ../shared/realworld (beside the repository), not its README; empty without that folder."""
    return sorted(p for p in REALWORLD.glob(pattern) if p.suffix != ".md") if REALWORLD.is_dir() else []


def pytest_collection_modifyitems(config, items):
    """Tests marked slow run only when asked for: pytest -m slow."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with pytest -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
