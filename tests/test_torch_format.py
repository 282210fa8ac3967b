"""The PyTorch format: files torch.save wrote read bit-exactly, files ckptkit wrote loaded by torch."""

from __future__ import annotations

import argparse
import json
import os
import pickletools
import shutil
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.utils.serialization

import ckptkit
from ckptkit.core.dtypes import DTYPES
from ckptkit.core.errors import CorruptCheckpointError, UnsafeCheckpointError, UnsupportedError
from ckptkit.core.model import MemoryCheckpoint
from ckptkit.core.torch_interop import numpy_to_torch, torch_to_numpy
from ckptkit.formats.torch import FORMAT as TORCH_FORMAT
from ckptkit.formats.torch import scan_findings, zipwriter
from ckptkit.formats.torch.writer import NOT_IN_TORCH
from ckptkit.io.atomic import AtomicOutput
from ckptkit.registry import WriteContext, get, open_checkpoint
from tests.conftest import FIXTURES, realworld_files
from tests.helpers import assert_same_tensors, sample_array, write_read

TORCH_DTYPES = [d.name for d in DTYPES if hasattr(torch, d.name) and d.name not in NOT_IN_TORCH]
SAVERS = {
    "zip": lambda obj, path: torch.save(obj, path),
    "legacy": lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
}


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_matches_torch(ckpt, expected: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``expected`` is in ``ckpt`` (as a tensor or alias) with torch's dtype, shape and bytes."""
    assert set(ckpt.names()) | set(ckpt.aliases) == set(expected)
    for name, t in expected.items():
        got = ckpt.read_tensor(ckpt.aliases.get(name, name))
        assert got.dtype == torch_to_numpy(t).dtype, name
        assert got.shape == tuple(t.shape), name
        assert np.ascontiguousarray(got).tobytes() == tensor_bytes(t), name


def torch_flat(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a torch object tree, named the way ckptkit names them."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix or "tensor"] = obj
        return out
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, (list, tuple)):
        items = list(enumerate(obj))
    elif hasattr(obj, "__dict__"):
        items = list(vars(obj).items())
    else:
        return out
    for key, value in items:
        out.update(torch_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def write_with_ckptkit(ckpt, path: Path) -> list[str]:
    with AtomicOutput(path) as out:
        ctx = WriteContext(out)
        get("torch").write(ckpt, ctx)
    return ctx.notes


def every_dtype_state_dict() -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for i, name in enumerate(TORCH_DTYPES):
        sd[f"{name}.w"] = numpy_to_torch(sample_array(name, (4, 3), seed=i))
        sd[f"{name}.scalar"] = numpy_to_torch(sample_array(name, (), seed=i))
        sd[f"{name}.empty"] = numpy_to_torch(sample_array(name, (0, 2), seed=i))
    return sd


# --- Reading files torch wrote -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_reads_every_dtype_bit_exactly(tmp_path, kind):
    sd = every_dtype_state_dict()
    path = tmp_path / "all.pt"
    SAVERS[kind](sd, path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.format_name == "torch"
        assert ckpt.metadata == {"torch:format": kind}
        assert ckpt.names() == list(sd)
        assert_matches_torch(ckpt, sd)
        data = path.read_bytes()
        for name, t in sd.items():
            extent = ckpt.raw_extent(name)
            assert extent is not None and extent.nbytes == t.numel() * t.element_size()
            assert data[extent.offset : extent.offset + extent.nbytes] == tensor_bytes(t)


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_views_with_strides_and_storage_offsets(tmp_path, kind):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    sd = {
        "base": base,
        "transposed": base.t(),
        "fortran": torch.arange(24, dtype=torch.int64).reshape(4, 3, 2).permute(2, 1, 0),
        "sliced": base[2:5, 3:7],
        "rows": base[3:],
        "strided": base[::2, ::3],
        "expanded": torch.arange(3.0).reshape(3, 1).expand(3, 4),
        "again": base,
    }
    path = tmp_path / "views.pt"
    SAVERS[kind](sd, path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.aliases == {"again": "base"}
        assert_matches_torch(ckpt, sd)
        assert ckpt.raw_extent("transposed") is None
        assert ckpt.raw_extent("sliced") is None
        rows = ckpt.raw_extent("rows")  # contiguous, but starts 30 elements into the storage
        assert rows is not None and rows.nbytes == 30 * 4
        assert rows.offset == ckpt.raw_extent("base").offset + 30 * 4
        assert ckpt.info("rows").location.endswith("+120")


def test_realworld_fortran_tensor_is_read_in_c_order():
    files = realworld_files("candle_fortran_tensor_3d.pth")
    if not files:
        pytest.skip("../shared/realworld is absent")
    with open_checkpoint(files[0]) as ckpt:
        expected = torch.load(files[0], weights_only=True)
        assert not expected["tensor_fortran"].is_contiguous()
        assert_matches_torch(ckpt, expected)


@pytest.mark.parametrize("path", realworld_files("*.pth"), ids=lambda p: p.name)
def test_realworld_files_match_torch_load(path):
    expected = torch_flat(torch.load(path, weights_only=True, map_location="cpu"))
    with open_checkpoint(path) as ckpt:
        assert ckpt.format_name == "torch"
        assert_matches_torch(ckpt, expected)


def test_realworld_bare_tensor_is_named_tensor():
    files = realworld_files("taehv_test_latents_wan.pth")
    if not files:
        pytest.skip("../shared/realworld is absent")
    with open_checkpoint(files[0]) as ckpt:
        assert ckpt.names() == ["tensor"]
        assert ckpt.metadata["torch:root"] == "tensor"
        assert ckpt.info("tensor").dtype.name == "bfloat16"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.pt")), ids=lambda p: p.name)
def test_fixtures_match_torch_load(path):
    expected = torch.load(path, weights_only=True)
    with open_checkpoint(path) as ckpt:
        assert_matches_torch(ckpt, expected)
        if path.name.startswith("tied_lm"):
            assert ckpt.aliases == {"head.weight": "embed.weight"}


def test_zip_root_folder_may_have_any_name(tmp_path):
    sd = {"w": torch.arange(5, dtype=torch.int16)}
    torch.save(sd, tmp_path / "orig.pt")
    renamed = tmp_path / "renamed.pt"
    with zipfile.ZipFile(tmp_path / "orig.pt") as src, zipfile.ZipFile(renamed, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if info.filename.endswith("/byteorder"):
                continue  # files from torch < 2.1 have no byteorder record
            dst.writestr("some_other_folder/" + info.filename.split("/", 1)[1], src.read(info))
    with open_checkpoint(renamed) as ckpt:
        assert_matches_torch(ckpt, sd)


def test_big_endian_archives_are_byteswapped(tmp_path):
    sd = {
        "f": torch.tensor([1.5, -2.0, 3.25], dtype=torch.float32),
        "c": torch.tensor([1 + 2j, -3.5j], dtype=torch.complex64),
        "b": torch.tensor([1.0, -0.5, 7.0], dtype=torch.bfloat16),
        "i": torch.tensor([1, -2, 1 << 40], dtype=torch.int64),
    }
    itemsize = {"0": 4, "1": 4, "2": 2, "3": 8}  # complex: each float of the pair is swapped
    torch.save(sd, tmp_path / "little.pt")
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(tmp_path / "little.pt") as src, zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            record = info.filename.split("/", 1)[1]
            if record == "byteorder":
                data = b"big"
            elif record.startswith("data/"):
                width = itemsize[record[5:]]
                data = np.frombuffer(data, f"u{width}").byteswap().tobytes()
            dst.writestr(info.filename, data)
    with open_checkpoint(big) as ckpt:
        assert ckpt.metadata["torch:byteorder"] == "big"
        assert_matches_torch(ckpt, sd)
        assert all(ckpt.raw_extent(n) is None for n in sd)


def test_big_endian_legacy_files_are_byteswapped(tmp_path):
    sd = {"f": torch.tensor([1.5, -2.0], dtype=torch.float32), "s": torch.tensor([3, -4, 5], dtype=torch.int16)}
    path = tmp_path / "legacy.pt"
    SAVERS["legacy"](sd, path)
    data = bytearray(path.read_bytes())
    with open_checkpoint(path) as ckpt:  # the little-endian original says where each storage lies
        extents = {name: ckpt.raw_extent(name) for name in sd}
    flag = data.index(b"little_endian") + len(b"little_endian") + 2  # past the BINPUT after the key
    assert data[flag : flag + 1] == b"\x88"  # NEWTRUE
    data[flag] = 0x89  # NEWFALSE: written on a big-endian machine
    for name, t in sd.items():
        ext = extents[name]
        count = slice(ext.offset - 8, ext.offset)
        data[count] = bytes(reversed(data[count]))
        body = slice(ext.offset, ext.offset + ext.nbytes)
        data[body] = np.frombuffer(bytes(data[body]), f"u{t.element_size()}").byteswap().tobytes()
    path.write_bytes(bytes(data))
    with open_checkpoint(path) as ckpt:
        assert ckpt.metadata == {"torch:format": "legacy", "torch:byteorder": "big"}
        assert_matches_torch(ckpt, sd)


class TaggedTensor(torch.Tensor):
    """A tensor subclass, pickled through _rebuild_from_type_v2."""


def test_tensor_subclasses_and_parameters_with_state_are_unwrapped(tmp_path):
    tagged = torch.arange(4.0).as_subclass(TaggedTensor)
    param = torch.nn.Parameter(torch.ones(3))
    param.note = "extra attribute"  # pickled through _rebuild_parameter_with_state
    torch.save({"tagged": tagged, "param": param}, tmp_path / "sub.pt")
    with open_checkpoint(tmp_path / "sub.pt") as ckpt:
        assert_matches_torch(ckpt, {"tagged": tagged, "param": param})
        assert [f.qualname for f in ckpt.findings] == [f"{TaggedTensor.__module__}.TaggedTensor"]


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_oversized_pickles_are_refused(tmp_path, monkeypatch, kind):
    SAVERS[kind]({"a": torch.ones(2)}, tmp_path / "x.pt")
    monkeypatch.setenv("CKPTKIT_MAX_PICKLE_BYTES", "64")
    with pytest.raises(CorruptCheckpointError, match=r"limit of 64 .*CKPTKIT_MAX_PICKLE_BYTES"):
        open_checkpoint(tmp_path / "x.pt")


def test_reading_after_close_is_an_error(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "x.pt")
    ckpt = open_checkpoint(tmp_path / "x.pt")
    ckpt.close()
    with pytest.raises(ckptkit.CkptkitError, match="closed"):
        ckpt.read_tensor("a")


def test_listing_reads_no_tensor_data(tmp_path):
    io_stats = Path("/proc/self/io")
    if not io_stats.exists():
        pytest.skip("needs /proc/self/io")
    sd = {f"w{i}": torch.zeros(1024, 1024) for i in range(16)}  # 64 MiB of data
    path = tmp_path / "big.pt"
    torch.save(sd, path)

    def bytes_read() -> int:
        fields = dict(line.split(": ") for line in io_stats.read_text().splitlines())
        return int(fields["rchar"])

    before = bytes_read()
    with open_checkpoint(path) as ckpt:
        infos = ckpt.tensor_infos()
        extents = [ckpt.raw_extent(ti.name) for ti in infos]
    assert len(infos) == 16 and all(extents)
    assert bytes_read() - before < 1 << 20


# --- Training checkpoints: nesting, extras, placeholders -----------------------------------------


class RunConfig:
    """A user's own class, which ckptkit must not import."""

    def __init__(self) -> None:
        self.name = "run-7"
        self.dims = (16, 8)
        self.anchor = torch.linspace(0, 1, 5)


def lightning_style_checkpoint() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    params = list(model.parameters())
    # What AdamW.state_dict() and StepLR.state_dict() hold (built by hand: torch.optim takes seconds to import).
    optimizer = {
        "state": {
            i: {"step": torch.tensor(1.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
            for i, p in enumerate(params)
        },
        "param_groups": [
            {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "params": [0, 1, 2, 3]}
        ],
    }
    scheduler = {"step_size": 2, "gamma": 0.1, "base_lrs": [1e-3], "last_epoch": 1, "_last_lr": [1e-3]}
    state = OrderedDict((f"model.{k}", v) for k, v in model.state_dict().items())
    state["_orig_mod.0.bias"] = model[0].bias.detach().clone()
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state,
        "optimizer_states": [optimizer],
        "lr_schedulers": [scheduler],
        "callbacks": {},
        "hyper_parameters": argparse.Namespace(lr=1e-3, layers=[4, 3, 2], name="mlp"),
        "config": RunConfig(),
        "note": None,
    }


def test_training_fixture_made_by_a_real_optimizer():
    path = FIXTURES / "training_mlp.ckpt"
    expected = torch_flat(torch.load(path, weights_only=False))  # the project's own fixture, trusted
    with open_checkpoint(path) as ckpt:
        assert_matches_torch(ckpt, expected)
        assert "optimizer_states.0.state.0.exp_avg" in ckpt.names()
        assert ckpt.extras["hyper_parameters"] == "<opaque argparse.Namespace>"


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_training_checkpoint_nesting_extras_and_placeholders(tmp_path, kind):
    obj = lightning_style_checkpoint()
    path = tmp_path / "last.ckpt"
    SAVERS[kind](obj, path)
    with open_checkpoint(path) as ckpt:
        assert_matches_torch(ckpt, torch_flat(obj))
        names = ckpt.names()
        assert "state_dict.model.0.weight" in names
        assert "state_dict._orig_mod.0.bias" in names
        assert "optimizer_states.0.state.0.exp_avg" in names
        assert "optimizer_states.0.state.0.step" in names
        assert "config.anchor" in names
        extras = ckpt.extras
        assert extras["epoch"] == 3 and extras["global_step"] == 120
        assert extras["pytorch-lightning_version"] == "2.4.0"
        assert extras["note"] is None
        assert extras["callbacks"] == {}
        assert extras["hyper_parameters"] == "<opaque argparse.Namespace>"
        assert extras["hyper_parameters.lr"] == 1e-3
        assert extras["hyper_parameters.layers"] == [4, 3, 2]
        assert extras["config"] == f"<opaque {RunConfig.__module__}.RunConfig>"
        assert extras["config.dims"] == [16, 8]
        assert extras["optimizer_states.0.param_groups.0.betas"] == [0.9, 0.999]
        assert extras["optimizer_states.0.param_groups.0.params"] == [0, 1, 2, 3]
        assert extras["lr_schedulers.0.step_size"] == 2
        json.dumps(extras)
        assert {(f.qualname, f.severity) for f in ckpt.findings} == {
            ("argparse.Namespace", "warning"),
            (f"{RunConfig.__module__}.RunConfig", "warning"),
        }


def test_bare_tensor_and_top_level_list(tmp_path):
    t = torch.arange(6, dtype=torch.uint8).reshape(2, 3)
    torch.save(t, tmp_path / "bare.pt")
    with open_checkpoint(tmp_path / "bare.pt") as ckpt:
        assert ckpt.names() == ["tensor"]
        assert ckpt.metadata == {"torch:format": "zip", "torch:root": "tensor"}
        assert_matches_torch(ckpt, {"tensor": t})
    items = [torch.ones(2), torch.zeros(3, dtype=torch.bfloat16)]
    torch.save(items, tmp_path / "list.pt")
    with open_checkpoint(tmp_path / "list.pt") as ckpt:
        assert ckpt.metadata["torch:root"] == "list"
        assert_matches_torch(ckpt, {"0": items[0], "1": items[1]})


def test_parameters_and_tied_weights_share_one_name(tmp_path):
    emb = torch.nn.Parameter(torch.randn(10, 4))
    sd = {"embed.weight": emb, "head.weight": emb, "other": emb.detach()[2:4]}
    torch.save(sd, tmp_path / "tied.pt")
    with open_checkpoint(tmp_path / "tied.pt") as ckpt:
        assert ckpt.names() == ["embed.weight", "other"]
        assert ckpt.aliases == {"head.weight": "embed.weight"}
        assert_matches_torch(ckpt, sd)


# --- Writing files torch reads ---------------------------------------------------------------------


def assert_torch_loads(path: Path, expected: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
    for mmap in (False, True):
        loaded = torch.load(path, weights_only=True, mmap=mmap)
        assert isinstance(loaded, OrderedDict)
        assert list(loaded) == list(expected)
        for name, want in expected.items():
            got = loaded[name]
            assert got.is_contiguous()
            assert torch_to_numpy(got).dtype == want.dtype, name
            assert tuple(got.shape) == want.shape, name
            assert tensor_bytes(got) == np.ascontiguousarray(want).tobytes(), name
        for alias, target in aliases.items():
            assert loaded[alias].untyped_storage().data_ptr() == loaded[target].untyped_storage().data_ptr()


def assert_torch_layout(path: Path) -> None:
    """Stored members, data 64-byte aligned, valid CRCs, torch's records in torch's order."""
    root = path.stem
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        names = [i.filename for i in infos]
        n = len([x for x in names if "/data/" in x])
        assert names == [
            f"{root}/data.pkl", f"{root}/.format_version", f"{root}/.storage_alignment", f"{root}/byteorder",
            *[f"{root}/data/{k}" for k in range(n)], f"{root}/version", f"{root}/.data/serialization_id",
        ]  # fmt: skip
        assert zf.read(f"{root}/.format_version") == b"1"
        assert zf.read(f"{root}/.storage_alignment") == b"64"
        assert zf.read(f"{root}/byteorder") == b"little"
        assert zf.read(f"{root}/version") == b"3\n"
        assert len(zf.read(f"{root}/.data/serialization_id")) == 40
    with open(path, "rb") as f:
        for info in infos:
            assert info.compress_type == zipfile.ZIP_STORED
            f.seek(info.header_offset + 26)
            name_len, extra_len = np.frombuffer(f.read(4), "<u2")
            assert (info.header_offset + 30 + int(name_len) + int(extra_len)) % 64 == 0, info.filename


@pytest.fixture
def torch_computes_offsets(monkeypatch):
    """Make torch.load compute storage offsets from its own layout rules and assert them against the file."""
    config = torch.utils.serialization.config.load
    before = config.calculate_storage_offsets
    config.calculate_storage_offsets = True  # torch's config proxy does not survive monkeypatch's undo
    monkeypatch.setenv("TORCH_SERIALIZATION_DEBUG", "1")
    yield
    config.calculate_storage_offsets = before


def test_written_file_loads_in_torch_bit_exactly_every_dtype(tmp_path, torch_computes_offsets):
    arrays = {name: torch_to_numpy(t) for name, t in every_dtype_state_dict().items()}
    path = tmp_path / "every.pt"
    write_read(arrays, path, "torch")
    assert_torch_layout(path)
    assert_torch_loads(path, arrays, {})


def test_written_pickle_uses_the_globals_torch_uses(tmp_path):
    sd = {name: t for name, t in every_dtype_state_dict().items() if name.endswith(".w")}
    torch.save(sd, tmp_path / "theirs.pt")
    ckptkit.save({k: torch_to_numpy(v) for k, v in sd.items()}, tmp_path / "ours.pt", "torch")

    def globals_of(path: Path) -> set[str]:
        with zipfile.ZipFile(path) as zf:
            data = zf.read(f"{path.stem}/data.pkl")
        return {str(arg) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}

    assert globals_of(tmp_path / "ours.pt") == globals_of(tmp_path / "theirs.pt")


def test_tied_weights_stay_tied_through_a_rewrite(tmp_path, torch_computes_offsets):
    emb = torch.randn(50, 16, dtype=torch.bfloat16)
    sd = {"embed.weight": emb, "norm.weight": torch.ones(16), "head.weight": emb}
    torch.save(sd, tmp_path / "src.pt")
    dst = tmp_path / "dst.pt"
    with open_checkpoint(tmp_path / "src.pt") as ckpt:
        notes = write_with_ckptkit(ckpt, dst)
    assert notes == ["1 tied tensor(s) share one storage with their target"]
    assert_torch_layout(dst)
    expected = {k: torch_to_numpy(v) for k, v in sd.items()}
    assert_torch_loads(dst, expected, {"head.weight": "embed.weight"})
    with open_checkpoint(dst) as back:
        assert back.aliases == {"head.weight": "embed.weight"}


def test_bare_tensor_is_written_back_bare(tmp_path):
    t = torch.randn(3, 4, dtype=torch.float16)
    torch.save(t, tmp_path / "bare.pt")
    with open_checkpoint(tmp_path / "bare.pt") as ckpt:
        write_with_ckptkit(ckpt, tmp_path / "out.pt")
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert isinstance(loaded, torch.Tensor)
    assert tensor_bytes(loaded) == tensor_bytes(t)


def test_views_are_written_contiguous(tmp_path):
    base = torch.arange(60, dtype=torch.float64).reshape(6, 10)
    sd = {"t": base.t(), "s": base[1:4, 2:5], "e": torch.ones(2, 1).expand(2, 3)}
    torch.save(sd, tmp_path / "views.pt")
    with open_checkpoint(tmp_path / "views.pt") as ckpt:
        write_with_ckptkit(ckpt, tmp_path / "out.pt")
    loaded = torch.load(tmp_path / "out.pt", weights_only=True, mmap=True)
    for name, t in sd.items():
        assert torch.equal(loaded[name], t)
        assert loaded[name].is_contiguous()


def test_training_checkpoint_extras_are_dropped_with_a_note(tmp_path):
    torch.save(lightning_style_checkpoint(), tmp_path / "last.ckpt")
    with open_checkpoint(tmp_path / "last.ckpt") as ckpt:
        ckpt.metadata["origin"] = "test"
        notes = write_with_ckptkit(ckpt, tmp_path / "flat.pt")
        n_extras = len(ckpt.extras)
        expected = {ti.name: ckpt.read_tensor(ti.name) for ti in ckpt.tensor_infos()}
    assert notes == [f"metadata (1 key) and extras ({n_extras} values) are not stored in PyTorch files"]
    assert_torch_loads(tmp_path / "flat.pt", expected, {})


def test_zip64_fields_are_written_when_needed(tmp_path, monkeypatch):
    # Pretend 4 GiB is 100 bytes, so every member and offset past it takes the zip64 path.
    monkeypatch.setattr(zipwriter, "ZIP64_LIMIT", 100)
    arrays = {"a": np.arange(300, dtype=np.int32), "b": np.ones(10, np.float16), "c": np.zeros((50, 3), np.uint8)}
    path = tmp_path / "z64.pt"
    write_read(arrays, path, "torch")
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
    assert_torch_loads(path, arrays, {})


def test_large_tensor_crc_spans_copy_chunks(tmp_path):
    big = np.random.default_rng(0).standard_normal(5_000_000).astype(np.float32)  # 20 MB, over one 16 MiB chunk
    src = tmp_path / "src.safetensors"
    ckptkit.save({"big": big}, src)
    dst = tmp_path / "dst.pt"
    ckptkit.convert(src, dst)
    with zipfile.ZipFile(dst) as zf:
        assert zf.testzip() is None
    assert tensor_bytes(torch.load(dst, weights_only=True, mmap=True)["big"]) == big.tobytes()


def test_archive_root_is_the_output_stem(tmp_path):
    path = tmp_path / "my.model v2.pt"
    ckptkit.save({"x": np.ones(2, np.float32)}, path, "torch")
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist()[0] == "my.model v2/data.pkl"


# --- Through safetensors and back -------------------------------------------------------------------


def test_torch_to_safetensors_to_torch(tmp_path):
    sd = {
        k: v
        for k, v in every_dtype_state_dict().items()
        if not k.startswith(("complex128", "float8_e4m3fnuz", "float8_e5m2fnuz"))
    }
    torch.save(sd, tmp_path / "src.pt")
    st = tmp_path / "mid.safetensors"
    with open_checkpoint(tmp_path / "src.pt") as ckpt, AtomicOutput(st) as out:
        get("safetensors").write(ckpt, WriteContext(out))
    loaded = safetensors.torch.load_file(st)
    assert set(loaded) == set(sd)
    for name, t in sd.items():
        assert loaded[name].dtype == t.dtype and tensor_bytes(loaded[name]) == tensor_bytes(t), name
    ckptkit.convert(st, tmp_path / "back.pt")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    for name, t in sd.items():
        assert back[name].dtype == t.dtype and tensor_bytes(back[name]) == tensor_bytes(t), name


def test_memory_checkpoint_round_trip_through_helpers(tmp_path):
    arrays = {"w": sample_array("bfloat16", (8, 4)), "n": sample_array("int64", (3,))}
    got = write_read(arrays, tmp_path / "m.pt", "torch")
    assert_same_tensors(arrays, MemoryCheckpoint(got))


# --- Refusals and broken files ----------------------------------------------------------------------


class Payload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_pickle_calling_os_system_is_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    SAVERS[kind]({"w": torch.ones(2), "x": Payload(f"touch {marker}")}, path)
    with pytest.raises(UnsafeCheckpointError, match=rf"{os.system.__module__}\.system"):
        open_checkpoint(path)
    findings = scan_findings(path)
    assert [(f.qualname, f.severity) for f in findings] == [(f"{os.system.__module__}.system", "error")]
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["zip", "legacy"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_files_are_corrupt(tmp_path, kind, keep):
    path = tmp_path / "cut.pt"
    SAVERS[kind]({"a": torch.randn(64, 64), "b": torch.randn(64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptCheckpointError), open_checkpoint(path) as ckpt:
        for name in ckpt.names():
            ckpt.read_tensor(name)


def _rezip(src: Path, dst: Path, drop: str = "", shorten: str = "", deflate: str = "") -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            record = info.filename.split("/", 1)[1]
            data = zin.read(info)
            if record == drop:
                continue
            if record == shorten:
                data = data[: len(data) // 2]
            method = zipfile.ZIP_DEFLATED if record == deflate else zipfile.ZIP_STORED
            zout.writestr(info.filename, data, compress_type=method)


def test_missing_record_names_the_record_and_tensor(tmp_path):
    torch.save({"a": torch.ones(3), "b": torch.zeros(4)}, tmp_path / "ok.pt")
    _rezip(tmp_path / "ok.pt", tmp_path / "bad.pt", drop="data/1")
    with pytest.raises(CorruptCheckpointError, match=r"tensor 'b'.*data/1"):
        open_checkpoint(tmp_path / "bad.pt")


def test_storage_out_of_range_names_the_tensor(tmp_path):
    torch.save({"a": torch.ones(3), "b": torch.zeros(40)}, tmp_path / "ok.pt")
    _rezip(tmp_path / "ok.pt", tmp_path / "bad.pt", shorten="data/1")
    with pytest.raises(CorruptCheckpointError, match=r"tensor 'b'.*data/1 holds 80"):
        open_checkpoint(tmp_path / "bad.pt")


def test_compressed_members_are_refused(tmp_path):
    torch.save({"a": torch.ones(100)}, tmp_path / "ok.pt")
    _rezip(tmp_path / "ok.pt", tmp_path / "deflated.pt", deflate="data/0")
    with pytest.raises(UnsupportedError, match="compressed"):
        open_checkpoint(tmp_path / "deflated.pt")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archives_are_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    assert TORCH_FORMAT.sniff(path.read_bytes()[:4096], path)
    with pytest.raises(UnsupportedError, match=r"TorchScript.*torch\.jit\.save.*state_dict"):
        open_checkpoint(path)


@pytest.mark.filterwarnings("ignore:.*quantized:UserWarning")
def test_quantized_and_sparse_tensors_are_listed_apart_and_refused_by_name(tmp_path):
    q = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
    torch.save({"fine": torch.ones(2), "q": q}, tmp_path / "q.pt")
    with open_checkpoint(tmp_path / "q.pt") as ckpt:
        assert ckpt.names() == ["fine"] and list(ckpt.unsupported) == ["q"]
    with pytest.raises(UnsupportedError, match=r"tensor 'q' is a quantized tensor"):
        ckptkit.convert(tmp_path / "q.pt", tmp_path / "q.safetensors")
    torch.save({"fine": torch.ones(2), "layer.sp": torch.eye(3).to_sparse()}, tmp_path / "s.pt")
    with pytest.raises(UnsupportedError, match=r"tensor 'layer\.sp' is a sparse tensor"):
        ckptkit.convert(tmp_path / "s.pt", tmp_path / "s.safetensors")
    assert not (tmp_path / "q.safetensors").exists() and not (tmp_path / "s.safetensors").exists()


def test_sniff_claims_torch_files_and_nothing_else(tmp_path):
    def sniff(path: Path) -> bool:
        return TORCH_FORMAT.sniff(path.read_bytes()[:4096], path)

    for kind, save in SAVERS.items():
        save({"a": torch.ones(1)}, tmp_path / f"{kind}.pt")
        assert sniff(tmp_path / f"{kind}.pt"), kind
    others = {
        "x.safetensors": lambda p: safetensors.torch.save_file({"a": torch.ones(1)}, p),
        "x.npz": lambda p: np.savez(p, a=np.ones(1)),
        "x.keras": lambda p: _write_zip(
            p, {"metadata.json": b"{}", "config.json": b"{}", "model.weights.h5": b"\x89HDF"}
        ),
        "x.pkl": lambda p: p.write_bytes(__import__("pickle").dumps({"a": 1}, protocol=2)),
        "x.bin": lambda p: p.write_bytes(os.urandom(256)),
    }
    for name, make in others.items():
        make(tmp_path / name)
        assert not sniff(tmp_path / name), name
    for path in realworld_files("*.keras") + realworld_files("*.safetensors") + realworld_files("*.h5"):
        assert not sniff(path), path.name


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_writing_does_not_touch_the_source(tmp_path):
    torch.save({"a": torch.randn(8, 8)}, tmp_path / "src.pt")
    shutil.copy(tmp_path / "src.pt", tmp_path / "copy.pt")
    ckptkit.convert(tmp_path / "src.pt", tmp_path / "dst.pt")
    assert (tmp_path / "src.pt").read_bytes() == (tmp_path / "copy.pt").read_bytes()
