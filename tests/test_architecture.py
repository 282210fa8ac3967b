"""The layering, read from the source with ast: imports go down only, and threads start in one place.

From the floor up: ``core`` (the model, errors, dtypes), ``io`` (files, shards, workers), the
registry and ``formats/<name>`` (no format imports another), the engines (``diffing``, ``verify``,
``hashing``, ``layout``, ``timelines``), then ``cli`` and ``api`` (the facade, which composes the
engines).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "ckptkit"
ENGINES = ("diffing", "verify", "hashing", "layout", "timelines")
# verify's content pass is hashing's scan, and its manifests are hashing's; a timeline measures
# with diff's metric kernels and reports with its formatting.
ENGINE_USES = {("verify", "hashing"), ("timelines", "diffing")}
WORKERS_MODULE = "ckptkit.io.workers"

# What starts threads or processes: pools from concurrent.futures and multiprocessing, threading's
# threads and timers.
POOL_MODULES = {
    "concurrent.futures": {"ThreadPoolExecutor", "ProcessPoolExecutor"},
    "concurrent.futures.thread": {"ThreadPoolExecutor"},
    "concurrent.futures.process": {"ProcessPoolExecutor"},
    "threading": {"Thread", "Timer"},
    "multiprocessing": {"Pool", "Process"},
    "multiprocessing.pool": {"Pool", "ThreadPool"},
    "multiprocessing.dummy": {"Pool", "Process"},
}
POOL_NAMES = set().union(*POOL_MODULES.values())


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield _module_name(path), ast.parse(path.read_text(encoding="utf-8"), str(path))


def _imports(module: str, tree: ast.Module, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """Every module ``module`` imports (anywhere, lazily too), absolute; ``from a import b`` gives ``a.b``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _module_strings(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """String constants naming a ckptkit module (``"ckptkit.x.y"`` or ``"ckptkit.x.y:attr"``): string imports."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.partition(":")[0]
            if text.startswith("ckptkit.") and all(p.isidentifier() for p in text.split(".")):
                yield node.lineno, text


def _within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _area(module: str) -> str:
    """``core``, ``io``, ``registry``, ``formats.<name>``, an engine, ``cli``, ``api`` or ``ckptkit``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "ckptkit"
    if parts[1] == "formats" and len(parts) > 2:
        return f"formats.{parts[2]}"
    return parts[1]


def layering_faults(module: str, tree: ast.Module, is_package: bool = False) -> list[str]:
    """Every import (or string import) of ``module`` that goes up or sideways."""
    area = _area(module)
    faults = []
    refs = [(line, name, "imports") for line, name in _imports(module, tree, is_package)]
    refs += [(line, name, "names") for line, name in _module_strings(tree)]
    for line, name, how in refs:
        if not _within(name, "ckptkit") or name == "ckptkit":
            continue
        target = _area(name)
        why = None
        if area.startswith("formats.") and target.startswith("formats.") and target != area:
            why = "a format uses another format; shared code belongs in core/ or io/"
        elif how == "imports" and target == "api" and area not in ("cli", "api", "ckptkit"):
            why = "only cli/ and the package's facade use ckptkit.api"
        elif area == "core" and target != "core":
            why = "core/ is the floor: it uses nothing else of ckptkit"
        elif area == "io" and target not in ("core", "io"):
            why = "io/ uses only core/"
        elif area in ("registry",) or area.startswith("formats"):
            if target in (*ENGINES, "cli", "api"):
                why = "formats and the registry sit below the engines, cli and api"
        elif area in ENGINES and target in ENGINES and target != area and (area, target) not in ENGINE_USES:
            why = "an engine uses another engine; let cli/api compose them"
        elif area in ENGINES and target == "cli":
            why = "engines sit below cli"
        if why:
            faults.append(f"{module}:{line} {how} {name}: {why}")
    return faults


def pool_faults(module: str, tree: ast.Module) -> list[str]:
    """Where ``module`` starts (or imports what starts) threads, processes or pools."""
    faults = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in POOL_MODULES:
            for alias in node.names:
                if alias.name in POOL_MODULES[node.module] or alias.name == "*":
                    faults.append(f"{module}:{node.lineno} imports {node.module}.{alias.name}")
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in POOL_NAMES:
                faults.append(f"{module}:{node.lineno} calls {called}")
    return faults


def _is_package(module: str) -> bool:
    return (REPO / Path(*module.split(".")) / "__init__.py").is_file()


def test_imports_go_down_only():
    faults = [f for module, tree in _sources() for f in layering_faults(module, tree, _is_package(module))]
    assert faults == []


def test_threads_start_only_in_the_workers_module():
    found = {module: pool_faults(module, tree) for module, tree in _sources()}
    assert found.pop(WORKERS_MODULE), "the workers module starts the one thread pool"
    assert [f for faults in found.values() for f in faults] == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("ckptkit.formats.sharded", "from ckptkit.formats.keras.files import open_file"),
        ("ckptkit.formats.torch.verify", "from ckptkit.hashing.scan import scan"),
        ("ckptkit.formats.onnx.reader", "from ..keras import naming"),
        ("ckptkit.layout.record", "from ckptkit.api import arrays_identical"),
        ("ckptkit.diffing.normalize", "BUILTIN = ('ckptkit.layout.diff_normalizer:keras_to_torch_layout',)"),
        ("ckptkit.io.shards.index", "from ckptkit import registry"),
        ("ckptkit.core.model", "from ckptkit.io.paths import is_inside_name"),
        ("ckptkit.hashing.scan", "import ckptkit.diffing.engine"),
    ],
)
def test_the_layering_check_sees_what_it_forbids(module, source):
    assert layering_faults(module, ast.parse(source), is_package=module == "ckptkit.formats.sharded")


@pytest.mark.parametrize(
    "source",
    [
        "from concurrent.futures import ThreadPoolExecutor",
        "import concurrent.futures\nconcurrent.futures.ProcessPoolExecutor(2)",
        "import threading\nthreading.Thread(target=print).start()",
        "from multiprocessing.pool import ThreadPool",
        "import multiprocessing as mp\nmp.Pool(2)",
    ],
)
def test_the_pool_check_sees_what_it_forbids(source):
    assert pool_faults("ckptkit.hashing.scan", ast.parse(source))


def test_allowed_imports_pass_the_checks():
    source = "from ckptkit.core.model import Checkpoint\nfrom ckptkit.io.workers import default_executor\n"
    assert layering_faults("ckptkit.formats.torch.verify", ast.parse(source)) == []
    assert layering_faults("ckptkit.verify.content", ast.parse("from ckptkit.hashing.scan import scan")) == []
    assert layering_faults("ckptkit.cli._diff", ast.parse("from ckptkit.api import diff")) == []
    assert pool_faults("ckptkit.hashing.scan", ast.parse("import threading\nlock = threading.Lock()")) == []
