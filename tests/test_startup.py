"""What the command line imports before it does its work: start-up time is most of a header read.

Each check runs ckptkit in a fresh interpreter and compares the modules loaded at exit against
what that command may load. Heavy libraries (numpy 0.1-0.2 s, ml_dtypes 0.65 s, torch 1.5 s)
load only where a tensor's data is touched or a format needs its library.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ckptkit.cli import _COMMANDS, SUMMARIES

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

_RUN = """
import sys
out = sys.argv[1]
sys.argv = ["ckptkit", *sys.argv[2:]]
from ckptkit.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
with open(out, "w") as f:
    f.write(str(code) + "\\n" + "\\n".join(sorted(sys.modules)))
"""

HEAVY = {"numpy", "ml_dtypes", "rich", "torch", "h5py", "onnx", "google", "keras", "safetensors", "onnxruntime"}


def _baseline(tmp_path: Path) -> set[str]:
    out = tmp_path / "baseline.txt"
    code = "import sys; open(sys.argv[1], 'w').write('\\n'.join(sorted(sys.modules)))"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True)
    return set(out.read_text().split("\n"))


def _imported(tmp_path: Path, *args: str) -> set[str]:
    """The modules a ``ckptkit ARGS`` run loaded beyond what the interpreter itself starts with."""
    out = tmp_path / "modules.txt"
    subprocess.run([sys.executable, "-c", _RUN, str(out), *args], check=True, stdout=subprocess.DEVNULL)
    code, *mods = out.read_text().split("\n")
    assert code in ("0", "None"), f"ckptkit {' '.join(args)} exited {code}"
    return set(mods) - _baseline(tmp_path)


def _top(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def _outside_allow_list(modules: set[str], allowed: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] not in allowed | set(sys.stdlib_module_names)}


def test_help_loads_click_and_the_command_table_only(tmp_path: Path) -> None:
    mods = _imported(tmp_path, "--help")
    assert _outside_allow_list(mods, {"ckptkit", "click"}) == set()
    ours = {m for m in mods if m.startswith("ckptkit")}
    # No subcommand, engine, format or the registry: listing commands reads a table.
    assert not {m for m in ours if m.startswith(("ckptkit.cli._", "ckptkit.formats", "ckptkit.api"))} - {
        "ckptkit.cli._errors",
        "ckptkit.cli._output",
    }
    assert "ckptkit.registry" not in ours
    assert "importlib.metadata" not in mods


def test_inspect_json_of_safetensors_loads_no_array_library(tmp_path: Path) -> None:
    mods = _imported(tmp_path, "inspect", "--json", str(FIXTURES / "tied_lm_bf16.safetensors"))
    assert _outside_allow_list(mods, {"ckptkit", "click"}) == set()
    assert not _top(mods) & HEAVY
    # Plug-in formats are looked up only when no built-in format claims the file.
    assert "importlib.metadata" not in mods


@pytest.mark.parametrize(
    "path",
    [
        FIXTURES / "tied_lm_bf16.pt",
        FIXTURES / "mlp_fp32_legacy.pt",
        FIXTURES / "onnx" / "every_dtype_raw_and_typed.onnx",
        FIXTURES / "dcp_two_ranks",
    ],
    ids=lambda p: p.name,
)
def test_inspect_json_of_torch_and_onnx_headers_loads_no_array_library(tmp_path: Path, path: Path) -> None:
    mods = _imported(tmp_path, "inspect", "--json", str(path))
    assert _outside_allow_list(mods, {"ckptkit", "click"}) == set()


def test_inspect_json_of_hdf5_loads_h5py_but_no_ml_dtypes_or_rich(tmp_path: Path) -> None:
    from ckptkit.api import convert

    path = tmp_path / "m.h5"  # the legacy layout needs no Keras class names
    convert(FIXTURES / "mlp_fp32.safetensors", path)
    mods = _imported(tmp_path, "inspect", "--json", str(path))
    assert "h5py" in _top(mods)
    assert not _top(mods) & {"ml_dtypes", "rich", "torch", "onnx", "keras", "google"}


def test_inspect_json_of_tensorflow_reads_the_index_without_an_array_library(tmp_path: Path) -> None:
    from ckptkit.api import convert

    prefix = tmp_path / "tf" / "ckpt-1"
    prefix.parent.mkdir()
    convert(FIXTURES / "mlp_fp32.safetensors", prefix.with_name("ckpt-1.index"))
    mods = _imported(tmp_path, "inspect", "--json", str(prefix))
    # The index's block checksums (CRC-32C) need google-crc32c at most, not numpy.
    assert _outside_allow_list(mods, {"ckptkit", "click", "google_crc32c"}) == set()
    assert not _top(mods) & HEAVY


def test_hash_of_safetensors_hashes_bytes_without_an_array_library(tmp_path: Path) -> None:
    # Every tensor lies as-is in the file: hashing its bytes needs hashlib, not numpy.
    mods = _imported(tmp_path, "hash", str(FIXTURES / "tied_lm_bf16.safetensors"))
    assert _outside_allow_list(mods, {"ckptkit", "click"}) == set()
    assert not _top(mods) & HEAVY


def test_verify_checks_values_with_numpy(tmp_path: Path) -> None:
    mods = _imported(tmp_path, "verify", "--json", str(FIXTURES / "tied_lm_bf16.safetensors"))
    assert "numpy" in _top(mods)


def test_the_table_view_loads_rich_and_json_does_not(tmp_path: Path) -> None:
    mods = _imported(tmp_path, "inspect", str(FIXTURES / "mlp_fp16.safetensors"))
    assert "rich" in _top(mods)


def test_help_summaries_are_the_commands_own_first_lines() -> None:
    import importlib

    assert set(SUMMARIES) == set(_COMMANDS)
    for name, module in _COMMANDS.items():
        command = importlib.import_module(module).command
        assert command.get_short_help_str(limit=1000) == SUMMARIES[name], name


@pytest.mark.parametrize(
    "src, dst", [("tied_lm_fp16.safetensors", "out.pt"), ("tied_lm_bf16.pt", "out.safetensors")], ids=["st-pt", "pt-st"]
)
def test_copying_tensors_as_they_are_decodes_none(tmp_path: Path, src: str, dst: str) -> None:
    # No array library: every tensor's bytes go from file to file without being decoded.
    mods = _imported(tmp_path, "convert", str(FIXTURES / src), str(tmp_path / dst), "--no-verify")
    assert _outside_allow_list(mods, {"ckptkit", "click", "zlib_ng"}) == set()  # zlib-ng: the zip's CRC-32
    assert (tmp_path / dst).stat().st_size > 0


def test_writing_tensorflow_from_safetensors_decodes_no_tensor(tmp_path: Path) -> None:
    # Large tensors copy in the kernel and small ones as bytes; their CRC-32C needs google-crc32c only.
    import numpy as np

    import ckptkit

    src = tmp_path / "src.safetensors"
    ckptkit.save({"big": np.ones((300, 257), np.float32), "small": np.arange(7, dtype=np.int16)}, src)
    for source in (src, FIXTURES / "tied_lm_fp16.safetensors"):
        out = tmp_path / source.stem / "ckpt-1.index"
        out.parent.mkdir()
        mods = _imported(tmp_path, "convert", str(source), str(out), "--no-verify")
        assert _outside_allow_list(mods, {"ckptkit", "click", "google_crc32c"}) == set(), source.name
        with ckptkit.load(out) as written, ckptkit.load(source) as original:
            for name in original.names():
                assert written.read_tensor(name).tobytes() == original.read_tensor(name).tobytes()
