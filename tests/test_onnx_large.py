"""A weights model past protobuf's 2 GiB limit (opt in: pytest -m slow; ~2.4 GB of disk, ~1 min)."""

import numpy as np
import onnx
import pytest

import ckptkit
from ckptkit.core.dtypes import from_numpy
from ckptkit.core.model import Checkpoint, TensorInfo
from tests.onnx_util import session

N = 400 * 1024 * 1024  # float16 elements per tensor: 800 MiB each, three of them


class Generated(Checkpoint):
    """Tensors made when read, so the test holds one at a time."""

    def __init__(self) -> None:
        super().__init__(None)
        self._infos = [TensorInfo(f"w{i}", from_numpy(np.dtype(np.float16)), (N // 1024, 1024)) for i in range(3)]
        self._infos.append(TensorInfo("bias", from_numpy(np.dtype(np.float32)), (7,)))

    def tensor_infos(self):
        return self._infos

    def read_tensor(self, name):
        if name == "bias":
            return np.arange(7, dtype=np.float32)
        i = int(name[1:])
        return (np.arange(N, dtype=np.uint16) * (i + 3)).view(np.float16).reshape(N // 1024, 1024)


@pytest.mark.slow
def test_past_2_gib_external_data_checker_and_onnxruntime(tmp_path):
    path = tmp_path / "big.onnx"
    receipt = ckptkit.save(Generated(), path)
    assert any("2 GiB" in n for n in receipt.notes)
    data = tmp_path / "big.onnx.data"
    assert data.stat().st_size > 2**31 and path.stat().st_size < 4096
    onnx.checker.check_model(str(path))
    got = session(path).run(["w2", "bias"], {})
    want = Generated()
    assert got[1].tolist() == list(range(7))
    assert got[0].tobytes() == want.read_tensor("w2").tobytes()
    del got
    with ckptkit.load(path) as back:
        for name in ("w0", "w1"):
            assert back.read_tensor(name).tobytes() == want.read_tensor(name).tobytes()
            assert back.raw_extent(name).offset % 4096 == 0
