"""ckptkit diff on the command line: conversions, reports, exit codes and one-line errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import ml_dtypes
import numpy as np
import pytest
from markdown_it import MarkdownIt

import ckptkit
from ckptkit import registry
from ckptkit.core.errors import UnknownFormatError, UnsupportedError
from ckptkit.diffing import schema
from tests.conftest import REPO, assert_one_line_error, realworld_files, run_cli
from tests.helpers import sample_array

ZERO_DRIFT = "max_abs>0,nonfinite_mismatch>0,missing,shape,dtype"
WRITABLE = [f for f in registry.formats() if f.can_write]


def write_pair(tmp_path):
    rng = np.random.default_rng(0)
    a = {
        "model.embed.weight": rng.standard_normal((50, 8)).astype(np.float16),
        "model.layers.0.w": rng.standard_normal((8, 8)).astype(ml_dtypes.bfloat16),
        "model.layers.1.w": rng.standard_normal((8, 8)).astype(np.float32),
        "step": np.array(3, np.int64),
    }
    b = dict(a)
    b["model.layers.1.w"] = a["model.layers.1.w"] + np.float32(0.01)
    del b["step"]
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ckptkit.save(a, pa)
    ckptkit.save({"module." + k: v for k, v in b.items()}, pb)
    return pa, pb


def storable(fmt: registry.Format) -> dict[str, np.ndarray]:
    """One sample tensor of each of these dtypes the format declares it holds.

    Named as Keras names Dense kernels, which every format can hold (a Keras 3 .weights.h5 file
    needs to know each layer's class).
    """
    names = ["float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool", "float8_e4m3fn"]
    held = [name for name in names if name in fmt.dtypes]
    return {f"dense_{i}/kernel": sample_array(name, (4, 6), seed=i) for i, name in enumerate(held)}


@pytest.mark.parametrize("fmt", WRITABLE, ids=[f.name for f in WRITABLE])
def test_a_checkpoint_against_its_conversion_is_zero_drift(tmp_path, fmt):
    src = tmp_path / "src.safetensors"
    ckptkit.save(storable(fmt), src)
    dst = tmp_path / f"converted{fmt.default_extension}"
    ckptkit.convert(src, dst, to_format=fmt.name)
    result = run_cli("diff", src, dst, "--fail-on", ZERO_DRIFT, "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["summary"]["changed"] == 0 and data["summary"]["compared"] == data["a"]["tensors"]
    assert all(t["metrics"]["identical"] == 1.0 for t in data["tensors"])


@pytest.mark.parametrize("path", realworld_files("*"), ids=lambda p: p.name)
def test_real_files_against_their_conversions_are_zero_drift(tmp_path, path):
    try:
        registry.detect(path)
    except UnknownFormatError:
        pytest.skip(f"no reader for {path.name} on this branch")
    with ckptkit.load(path) as ckpt:
        held = {ti.dtype.name for ti in ckpt.tensor_infos()}
    converted = []
    for fmt in WRITABLE:
        dst = tmp_path / f"{path.stem}-converted{fmt.default_extension}"
        try:
            ckptkit.convert(path, dst, to_format=fmt.name)
        except UnsupportedError as err:
            # A refusal has a reason: a dtype the format does not hold, (Keras 3) layers of no known class,
            # or more dimensions than the format holds (GGUF: 4).
            reason = str(err)
            assert not held <= fmt.dtypes or "Keras class" in reason or "holds at most" in reason, (fmt.name, reason)
            continue
        converted.append(fmt.name)
        report = ckptkit.diff(path, dst, fail_on=[ZERO_DRIFT])
        assert report.passed, report.violations[:3]
        assert report.summary()["changed"] == 0
    assert converted, f"no format took {path.name}"


def test_terminal_report_and_exit_codes(tmp_path):
    pa, pb = write_pair(tmp_path)
    result = run_cli("diff", pa, pb)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "matched 3 (3 prefix); only in A: 1, only in B: 0" in result.stdout
    most_drifted = next(i for i, ln in enumerate(lines) if ln.startswith("tensors, most drifted first"))
    assert lines[most_drifted + 2].startswith("model.layers.1.w ")
    assert "\x1b[" not in result.stdout  # no colour when not on a terminal
    failed = run_cli("diff", pa, pb, "--fail-on", "rel_l2>1e-3", "--fail-on", "missing")
    assert failed.code == 1, failed.stderr
    assert "2 threshold violation(s)" in failed.stdout and "step: missing" in failed.stdout
    loosened = run_cli("diff", pa, pb, "--fail-on", "rel_l2>1e-3", "--tolerance", "model.layers.1:rel_l2<0.1")
    assert loosened.code == 0 and "within tolerance" in loosened.stdout


def test_json_validates_and_matches_the_python_api(tmp_path):
    pa, pb = write_pair(tmp_path)
    result = run_cli("diff", pa, pb, "--json", "--depth", "1", "--fail-on", "missing")
    assert result.code == 1
    data = json.loads(result.stdout)
    jsonschema.validate(data, schema(), cls=jsonschema.Draft202012Validator)
    assert data == ckptkit.diff(pa, pb, depth=1, fail_on=["missing"]).to_dict()


def test_markdown_renders_as_tables(tmp_path):
    pa, pb = write_pair(tmp_path)
    result = run_cli("diff", pa, pb, "--markdown", "--fail-on", "rel_l2>1e-3")
    assert result.code == 1
    html = MarkdownIt("commonmark").enable("table").render(result.stdout)
    assert html.count("<table>") == 4  # sizes, layers, tensors, violations
    assert re.search(r"<th[^>]*>max \|Δ\|</th>", html) and re.search(r"<th[^>]*>rel L2</th>", html)
    rows = re.findall(r"<tr>\s*<td><code>([^<]+)</code></td>", html)
    assert rows[:2] == ["model.layers.1", "model.layers.0"]  # layers, most drifted first
    assert len(result.stdout) < 65536


def chromium_console(page) -> list[str]:
    """Console messages Chromium logs while loading ``page`` headless."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed")
    profile = tempfile.mkdtemp(dir=page.parent)  # an empty profile for each run
    proc = subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]


def test_html_report_is_self_contained_and_loads_without_console_errors(tmp_path):
    pa, pb = write_pair(tmp_path)
    page = tmp_path / "report.html"
    result = run_cli("diff", pa, pb, "--html", page, "--fail-on", "rel_l2>1e-3")
    assert result.code == 1
    html = page.read_text()
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html) is None and "@import" not in html
    assert "<svg" in html and html.count("<rect") == 1  # one bar: the only layer that drifted
    assert "<title>model.layers.1: rel L2 " in html
    assert "model.layers.1.w" in html
    # Clicking "rel L2" in the tensor table sorts the most drifted tensor to the top.
    probe = tmp_path / "probe.html"
    probe.write_text(
        html.replace(
            "</body>",
            "<script>var t=document.querySelectorAll('table.sortable')[1];"
            "Array.from(t.tHead.rows[0].cells).find(c=>c.textContent==='rel L2').click();"
            "console.log('first:'+t.tBodies[0].rows[0].cells[0].textContent);</script></body>",
        )
    )
    assert chromium_console(page) == []
    assert any('"first:model.layers.1.w"' in ln for ln in chromium_console(probe))


def test_rename_and_map_options(tmp_path):
    a = {"enc.layer0.w": np.ones(3, np.float32), "head": np.zeros(2, np.float32)}
    b = {"encoder.layers.0.w": np.ones(3, np.float32), "classifier": np.zeros(2, np.float32)}
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ckptkit.save(a, pa)
    ckptkit.save(b, pb)
    mapping = tmp_path / "names.txt"
    mapping.write_text("head classifier\n")
    result = run_cli("diff", pa, pb, "--rename", r"^enc\.layer(\d+)=encoder.layers.\1", "--map", mapping, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["matched_by"] == {"map": 1, "rename": 1}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--fail-on", "rel_l2>>3"], "invalid --fail-on expression"),
        (["--json", "--markdown"], "choose one"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, args, fragment):
    pa, pb = write_pair(tmp_path)
    assert_one_line_error(run_cli("diff", pa, pb, *args, cwd=tmp_path), fragment)


def test_bad_inputs_are_one_line_errors(tmp_path):
    pa, _ = write_pair(tmp_path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert_one_line_error(run_cli("diff", pa, garbage), str(garbage))
    assert_one_line_error(run_cli("diff", tmp_path / "nope.safetensors", pa), "no such file")
    other = tmp_path / "other.safetensors"
    ckptkit.save({"unrelated": np.ones(2)}, other)
    assert_one_line_error(run_cli("diff", pa, other), "no tensor in common")


def test_diff_loads_no_framework(tmp_path):
    pa, pb = write_pair(tmp_path)
    code = (
        "import sys, ckptkit; r = ckptkit.diff(sys.argv[1], sys.argv[2]); r.to_html(); r.to_markdown(); "
        "heavy = {'torch', 'h5py', 'onnx', 'keras', 'tensorflow'} & set(sys.modules); assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code, pa, pb], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_nan_shows_where_it_is_in_every_report(tmp_path):
    a = {f"model.layers.{i}.w": np.arange(1, 2001, dtype=np.float32) * (i + 1) for i in range(3)}
    b = {k: v.copy() for k, v in a.items()}
    b["model.layers.0.w"][5] += 1  # drifts a little
    b["model.layers.2.w"][7] = np.nan  # otherwise unchanged: drift 0, 99.95% identical
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ckptkit.save(a, pa)
    ckptkit.save(b, pb)
    page = tmp_path / "d.html"
    table = run_cli("diff", pa, pb, "--html", page)
    assert table.code == 0, table.stderr
    layer_rows = [ln for ln in table.stdout.splitlines() if ln.startswith("model.layers.")]
    assert layer_rows[0].startswith("model.layers.2 ") and layer_rows[0].rstrip().endswith("B: 1 NaN")
    assert layer_rows[1].rstrip().endswith(" 0")
    md = run_cli("diff", pa, pb, "--markdown").stdout
    assert "| NaN/Inf |" in md and "| B: 1 NaN |" in md
    html = page.read_text()
    assert "NaN/Inf: B: 1 NaN" in html
    assert chromium_console(page) == []
