import argparse
import subprocess
import sys
import zipfile

import pytest

import ckptkit
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.hashing.manifest import build_manifest
from ckptkit.verify import VerifyOptions, verify
from tests.conftest import FIXTURES, realworld_files
from tests.pickle_payloads import PAYLOADS, PLAIN_LOADER, legacy_with, torch_zip_with

PT = FIXTURES / "mlp_fp32.pt"


def _found(report, severity=None):
    return sorted((f.check, f.tensor) for f in report.findings if severity in (None, f.severity))


@pytest.mark.parametrize("name", [*sorted(p.name for p in FIXTURES.glob("*.pt")), "training_mlp.ckpt"])
def test_fixtures_written_by_torch_pass(name):
    report = verify([FIXTURES / name])
    assert _found(report, "error") == [], report.findings
    assert "torch" in report.targets[0].groups


def test_torch_and_safetensors_of_the_same_tensors_hash_alike():
    for stem in ("mlp_fp32", "cnn_bn_bf16"):
        pt, st = build_manifest(FIXTURES / f"{stem}.pt"), build_manifest(FIXTURES / f"{stem}.safetensors")
        assert pt.root == st.root, stem
        assert {n: e.sha256 for n, e in pt.tensors.items()} == {n: e.sha256 for n, e in st.tensors.items()}
    # The library's safetensors file keeps only one name of a tied pair; torch keeps both.
    pt, st = build_manifest(FIXTURES / "tied_lm_fp16.pt"), build_manifest(FIXTURES / "tied_lm_fp16.safetensors")
    ties = {n: e.alias_of for n, e in pt.tensors.items() if e.alias_of}
    assert len(ties) == 1 and set(pt.tensors) - set(ties) == set(st.tensors)
    assert all(pt.tensors[n] == st.tensors[n] for n in st.tensors)


def test_payloads_are_real_under_plain_pickle(tmp_path):
    """Each executable payload does run when the file is loaded the way torch.load(weights_only=False) does."""
    args = []
    for kind in PAYLOADS:
        marker = tmp_path / f"{kind}.ran"
        args += [torch_zip_with(PT, tmp_path / f"{kind}.pt", PAYLOADS[kind].ops(marker)), marker]
    subprocess.run([sys.executable, "-c", PLAIN_LOADER, *map(str, args)], capture_output=True, timeout=60, check=True)
    ran = {kind for kind in PAYLOADS if (tmp_path / f"{kind}.ran").exists()}
    assert ran == {kind for kind, p in PAYLOADS.items() if p.runs}


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_each_payload_is_reported_by_name_and_never_run(tmp_path, kind):
    payload = PAYLOADS[kind]
    marker = tmp_path / "ran"
    path = torch_zip_with(PT, tmp_path / "evil.pt", payload.ops(marker))
    report = verify([path], VerifyOptions(strict=True))
    named = {f.message for f in report.findings if f.check.startswith("pickle.")}
    for module, name in payload.globals:
        assert any(f"{module}.{name}" in m for m in named), (module, name, named)
    assert report.exit_code == 1
    if payload.runs:
        assert any(f.severity == "error" for f in report.findings if f.check.startswith("pickle."))
    assert not marker.exists()
    assert not hasattr(argparse.Namespace, "ckptkit_pwned")


def test_cli_names_the_refused_global_and_exits_1(tmp_path, cli):
    marker = tmp_path / "ran"
    path = torch_zip_with(PT, tmp_path / "evil.pt", PAYLOADS["os.system"].ops(marker))
    r = cli("verify", path)
    assert r.code == 1 and "pickle.call" in r.stdout and "os.system" in r.stdout
    assert not marker.exists()


def test_a_flipped_byte_fails_the_crc_and_names_the_tensor(tmp_path):
    with ckptkit.load(PT) as ckpt:
        extent = ckpt.raw_extent("fc2.weight")
    raw = bytearray(PT.read_bytes())
    raw[extent.offset + 100] ^= 1
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(raw))
    report = verify([path])
    assert _found(report) == [("torch.crc", "fc2.weight")] and report.exit_code == 1


def test_a_truncated_zip_names_the_tensors_lost(tmp_path):
    with ckptkit.load(PT) as ckpt:
        cut = ckpt.raw_extent("fc2.weight").offset + 10
        lost = {n for n in ckpt.names() if ckpt.raw_extent(n).offset + 10 >= cut}
    path = tmp_path / "cut.pt"
    path.write_bytes(PT.read_bytes()[:cut])
    report = verify([path])
    assert ("torch.zip", "") in _found(report, "error")
    assert {t for c, t in _found(report, "error") if c == "torch.truncated"} == {"fc2.weight"}
    assert lost - {"fc2.weight"} <= {t for c, t in _found(report, "error") if c == "torch.record"}
    assert report.exit_code == 1


def test_a_damaged_local_header_is_found_by_verify_in_the_reader_s_words(tmp_path):
    """Reading refuses the record whose local header is gone; verify names it, and checks the rest."""
    with zipfile.ZipFile(PT) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/data/1"))
    raw = bytearray(PT.read_bytes())
    raw[info.header_offset] ^= 0xFF  # the header's signature
    path = tmp_path / "headless.pt"
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError) as err, ckptkit.load(path) as ckpt:
        ckpt.read_tensor("fc1.bias")
    expected = f"record data/1: no local file header at byte {info.header_offset}"
    assert err.value.message.endswith(expected)
    report = verify([path])
    zip_findings = [f.message for f in report.findings if f.check == "torch.zip"]
    assert (
        len(zip_findings) == 1
        and f"{info.filename}: no local file header at byte {info.header_offset}" in (zip_findings[0])
    )
    assert ("torch.record", "fc1.bias") in _found(report, "error")
    assert ("torch.record", "") not in _found(report, "error")  # the records after it are still checked


def test_missing_records(tmp_path):
    path = tmp_path / "holes.pt"
    with zipfile.ZipFile(PT) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            if not info.filename.endswith(("/version", "/data/1")):
                out.writestr(info.filename, src.read(info))
    report = verify([path])
    assert ("torch.record", "") in _found(report, "error")
    assert ("torch.record", "fc1.bias") in _found(report, "error")


@pytest.mark.parametrize("path", realworld_files("*.pth"), ids=lambda p: p.name)
def test_real_torch_files_pass(path):
    assert _found(verify([path]), "error") == []


def test_payload_in_a_legacy_file(tmp_path):
    marker = tmp_path / "ran"
    path = legacy_with(FIXTURES / "mlp_fp32_legacy.pt", tmp_path / "evil_legacy.pt", PAYLOADS["os.system"].ops(marker))
    with ckptkit.load(FIXTURES / "mlp_fp32_legacy.pt") as clean:
        assert verify([FIXTURES / "mlp_fp32_legacy.pt"]).findings == [] and len(clean) == 4
    report = verify([path])
    assert ("pickle.call", "") in _found(report, "error") and "os.system" in report.findings[0].message
    assert not marker.exists()


def test_sharded_torch_bins(tmp_path):
    import json

    with ckptkit.load(PT) as ckpt:
        arrays = {n: ckpt.read_tensor(n) for n in ckpt.names()}
    names = sorted(arrays)
    layout = {"pytorch_model-00001-of-00002.bin": names[:2], "pytorch_model-00002-of-00002.bin": names[2:]}
    for shard, members in layout.items():
        ckptkit.save({n: arrays[n] for n in members}, tmp_path / shard, "torch")
    weight_map = {n: shard for shard, members in layout.items() for n in members}
    index = {"metadata": {"total_size": sum(a.nbytes for a in arrays.values())}, "weight_map": weight_map}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert verify([tmp_path]).findings == []
    assert build_manifest(tmp_path).root == build_manifest(PT).root
    weight_map[names[0]] = "pytorch_model-00002-of-00002.bin"
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert _found(verify([tmp_path]), "error") == [("index.tensor-missing", names[0])]
