"""The format registry: options formats share, plug-ins that fail to load, and read errors in words."""

from __future__ import annotations

import struct
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptkit import registry
from ckptkit.cli import cli as ckptkit_cli
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, describe_read_error
from ckptkit.core.format import TEMPLATE_OPTION, Format, OptionSpec


@pytest.fixture
def own_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, Format]:
    """A copy of the registry, so that formats registered by a test do not outlive it."""
    formats = dict(registry._load())
    monkeypatch.setattr(registry, "_formats", formats)
    return formats


def _format(name: str, *, write_options: tuple[OptionSpec, ...] = (), open_fn=None) -> Format:
    return Format(name, f"{name} test format", (f".{name}",), lambda head, path: False, open=open_fn,
                  write_options=write_options)  # fmt: skip


def test_a_format_declaring_a_shared_option_differently_is_refused(own_registry):
    other_help = OptionSpec("template", "a different meaning of --template", kind="path")
    other_kind = OptionSpec("template", TEMPLATE_OPTION.help, kind="text")
    first = next(f.name for f in own_registry.values() if TEMPLATE_OPTION in f.write_options)
    for spec in (other_help, other_kind):
        with pytest.raises(CkptkitError, match=f"declares the option --template unlike format '{first}'"):
            registry.register(_format("clash", write_options=(spec,)))
    assert "clash" not in own_registry
    registry.register(_format("same", write_options=(TEMPLATE_OPTION,)))
    assert own_registry["same"].write_options == (TEMPLATE_OPTION,)


def test_built_in_formats_declare_each_option_once():
    seen: dict[str, OptionSpec] = {}
    for fmt in registry.formats():
        for spec in (*fmt.read_options, *fmt.write_options):
            assert seen.setdefault(spec.name, spec) == spec, (fmt.name, spec.name)
    writers_of_template = [f.name for f in registry.formats() if TEMPLATE_OPTION in f.write_options]
    assert writers_of_template == ["tensorflow", "onnx", "keras", "keras-h5"]
    help_text = " ".join(CliRunner().invoke(ckptkit_cli, ["convert", "--help"]).stdout.split())
    assert " ".join(TEMPLATE_OPTION.help.split()) in help_text
    assert help_text.count("--template PATH") == 1


def test_a_plug_in_that_fails_to_load_is_named_in_words(monkeypatch):
    broken = EntryPoint("broken", "ckptkit_missing_plugin_module:FORMAT", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [broken])
    monkeypatch.setattr(registry, "_formats", None)
    monkeypatch.setattr(registry, "plugin_errors", [])
    monkeypatch.delenv("CKPTKIT_DEBUG", raising=False)
    assert "safetensors" in {f.name for f in registry.formats()}
    assert registry.plugin_errors == [
        "format plug-in ckptkit_missing_plugin_module:FORMAT could not be loaded: it needs the module "
        "'ckptkit_missing_plugin_module', which is not installed"
    ]
    monkeypatch.setattr(registry, "_formats", None)
    monkeypatch.setenv("CKPTKIT_DEBUG", "1")
    with pytest.raises(ModuleNotFoundError):  # the traceback is the detail a developer wants
        registry.formats()
    monkeypatch.setattr(registry, "_formats", None)


def test_a_reader_that_trips_on_a_damaged_file_gives_words_not_class_names(own_registry, tmp_path):
    def open_fn(path: Path, options):
        struct.unpack("<Q", path.read_bytes())

    registry.register(_format("stub", open_fn=open_fn))
    path = tmp_path / "x.stub"
    path.write_bytes(b"abc")
    with pytest.raises(CorruptCheckpointError) as err:
        registry.open_checkpoint(path, "stub")
    assert str(err.value) == (
        f"{path}: cannot read as stub: a binary field in it is cut short or malformed "
        "(unpack requires a buffer of 8 bytes)"
    )
    assert isinstance(err.value.__cause__, struct.error)  # kept for CKPTKIT_DEBUG=1 tracebacks


@pytest.mark.parametrize(
    ("err", "words"),
    [
        (KeyError("data/3"), "an entry it refers to is missing ('data/3')"),
        (EOFError(), "it ends before the data it announces"),
        (
            UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
            "text in it is not valid UTF-8 ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)",
        ),
        (FileNotFoundError(2, "No such file or directory"), "reading it failed (No such file or directory)"),
        (RuntimeError("odd"), "its content is malformed (odd)"),
        (CorruptCheckpointError("the header is cut"), "the header is cut"),
    ],
)
def test_read_errors_are_described_by_what_they_mean(err, words):
    assert describe_read_error(err) == words
    assert type(err).__name__ not in words or isinstance(err, CkptkitError)


@pytest.mark.parametrize("output", ["out.onnx", "out.weights.h5"])
def test_template_faults_read_alike_for_every_format_that_takes_one(tmp_path, output):
    import numpy as np

    import ckptkit
    from ckptkit.core.errors import UsageError

    src = tmp_path / "src.safetensors"
    ckptkit.save({"w": np.zeros(2, np.float32)}, src)
    expected = "an ONNX model" if output.endswith(".onnx") else "a Keras model or weights file"
    with pytest.raises(UsageError) as err:
        ckptkit.convert(src, tmp_path / output, options={"template": tmp_path / "nope.model"})
    assert str(err.value) == f"{tmp_path / 'nope.model'}: the --template model does not exist"
    with pytest.raises(UsageError) as err:
        ckptkit.convert(src, tmp_path / output, options={"template": src})
    assert str(err.value) == f"{src}: the --template is a safetensors file, not {expected}"
    assert not list(tmp_path.glob("out*"))
