import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptkit
from tests.conftest import FIXTURES, REPO, assert_one_line_error

ST = FIXTURES / "mlp_fp32.safetensors"


def test_help_and_import_load_no_framework():
    code = (
        "import sys, ckptkit, ckptkit.cli\n"
        "from click.testing import CliRunner\n"
        "r = CliRunner().invoke(ckptkit.cli.cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(ckptkit.cli.cli, ['formats'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'h5py', 'onnx', 'onnxruntime', 'keras', 'tensorflow', 'safetensors')]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_a_subcommand_loads_only_what_it_uses():
    # Start-up time is most of a small job; the hash command must not load the converter, the
    # diff engine or rich, which it never uses.
    code = (
        "import sys, ckptkit.cli\n"
        "sys.argv = ['ckptkit', 'hash', sys.argv[1]]\n"
        "try:\n"
        "    ckptkit.cli.main()\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "unused = ('ckptkit.api', 'ckptkit.diffing', 'ckptkit.cli._convert', 'rich')\n"
        "loaded = sorted(m for m in unused if m in sys.modules)\n"
        "print(loaded, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ST)], capture_output=True, text=True, cwd=REPO, check=True)
    assert json.loads(out.stdout)["tensor_count"] > 0
    assert out.stderr.strip() == "[]"


def test_version_and_lazy_public_names():
    out = subprocess.run([sys.executable, "-m", "ckptkit", "--version"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.startswith("ckptkit, version ")
    assert ckptkit.save is ckptkit.api.save and ckptkit.diff is ckptkit.api.diff
    assert set(ckptkit.__all__) <= set(dir(ckptkit))
    with pytest.raises(AttributeError):
        ckptkit.no_such_name  # noqa: B018


def test_formats_lists_safetensors_as_read_write(cli):
    r = cli("formats", "--json")
    assert r.code == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["safetensors"]["read"] and rows["safetensors"]["write"]
    assert ".safetensors" in rows["safetensors"]["extensions"]
    assert "bfloat16" in rows["safetensors"]["dtypes"] and "int4" not in rows["safetensors"]["dtypes"]
    assert rows["onnx"]["dtypes"][:2] == ["float64", "float32"]  # in ckptkit's dtype table order


def test_inspect_json_matches_the_file(cli):
    r = cli("inspect", ST, "--json")
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["schema"] == "ckptkit.inspect/1"
    assert report["format"] == "safetensors"
    assert report["metadata"] == {"format": "pt", "model": "mlp"}
    shapes = {t["name"]: t["shape"] for t in report["tensors"]}
    assert shapes == {"fc1.weight": [32, 16], "fc1.bias": [32], "fc2.weight": [8, 32], "fc2.bias": [8]}
    assert report["parameters"] == 16 * 32 + 32 + 32 * 8 + 8
    assert report["bytes"] == report["parameters"] * 4


def test_inspect_stats_are_the_numpy_values(cli):
    r = cli("inspect", ST, "--json", "--stats")
    report = json.loads(r.stdout)
    with ckptkit.load(ST) as ckpt:
        w = ckpt.read_tensor("fc1.weight").astype(np.float64)
    stats = next(t["stats"] for t in report["tensors"] if t["name"] == "fc1.weight")
    assert stats["min"] == pytest.approx(w.min())
    assert stats["max"] == pytest.approx(w.max())
    assert stats["mean"] == pytest.approx(w.mean())
    assert stats["std"] == pytest.approx(w.std())
    assert stats["nan"] == 0 and stats["inf"] == 0


def test_inspect_text_and_tree(cli):
    r = cli("inspect", ST)
    assert r.code == 0
    assert "fc1.weight" in r.stdout and "[32, 16]" in r.stdout and "float32" in r.stdout
    r = cli("inspect", ST, "--tree")
    assert r.code == 0
    assert "fc1" in r.stdout and "(544 parameters)" in r.stdout


def test_convert_refuses_to_overwrite_then_forces(cli, tmp_path):
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"precious")
    r = cli("convert", ST, dst)
    assert_one_line_error(r, str(dst), "--force")
    assert dst.read_bytes() == b"precious"
    r = cli("convert", ST, dst, "--force")
    assert r.code == 0, r.stderr
    assert "verified" in r.stdout
    with ckptkit.load(dst) as a, ckptkit.load(ST) as b:
        assert a.names() == b.names()


def test_convert_cast_and_receipt(cli, tmp_path):
    dst = tmp_path / "bf16.safetensors"
    r = cli("convert", ST, dst, "--dtype", "bf16", "--json")
    assert r.code == 0, r.stderr
    receipt = json.loads(r.stdout)
    assert receipt["cast"]["fc1.weight"] == "float32 -> bfloat16"
    assert receipt["verified"] is True
    with ckptkit.load(dst) as out, ckptkit.load(ST) as src:
        got = out.read_tensor("fc1.weight")
        assert str(got.dtype) == "bfloat16"
        assert np.array_equal(got, src.read_tensor("fc1.weight").astype(got.dtype))


def test_convert_select_exclude_and_strip_prefix(cli, tmp_path):
    src = tmp_path / "wrapped.safetensors"
    ckptkit.save(
        {"module.enc.w": np.ones(2, np.float32), "module.enc.b": np.zeros(2, np.float32), "module.dec.w": np.ones(3)},
        src,
    )
    dst = tmp_path / "enc.safetensors"
    r = cli("convert", src, dst, "--select", "module.enc.*", "--exclude", "*.b", "--strip-prefix", "module.", "--json")
    assert r.code == 0, r.stderr
    receipt = json.loads(r.stdout)
    assert receipt["renamed"] == {"enc.w": "module.enc.w"}
    assert sorted(receipt["dropped"]) == ["module.dec.w", "module.enc.b"]
    with ckptkit.load(dst) as out:
        assert out.names() == ["enc.w"]


def test_select_subtree_drops_its_prefix(tmp_path):
    src = tmp_path / "ckpt.safetensors"
    ckptkit.save({"state_dict.a": np.ones(2), "state_dict.b.c": np.ones(1), "other": np.ones(1)}, src)
    receipt = ckptkit.convert(src, tmp_path / "sd.safetensors", select=["state_dict"])
    assert receipt.renamed == {"a": "state_dict.a", "b.c": "state_dict.b.c"}
    with ckptkit.load(tmp_path / "sd.safetensors") as out:
        assert sorted(out.names()) == ["a", "b.c"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "empty"),
        (b"hello, this is not a checkpoint at all\n", "not a checkpoint"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
    ],
)
def test_bad_inputs_give_one_line_and_exit_2(cli, tmp_path, content, fragment):
    src = tmp_path / "model.safetensors"
    src.write_bytes(content)
    dst = tmp_path / "out.safetensors"
    for args in (("inspect", src), ("convert", src, dst)):
        assert_one_line_error(cli(*args), str(src), fragment)
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_truncated_file_leaves_no_output(cli, tmp_path):
    src = tmp_path / "cut.safetensors"
    src.write_bytes(ST.read_bytes()[:-100])
    dst = tmp_path / "out.safetensors"
    assert_one_line_error(cli("convert", src, dst), str(src), "truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.safetensors"]


def test_missing_input_and_unknown_output_extension(cli, tmp_path):
    assert_one_line_error(cli("inspect", tmp_path / "nope.pt"), "nope.pt", "no such file")
    assert_one_line_error(cli("convert", ST, tmp_path / "out.xyz"), "--to")


def test_usage_errors_exit_2(cli):
    r = cli("convert", ST)
    assert r.code == 2
    assert "Traceback" not in r.stderr


def test_writer_option_of_another_format_is_refused(tmp_path):
    with pytest.raises(ckptkit.CkptkitError, match="cannot be used when writing safetensors"):
        ckptkit.convert(ST, tmp_path / "o.safetensors", options={"template": "x.onnx"})


def test_destination_ending_in_slash_is_a_folder_created_when_missing(tmp_path, cli):
    torch = pytest.importorskip("torch")
    src = tmp_path / "m.pt"
    torch.save({f"layer{i}.weight": torch.full((512, 512), float(i)) for i in range(6)}, src)
    result = cli("convert", src, f"{tmp_path}/out/", "--to", "safetensors", "--shard-size", "3MB")
    assert result.code == 0, result.stderr
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == [*(f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)), "model.safetensors.index.json"]
    assert not list(tmp_path.glob("out.*")) and not list(tmp_path.glob("out-*"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {f"layer{i}.weight" for i in range(6)}

    # A write that fails leaves no folder behind: complex128 has no safetensors dtype.
    bad = tmp_path / "c.pt"
    torch.save({"z": torch.zeros(2, dtype=torch.complex128)}, bad)
    failed = cli("convert", bad, f"{tmp_path}/new/deeper/", "--to", "safetensors")
    assert failed.code == 2 and "complex128" in failed.stderr
    assert not (tmp_path / "new").exists()
    file_named = cli("convert", src, f"{src}/", "--to", "safetensors")
    assert file_named.code == 2 and "names a folder" in file_named.stderr


def test_an_internal_error_says_so_without_a_class_name(capsys):
    from ckptkit.cli._errors import report_error

    assert report_error(KeyError("fc1.weight")) == 2
    assert report_error(AssertionError()) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("ckptkit: error: internal error: 'fc1.weight' (a bug in ckptkit: please report it")
    assert lines[1].startswith("ckptkit: error: internal error (a bug in ckptkit") and "CKPTKIT_DEBUG=1" in lines[1]
    assert "KeyError" not in lines[0] and "AssertionError" not in lines[1]


@pytest.fixture
def torch_opens(monkeypatch):
    """Every path a PyTorch file is opened from (each open parses its pickle and zip directory)."""
    from ckptkit.formats import torch as torch_format

    opened = []

    class CountedTorchCheckpoint(torch_format.TorchCheckpoint):
        def __init__(self, path, *args, **kwargs):
            opened.append(Path(path).name)
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(torch_format, "TorchCheckpoint", CountedTorchCheckpoint)
    return opened


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("convert", "{src}", "{tmp}/out.safetensors"), id="convert"),
        pytest.param(("convert", "{src}", "{tmp}/out.safetensors", "--no-verify", "--dtype", "float16"), id="cast"),
        pytest.param(("inspect", "{src}", "--stats"), id="inspect"),
        pytest.param(("hash", "{src}"), id="hash"),
        pytest.param(("verify", "{src}"), id="verify"),
        pytest.param(("diff", "{src}", "{tmp}/other.pt"), id="diff"),
    ],
)
def test_every_command_opens_its_source_once(tmp_path, torch_opens, args):
    from click.testing import CliRunner

    from ckptkit.cli import cli as ckptkit_cli

    src = tmp_path / "model.pt"
    src.write_bytes((FIXTURES / "mlp_fp32.pt").read_bytes())
    (tmp_path / "other.pt").write_bytes(src.read_bytes())
    argv = [a.format(src=src, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(ckptkit_cli, argv)
    assert result.exit_code == 0, result.output
    assert torch_opens.count("model.pt") == 1
    assert torch_opens.count("other.pt") == (1 if args[0] == "diff" else 0)
