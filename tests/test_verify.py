import json
import os
import struct
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import ckptkit
from ckptkit.core.errors import CkptkitError, UnknownFormatError, UsageError
from ckptkit.verify import VerifyOptions, verify
from tests.conftest import FIXTURES, assert_one_line_error, realworld_files

ST = FIXTURES / "mlp_fp32.safetensors"


def _checks(report, severity=None):
    return sorted((f.check, f.tensor) for f in report.findings if severity in (None, f.severity))


def _handmade(path, header, data: bytes, raw_header: bytes | None = None):
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_a_clean_file_passes():
    report = verify([ST])
    assert report.exit_code == 0 and report.findings == []
    t = report.targets[0]
    assert (t.format, t.tensors, t.bytes) == ("safetensors", 4, 4 * (16 * 32 + 32 + 32 * 8 + 8))
    assert t.groups == ["file", "safetensors", "tensor"]


@pytest.mark.parametrize(
    ("header", "data", "expected"),
    [
        ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}, 12, [("safetensors.overlap", "b")]),
        ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 12, 20)}, 20, [("safetensors.hole", "b")]),
        ({"a": _entry("F32", [2], 4, 12)}, 12, [("safetensors.hole", "a")]),
        ({"a": _entry("F32", [2], 0, 8)}, 11, [("safetensors.hole", "")]),
        ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [4], 8, 24)}, 16, [("safetensors.truncated", "b")]),
        ({"a": _entry("F32", [2], 0, 4)}, 4, [("safetensors.entry", "a")]),
        ({"a": _entry("F32", [2], 0, 8), "__metadata__": {"k": 1, "ok": "x"}}, 8, [("safetensors.metadata", "")]),
        ({"__metadata__": ["x"]}, 0, [("safetensors.metadata", "")]),
    ],
    ids=[
        "overlap",
        "hole-between",
        "hole-at-start",
        "trailing-bytes",
        "truncated",
        "bad-offsets",
        "int-metadata",
        "metadata-not-object",
    ],
)
def test_safetensors_structure_faults_are_each_named(tmp_path, header, data, expected):
    path = _handmade(tmp_path / "x.safetensors", header, b"\x01" * data)
    report = verify([path])
    assert _checks(report, "error") == expected
    assert report.exit_code == 1


def test_duplicate_keys_are_each_reported(tmp_path):
    text = (
        b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        b'"__metadata__":{"k":"1","k":"2"}}'
    )
    path = _handmade(tmp_path / "dup.safetensors", None, b"\x01", raw_header=text)
    assert _checks(verify([path]), "error") == [("safetensors.duplicate-key", "a"), ("safetensors.duplicate-key", "k")]


@pytest.mark.parametrize(
    ("raw", "check"),
    [
        (b"{not json}", "safetensors.header-json"),
        (b'{"a": "\xff"}', "safetensors.header-json"),
        (b'{"a": 1}   ', "safetensors.entry"),
    ],
)
def test_bad_header_text(tmp_path, raw, check):
    path = _handmade(tmp_path / "x.safetensors", None, b"", raw_header=raw)
    assert _checks(verify([path]), "error")[0][0] == check


def test_header_length_past_the_end(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b'{"a": {}}')
    assert _checks(verify([path])) == [("safetensors.header-length", "")]


def test_a_truncated_file_names_the_tensor_cut_off(tmp_path):
    arrays = {"a": np.arange(1000, dtype=np.float32), "b": np.arange(500, dtype=np.int16), "c": np.ones(10, np.uint8)}
    path = tmp_path / "t.safetensors"
    ckptkit.save(arrays, path)
    with ckptkit.load(path) as ckpt:
        last = max(ckpt.names(), key=lambda n: ckpt.raw_extent(n).offset)
    path.write_bytes(path.read_bytes()[:-3])
    report = verify([path])
    assert ("safetensors.truncated", last) in _checks(report, "error")
    assert report.exit_code == 1


def test_git_lfs_pointer_and_empty_file_are_findings(tmp_path):
    pointer = tmp_path / "model.safetensors"
    pointer.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n"
    )
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    report = verify([pointer, empty])
    assert [[f.check for f in t.findings] for t in report.targets] == [["file.lfs-pointer"], ["file.empty"]]
    assert "git lfs pull" in report.targets[0].findings[0].message
    assert "12345" in report.targets[0].findings[0].message
    assert report.exit_code == 1


def test_nan_inf_are_counted_and_fail_only_with_no_nan(tmp_path):
    path = tmp_path / "n.safetensors"
    ckptkit.save({"w": np.array([1, np.nan, np.inf, -np.inf, np.nan], np.float16), "ok": np.ones(3, np.float32)}, path)
    report = verify([path])
    assert report.exit_code == 0 and report.findings == []
    (nf,) = report.targets[0].nonfinite
    assert (nf.tensor, nf.nan, nf.inf) == ("w", 2, 2)
    strict_nan = verify([path], VerifyOptions(no_nan=True))
    assert _checks(strict_nan) == [("tensor.nonfinite", "w")] and strict_nan.exit_code == 1


def test_all_zero_tensor_is_a_warning_failing_only_with_strict(tmp_path):
    path = tmp_path / "z.safetensors"
    ckptkit.save({"z": np.array([0.0, -0.0], np.float32), "empty": np.zeros((0,), np.float32), "one": np.ones(1)}, path)
    report = verify([path])
    assert _checks(report, "warning") == [("tensor.zero", "z")] and report.exit_code == 0
    assert verify([path], VerifyOptions(strict=True)).exit_code == 1


def test_manifest_passes_on_a_copy_in_another_layout_and_names_changes(tmp_path):
    rng = np.random.default_rng(5)
    arrays = {n: rng.standard_normal(s).astype(np.float32) for n, s in [("a", (4, 4)), ("b", (3,)), ("c", (2, 2))]}
    original = tmp_path / "orig.safetensors"
    ckptkit.save(arrays, original)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(ckptkit.hashing.manifest.build_manifest(original).to_dict()))
    copy = tmp_path / "copy.safetensors"
    ckptkit.save({"c": arrays["c"], "a": arrays["a"], "b": arrays["b"]}, copy, metadata={"x": "y"})
    assert verify([copy], VerifyOptions(manifest=manifest)).exit_code == 0
    changed = tmp_path / "changed.safetensors"
    ckptkit.save({"a": arrays["a"] + 1, "b": arrays["b"], "d": arrays["c"]}, changed)
    report = verify([changed], VerifyOptions(manifest=manifest))
    assert _checks(report) == [("manifest.extra", "d"), ("manifest.hash", "a"), ("manifest.missing", "c")]


def test_schema_from_inspect_json(tmp_path, cli):
    schema = tmp_path / "schema.json"
    schema.write_text(cli("inspect", ST, "--json").stdout)
    assert verify([ST], VerifyOptions(schema=schema)).exit_code == 0
    with ckptkit.load(ST) as ckpt:
        arrays = {n: np.asarray(ckpt.read_tensor(n)) for n in ckpt.names()}
    arrays["fc1.bias"] = arrays["fc1.bias"].astype(np.float16)
    arrays["fc2.weight"] = arrays["fc2.weight"][:4]
    arrays["extra"] = np.ones(1, np.float32)
    del arrays["fc2.bias"]
    other = tmp_path / "other.safetensors"
    ckptkit.save(arrays, other)
    report = verify([other], VerifyOptions(schema=schema))
    assert _checks(report) == [
        ("schema.dtype", "fc1.bias"),
        ("schema.extra", "extra"),
        ("schema.missing", "fc2.bias"),
        ("schema.shape", "fc2.weight"),
    ]


def test_cannot_run_raises(tmp_path):
    with pytest.raises(CkptkitError, match="no such file"):
        verify([tmp_path / "missing.safetensors"])
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UnknownFormatError):
        verify([junk])
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something else"}')
    with pytest.raises(UsageError, match="manifest"):
        verify([ST], VerifyOptions(manifest=bad))
    with pytest.raises(UsageError, match="schema"):
        verify([ST], VerifyOptions(schema=bad))
    with pytest.raises(UsageError, match="one path"):
        verify([ST, ST], VerifyOptions(schema=bad))


def test_cli_exit_codes_json_and_junit(tmp_path, cli):
    overlapping = {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}
    broken = _handmade(tmp_path / "b.safetensors", overlapping, b"\1" * 12)
    junit = tmp_path / "report.xml"
    r = cli("verify", ST, broken, "--json", "--junit", junit)
    assert r.code == 1, r.stderr
    data = json.loads(r.stdout)
    assert data["schema"] == "ckptkit.verify/1" and data["ok"] is False
    assert [t["ok"] for t in data["targets"]] == [True, False]
    found = [(f["check"], f["tensor"], f["file"]) for f in data["findings"]]
    assert found == [("safetensors.overlap", "b", str(broken))]
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("6", "1")
    failure = root.find("./testsuite[2]/testcase[@name='safetensors']/failure")
    assert failure is not None and failure.get("type") == "safetensors.overlap" and "'b'" in failure.text
    clean = cli("verify", ST)
    assert clean.code == 0 and clean.stdout.startswith("ok") and "tensor" in clean.stdout
    text = cli("verify", broken)
    assert text.code == 1 and "FAIL" in text.stdout and "safetensors.overlap" in text.stdout
    assert_one_line_error(cli("verify", tmp_path / "nope.pt"), "nope.pt", "no such file")
    junk = tmp_path / "junk.xyz"
    junk.write_bytes(b"\x00" * 64)
    assert_one_line_error(cli("verify", junk), "junk.xyz", "not a checkpoint")


def test_hostile_names_do_not_reach_the_terminal(tmp_path, cli):
    path = tmp_path / "evil.safetensors"
    ckptkit.save({"bad\x1b[31mname": np.zeros(2, np.float32)}, path)
    r = cli("verify", path)
    assert "\x1b" not in r.stdout and "\\x1b" in r.stdout
    junit = tmp_path / "r.xml"
    cli("verify", path, "--junit", junit, "--strict")
    assert "\\x1b" in ET.parse(junit).getroot().find(".//failure").text


@pytest.mark.parametrize("path", realworld_files("*.safetensors"), ids=lambda p: p.name)
def test_real_files_pass(path):
    report = verify([path])
    assert [f for f in report.findings if f.severity == "error"] == []


def test_the_input_check_is_one_error_and_one_wording_for_every_command(tmp_path):
    from ckptkit import registry
    from ckptkit.core.errors import EmptyFileError, LfsPointerError, NoSuchFileError, NotAFileError

    pointer = tmp_path / "model.safetensors"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 99\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path, error_class, check in (
        (pointer, LfsPointerError, "file.lfs-pointer"),
        (empty, EmptyFileError, "file.empty"),
    ):
        with pytest.raises(error_class) as refused:
            registry.check_input(path)
        with pytest.raises(error_class):
            ckptkit.load(path)
        [finding] = verify([path]).findings  # verify reports it instead of stopping
        assert (finding.check, finding.message, finding.file) == (check, refused.value.message, str(path))
    assert "99 bytes with sha256 " + "ab" * 32 in verify([pointer]).findings[0].message
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for missing_or_odd, error_class in ((tmp_path / "nope.pt", NoSuchFileError), (fifo, NotAFileError)):
        with pytest.raises(error_class) as refused:
            ckptkit.load(missing_or_odd)
        assert refused.value.path == str(missing_or_odd)
        with pytest.raises(error_class):
            verify([missing_or_odd])  # verify cannot run at all
