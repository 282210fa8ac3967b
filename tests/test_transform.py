import numpy as np
import pytest
import torch

import ckptkit
from ckptkit.core.dtypes import DTYPES, by_name, from_numpy
from ckptkit.core.errors import UsageError
from ckptkit.core.model import MemoryCheckpoint, parse_size
from ckptkit.core.torch_interop import numpy_to_torch, torch_to_numpy
from ckptkit.core.views import transform
from tests.helpers import sample_array


def tied() -> MemoryCheckpoint:
    return MemoryCheckpoint(
        {"module.embed.weight": np.arange(6, dtype=np.float32), "module.norm.weight": np.ones(2, np.float16)},
        aliases={"module.head.weight": "module.embed.weight"},
    )


def test_strip_prefix_keeps_aliases_pointing_at_renamed_tensors():
    view = transform(tied(), strip_prefix=["module."])
    assert view.names() == ["embed.weight", "norm.weight"]
    assert view.aliases == {"head.weight": "embed.weight"}


def test_alias_whose_target_is_excluded_becomes_a_tensor():
    view = transform(tied(), exclude=["module.embed.*"])
    assert view.aliases == {}
    assert sorted(view.names()) == ["module.head.weight", "module.norm.weight"]
    assert np.array_equal(view.read_tensor("module.head.weight"), np.arange(6, dtype=np.float32))


def test_cast_touches_floats_only_and_is_reported():
    ckpt = MemoryCheckpoint({"w": np.ones(3, np.float32), "i": np.arange(3, dtype=np.int64)})
    view = transform(ckpt, cast_to=by_name("bf16"))
    assert view.info("w").dtype.name == "bfloat16" and view.info("i").dtype.name == "int64"
    assert view.cast == {"w": "float32 -> bfloat16"}
    assert view.raw_extent("w") is None


def test_renaming_collision_is_a_usage_error():
    ckpt = MemoryCheckpoint({"module.a": np.ones(1), "a": np.ones(1)})
    with pytest.raises(UsageError, match="'a'"):
        transform(ckpt, strip_prefix=["module."])


def test_selecting_nothing_is_a_usage_error():
    with pytest.raises(UsageError, match="no tensor left"):
        transform(tied(), select=["nothing.*"])


@pytest.mark.parametrize("dtype", [d.name for d in DTYPES if hasattr(torch, d.name)])
def test_torch_interop_keeps_bits(dtype):
    arr = sample_array(dtype, (2, 3))
    t = numpy_to_torch(arr)
    assert str(t.dtype) == f"torch.{dtype}"
    back = torch_to_numpy(t)
    assert back.dtype == arr.dtype and back.tobytes() == arr.tobytes()


def test_save_accepts_torch_tensors(tmp_path):
    t = torch.randn(3, 4, dtype=torch.bfloat16)
    ckptkit.save({"t": t}, tmp_path / "t.safetensors")
    with ckptkit.load(tmp_path / "t.safetensors") as ckpt:
        got = ckpt.read_tensor("t")
        assert from_numpy(got.dtype).name == "bfloat16"
        assert torch.equal(numpy_to_torch(got), t)
        assert torch.equal(ckpt.read_torch("t"), t)


@pytest.mark.parametrize(
    ("text", "value"), [("5GB", 5 * 10**9), ("2GiB", 2 * 2**30), ("500 MB", 500 * 10**6), ("1024", 1024)]
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "five", "-1GB", "3XB"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError):
        parse_size(text)
