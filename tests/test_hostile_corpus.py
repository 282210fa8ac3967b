"""Every case of the hostile corpus (tests/hostile/generate.py) through the command line.

Each case states what ``inspect`` and ``convert`` must answer; besides that answer, every run
must leave no output file and no staging folder behind, and no payload may have run.
Commands run in this process (through the same click group and error mapping as the console
script) to keep the corpus fast; a sample also runs as real subprocesses.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import ckptkit
from ckptkit.cli import cli as ckptkit_cli
from ckptkit.io.atomic import STAGING_PREFIX
from tests.conftest import REPO, CliResult, assert_one_line_error
from tests.hostile.generate import MARKER, Case, Expect, all_cases

CASES = {case.name: case for case in all_cases()}
COMMANDS = ("inspect", "convert")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    return {name: case.write(root / name) for name, case in CASES.items()}


def invoke(args: list[str], env: dict[str, str]) -> CliResult:
    result = CliRunner().invoke(ckptkit_cli, args, env={"CKPTKIT_DEBUG": None, **env}, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def command_line(case: Case, command: str, src: Path, out_dir: Path) -> tuple[list[str], Path | None]:
    if command == "inspect":
        return ["inspect", str(src)], None
    dst = out_dir / ("out.pt" if case.filename.endswith(".safetensors") else "out.safetensors")
    return ["convert", str(src), str(dst)], dst


def check_outcome(result: CliResult, expect: Expect) -> None:
    if expect.code == 0:
        assert result.code == 0, (result.code, result.stderr)
        assert result.stderr == ""
        assert expect.fragment in result.stdout, (expect.fragment, result.stdout)
    else:
        assert_one_line_error(result, expect.fragment, code=expect.code)
    assert "\x1b" not in result.stdout + result.stderr, "a name reached the terminal unescaped"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", list(CASES))
def test_case(name: str, command: str, corpus: dict[str, Path], tmp_path: Path) -> None:
    case = CASES[name]
    src = corpus[name]
    args, dst = command_line(case, command, src, tmp_path)
    result = invoke(args, case.env)
    check_outcome(result, getattr(case, command))
    assert not (src.parent / MARKER).exists(), "the payload ran"
    assert not list(tmp_path.glob(STAGING_PREFIX + "*")), "a staging folder was left behind"
    assert not list(src.parent.glob(STAGING_PREFIX + "*"))
    if dst is not None:
        if case.convert.code == 0:
            with ckptkit.load(dst) as out, ckptkit.load(src) as source:
                assert out.names() == source.names()
        else:
            assert not dst.exists(), "a failed conversion left its output"


SUBPROCESS_SAMPLE = [
    "st_header_deep_json", "pt_zip_bomb_lying", "pt_broadcast_terabyte", "pickle_os_system", "pickle_deep_tuple_key",
    "onnx_external_escape",
]  # fmt: skip
MEMORY_CAP = 768 * 1024 * 1024  # address space; a plain conversion of a small file needs under 400 MB


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


@pytest.mark.parametrize("name", SUBPROCESS_SAMPLE)
def test_sample_as_real_processes_with_capped_memory(name: str, corpus: dict[str, Path], tmp_path: Path) -> None:
    # A real process per case, unable to take more than MEMORY_CAP: a reader that allocated what
    # a header claims would fail here with a MemoryError instead of the expected message.
    case = CASES[name]
    args, _dst = command_line(case, "convert", corpus[name], tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", **case.env}
    env.pop("CKPTKIT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "ckptkit", *args], capture_output=True, text=True, env=env, timeout=120,
        preexec_fn=_cap_memory,
    )  # fmt: skip
    check_outcome(CliResult(proc.returncode, proc.stdout, proc.stderr), case.convert)
    assert not (corpus[name].parent / MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_corpus_covers_every_kind_of_attack() -> None:
    # The kinds the corpus promises; a case removed by mistake shows up here.
    about = " ".join(case.about for case in CASES.values()).lower()
    for kind in ("cut inside", "os.system", "eval", "exec", "runpy", "importlib",
                 "subprocess", "getattr", "build", "memo", "unknown class", "nested", "itself", "zip",
                 "1 tib", "lfs pointer", "limit"):  # fmt: skip
        assert kind in about, kind
