"""Every registered format runs the contract, and the contract kit stays out of ``import ckptkit``."""

import importlib
import pkgutil
import subprocess
import sys

import tests.contract
from ckptkit import registry
from ckptkit.testing import contract_for
from tests.conftest import REPO


def test_every_registered_format_has_a_contract_test_file():
    for module in pkgutil.iter_modules(tests.contract.__path__):
        importlib.import_module(f"tests.contract.{module.name}")
    missing = [f.name for f in registry.formats() if contract_for(f.name) is None]
    assert not missing, f"formats without a contract test in tests/contract: {missing}"
    for fmt in registry.formats():
        assert contract_for(fmt.name).__module__.startswith("tests.contract."), fmt.name


def test_import_ckptkit_loads_neither_pytest_nor_the_kit():
    code = (
        "import sys, ckptkit, ckptkit.api, ckptkit.registry, ckptkit.cli\n"
        "ckptkit.registry.formats()\n"
        "print(sorted(m for m in ('pytest', '_pytest', 'ckptkit.testing') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stderr
