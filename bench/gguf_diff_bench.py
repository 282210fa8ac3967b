"""Benchmark: ``ckptkit diff`` of an F16 safetensors model against its Q8_0 GGUF, against a gguf-py + numpy script.

Makes a Llama-like F16 safetensors checkpoint (A) and its Q8_0 GGUF (B, written by ``ckptkit convert
--dtype q8_0``: matrices Q8_0, 1-D tensors kept F16) under the same names, warms the page cache,
then times in fresh processes, in alternating order, ``ckptkit diff A B --json`` and the script a
user would write with gguf-py and numpy (GGUFReader, ``gguf.quants.dequantize`` per tensor, the
same metrics in numpy), reporting median wall time and peak anonymous memory (``RssAnon``).

    python bench/gguf_diff_bench.py              # 20 blocks: ~2.3 GB F16 against ~1.2 GB Q8_0, 3 rounds
    python bench/gguf_diff_bench.py --layers 4   # a quick run on smaller files
    python bench/gguf_diff_bench.py --baseline-repo ../main   # also time another checkout's ckptkit, interleaved

The load average is printed before and after: on a shared machine, compare the ratios of one run.

Not part of the test suite: it needs ~4 GB of disk at full size and several minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import measure  # noqa: E402
from diff_bench import shapes  # noqa: E402

from ckptkit.core.dtypes import by_name  # noqa: E402
from ckptkit.core.model import TensorInfo  # noqa: E402
from ckptkit.formats.safetensors import build_header  # noqa: E402

NAIVE_SCRIPT = r"""
import sys
import numpy as np
import gguf
from safetensors.numpy import safe_open

reader = gguf.GGUFReader(sys.argv[2])
rows = []
with safe_open(sys.argv[1], "np") as a:
    for t in reader.tensors:
        x = a.get_tensor(t.name).astype(np.float32)
        y = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(x.shape)
        d = x - y
        nx, ny, nd = np.linalg.norm(x), np.linalg.norm(y), np.linalg.norm(d)
        rows.append((t.name, t.tensor_type.name, float(np.abs(d).max()), float(np.abs(d).mean()), float(nd),
                     float(nd / nx), float(np.dot(x.ravel(), y.ravel()) / (nx * ny)), float(20 * np.log10(nx / nd))))
rows.sort(key=lambda r: -r[5])
for r in rows[:10]:
    print(*r)
"""


def make_base(folder: Path, layers: int) -> tuple[Path, int]:
    """A.safetensors (F16, Gaussian weights), written tensor by tensor; returns it and the largest tensor's bytes."""
    fp16 = by_name("float16")
    infos = [TensorInfo(n, fp16, s) for n, s in shapes(layers, 2048, 5632, 32000)]
    path = folder / "model-f16.safetensors"
    if not path.exists():
        header, ordered = build_header(infos, {"format": "pt"})
        rng = np.random.default_rng(0)
        with open(path, "wb") as f:
            f.write(header)
            for ti in ordered:
                a = rng.standard_normal(ti.numel, dtype=np.float32)
                a *= 0.02
                f.write(a.astype(np.float16).tobytes())
    return path, max(t.nbytes for t in infos)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=20, help="transformer blocks (20: ~2.3 GB F16)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-repo", type=Path, help="also time `ckptkit diff` from this checkout (before/after)")
    parser.add_argument("--dir", type=Path, help="keep the files here (default: a temporary folder, removed after)")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="ckptkit-gguf-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = measure.child_env(REPO)
    try:
        t0 = time.perf_counter()
        base, largest = make_base(folder, args.layers)
        q8 = folder / "model-Q8_0.gguf"
        if not q8.exists():
            subprocess.run([sys.executable, "-m", "ckptkit", "convert", str(base), str(q8), "--dtype", "q8_0",
                            "--no-verify"], check=True, env=env, stdout=subprocess.DEVNULL)  # fmt: skip
        print(f"files: {base.stat().st_size / 1e9:.2f} GB F16 safetensors, {q8.stat().st_size / 1e9:.2f} GB Q8_0 GGUF, "
              f"largest tensor {largest / 1e6:.0f} MB F16 (made in {time.perf_counter() - t0:.0f} s)")  # fmt: skip
        for p in (base, q8):
            with open(p, "rb") as f:
                while f.read(64 << 20):
                    pass
        diff = [sys.executable, "-m", "ckptkit", "diff", str(base), str(q8), "--json"]
        commands = {"ckptkit diff": diff, "gguf-py+numpy": [sys.executable, "-c", NAIVE_SCRIPT, str(base), str(q8)]}
        envs = {name: env for name in commands}
        if args.baseline_repo:
            commands["baseline diff"] = diff
            envs["baseline diff"] = measure.child_env(args.baseline_repo.resolve())
        print(f"load average before: {_load()}")
        results: dict[str, list[measure.Run]] = {name: [] for name in commands}
        for r in range(args.rounds):
            for name in list(commands) if r % 2 == 0 else list(reversed(commands)):
                # Run from the data folder: ``-m ckptkit`` would import the checkout in the current folder first.
                run = measure.run(commands[name], env=envs[name], cwd=folder)
                if run.returncode not in (0, 1):
                    raise SystemExit(f"{name} failed ({run.returncode}): {run.stderr}")
                results[name].append(run)
                print(f"  round {r + 1} {name}: {run.seconds:.2f} s ({run.cpu_seconds:.2f} s CPU)", flush=True)
        print(f"load average after: {_load()}")
        print(f"\n{'command':14s} {'median s':>9s} {'min s':>7s} {'CPU s':>7s} {'peak RssAnon':>13s}")
        for name, runs in results.items():
            times = [x.seconds for x in runs]
            cpu = statistics.median(x.cpu_seconds for x in runs)
            peak = max(x.peak_anon_bytes for x in runs)
            print(f"{name:14s} {statistics.median(times):9.2f} {min(times):7.2f} {cpu:7.2f} {peak / 1e6:10.0f} MB")
        ours = statistics.median(x.seconds for x in results["ckptkit diff"])
        theirs = statistics.median(x.seconds for x in results["gguf-py+numpy"])
        cpu_ours = statistics.median(x.cpu_seconds for x in results["ckptkit diff"])
        cpu_theirs = statistics.median(x.cpu_seconds for x in results["gguf-py+numpy"])
        print(
            f"\nspeed-up (median wall): {theirs / ours:.1f}x; CPU time {cpu_theirs / cpu_ours:.1f}x less; "
            f"float32 copy of the largest tensor: {2 * largest / 1e6:.0f} MB"
        )
        if args.baseline_repo:
            before = statistics.median(x.seconds for x in results["baseline diff"])
            print(f"against the baseline checkout's diff: {before / ours:.1f}x faster")
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
