"""Every writable format: a conversion verifies against the original's manifest, and one flipped
byte inside a tensor is found and the tensor named."""

import json

import numpy as np
import pytest

import ckptkit
from ckptkit import registry
from ckptkit.hashing.manifest import build_manifest
from ckptkit.verify import VerifyOptions, verify
from tests.conftest import FIXTURES, realworld_files

WRITABLE = [f.name for f in registry.formats() if f.can_write]
# Originals written by other software: torch.save, and Keras 3 (whose layer classes let every
# writer, the Keras 3 one included, name the layers).
SOURCES = [FIXTURES / "mlp_fp32.pt", *realworld_files("aimed_digits.weights.h5")]
TIED = FIXTURES / "tied_lm_fp16.pt"  # a head tied to the embedding: two names, one storage


def _writers_for(source) -> list[str]:
    """The writers that keep the source's names and bytes, which a manifest of it needs.

    The Keras 3 writer names each layer's group after its Keras class, which a PyTorch state dict
    does not carry: it takes one only through ``--layout keras`` or ``--template``, which rename
    and transpose tensors, so no manifest of the original could hold for the result (those
    conversions are proved by the outputs Keras computes, in test_keras_layout.py). The legacy
    ``.h5`` writer (``keras-h5``) keeps PyTorch names and bytes and stays in.
    """
    if registry.detect(source).name == "torch":
        return [fmt for fmt in WRITABLE if fmt != "keras"]
    return WRITABLE


CASES = [pytest.param(src, fmt, id=f"{src.name}->{fmt}") for src in SOURCES for fmt in _writers_for(src)]


def _manifest_file(tmp_path, source):
    path = tmp_path / "original.json"
    path.write_text(json.dumps(build_manifest(source).to_dict()))
    return path


def _victim(source) -> str:
    """The largest tensor: seeded or trained floats whose bytes occur once in any file holding them."""
    with ckptkit.load(source) as ckpt:
        return max(ckpt.tensor_infos(), key=lambda ti: ti.nbytes).name


def _convert(folder, fmt, source):
    folder.mkdir()
    dst = folder / f"converted{registry.get(fmt).default_extension}"
    ckptkit.convert(source, dst, to_format=fmt)
    return dst


def _flip_inside(folder, data: bytes) -> None:
    """Flip one byte in the middle of the only place ``data`` is stored, in whichever file holds it."""
    hits = [(p, p.read_bytes().find(data)) for p in sorted(folder.iterdir()) if p.is_file()]
    hits = [(p, at) for p, at in hits if at >= 0]
    assert len(hits) == 1, f"the tensor's bytes are stored {len(hits)} times in {folder}"
    path, at = hits[0]
    raw = bytearray(path.read_bytes())
    raw[at + len(data) // 2] ^= 0x40
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(("source", "fmt"), CASES)
def test_conversion_verifies_against_the_original_manifest(tmp_path, source, fmt):
    manifest = _manifest_file(tmp_path, source)
    dst = _convert(tmp_path / "out", fmt, source)
    report = verify([dst], VerifyOptions(manifest=manifest))
    assert report.exit_code == 0, [f.to_dict() for f in report.findings]
    assert build_manifest(dst).root == json.loads(manifest.read_text())["root"]


@pytest.mark.parametrize(("source", "fmt"), CASES)
def test_one_flipped_byte_is_found_and_the_tensor_named(tmp_path, source, fmt):
    manifest = _manifest_file(tmp_path, source)
    dst = _convert(tmp_path / "out", fmt, source)
    victim = _victim(source)
    with ckptkit.load(dst) as ckpt:
        data = np.ascontiguousarray(ckpt.read_tensor(victim)).tobytes()
    _flip_inside(dst.parent, data)
    report = verify([dst], VerifyOptions(manifest=manifest))
    assert report.exit_code == 1
    assert victim in {f.tensor for f in report.findings if f.severity == "error"}
    assert {f.tensor for f in report.findings} <= {victim, ""}


@pytest.mark.parametrize("fmt", _writers_for(TIED))
def test_tied_weights_keep_their_hashes_through_conversion(tmp_path, fmt):
    manifest = tmp_path / "tied.json"
    original = build_manifest(TIED)
    manifest.write_text(json.dumps(original.to_dict()))
    dst = _convert(tmp_path / "out", fmt, TIED)
    report = verify([dst], VerifyOptions(manifest=manifest))
    assert report.exit_code == 0, [f.to_dict() for f in report.findings]
    assert build_manifest(dst).root == original.root
