"""Time ``ckptkit hash`` and ``ckptkit verify`` against single-threaded SHA-256 of the same file.

Writes a synthetic transformer-like fp16 safetensors checkpoint (~2 GB by default, seeded, made
tensor by tensor so memory stays near one tensor), warms the page cache, then runs each command as
a separate process, in rotation, ``--repeat`` times, and prints medians and ratios. All ratios are
measured in the same run, because absolute times drift on a shared machine.

    python bench/hash_bench.py [--dir DIR] [--size-gb 2.0] [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import measure  # noqa: E402 - bench/measure.py: child processes' time and peak anonymous memory

from ckptkit import save  # noqa: E402
from ckptkit.core.dtypes import from_numpy  # noqa: E402
from ckptkit.core.model import Checkpoint, TensorInfo  # noqa: E402


class SyntheticCheckpoint(Checkpoint):
    """Layer shapes of a decoder-only transformer; each tensor made when the writer asks for it."""

    format_name = "synthetic"

    def __init__(self, size_bytes: int, hidden: int = 2048, vocab: int = 32000) -> None:
        super().__init__(None)
        f16 = from_numpy(np.dtype(np.float16))
        infos = [TensorInfo("embed_tokens.weight", f16, (vocab, hidden))]
        per_layer = [
            ("self_attn.q_proj.weight", (hidden, hidden)),
            ("self_attn.k_proj.weight", (hidden, hidden)),
            ("self_attn.v_proj.weight", (hidden, hidden)),
            ("self_attn.o_proj.weight", (hidden, hidden)),
            ("mlp.up_proj.weight", (4 * hidden, hidden)),
            ("mlp.down_proj.weight", (hidden, 4 * hidden)),
            ("input_layernorm.weight", (hidden,)),
            ("post_attention_layernorm.weight", (hidden,)),
        ]
        layer_bytes = sum(2 * math.prod(s) for _n, s in per_layer)
        layers = max(1, round((size_bytes - infos[0].nbytes) / layer_bytes))
        for i in range(layers):
            infos += [TensorInfo(f"layers.{i}.{n}", f16, s) for n, s in per_layer]
        infos.append(TensorInfo("norm.weight", f16, (hidden,)))
        self._infos = infos

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        ti = self.info(name)
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        return (rng.standard_normal(ti.numel, dtype=np.float32) * 0.02).astype(np.float16).reshape(ti.shape)


def _time(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds, and the peak anonymous memory (RssAnon: file pages mapped by mmap excluded), in bytes."""
    run = measure.run(cmd, env=measure.child_env(REPO))
    if not run.ok:
        raise SystemExit(f"{cmd} exited {run.returncode}: {run.stderr.strip()}")
    return run.seconds, run.peak_anon_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="where to write the checkpoint (default: a temporary folder)")
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint for later runs")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="ckptkit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt_path = work / f"bench-{args.size_gb:g}gb.safetensors"
    manifest = work / "manifest.json"
    lean = work / "manifest-no-file-hashes.json"
    try:
        if not ckpt_path.exists():
            t = time.perf_counter()
            save(SyntheticCheckpoint(int(args.size_gb * 1e9)), ckpt_path)
            print(f"wrote {ckpt_path} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        size = ckpt_path.stat().st_size
        py = sys.executable
        single = (
            "import hashlib, sys\n"
            "with open(sys.argv[1], 'rb') as f:\n"
            "    print(hashlib.file_digest(f, 'sha256').hexdigest())"
        )

        ckptkit_hash = [py, "-m", "ckptkit", "hash", str(ckpt_path)]
        commands = {
            "sha256sum": ["sha256sum", str(ckpt_path)],
            "python hashlib, 1 thread": [py, "-c", single, str(ckpt_path)],
            "ckptkit hash": [*ckptkit_hash, "-o", str(manifest), "--force"],
            "ckptkit hash --no-file-hashes": [*ckptkit_hash, "--no-file-hashes", "-o", str(lean), "--force"],
            "ckptkit verify": [py, "-m", "ckptkit", "verify", str(ckpt_path)],
            "ckptkit verify --manifest": [py, "-m", "ckptkit", "verify", str(ckpt_path), "--manifest", str(manifest)],
        }
        if shutil.which("sha256sum") is None:
            del commands["sha256sum"]
        _time(commands["python hashlib, 1 thread"])  # warm the page cache
        _time(commands["ckptkit hash"])  # and make the manifest verify --manifest reads
        times: dict[str, list[float]] = {name: [] for name in commands}
        peaks: dict[str, int] = dict.fromkeys(commands, 0)
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                seconds, peak = _time(cmd)
                times[name].append(seconds)
                peaks[name] = max(peaks[name], peak)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        base = med["python hashlib, 1 thread"]
        n_tensors = len(SyntheticCheckpoint(int(args.size_gb * 1e9)).names())
        load = os.getloadavg()[0]
        print(f"checkpoint: {size / 1e9:.2f} GB, fp16, {n_tensors} tensors; {os.cpu_count()} cores; ", end="")
        print(f"medians of {args.repeat}; 1-minute load average {load:.1f}")
        print(f"{'command':<32}{'median s':>10}{'GB/s':>8}{'x hashlib 1 thread':>20}{'peak anon MB':>14}   all runs")
        for name, m in med.items():
            runs = " ".join(f"{t:.2f}" for t in times[name])
            mb = peaks[name] / 1e6
            print(f"{name:<32}{m:>10.2f}{size / 1e9 / m:>8.2f}{m / base:>20.2f}{mb:>14.0f}   {runs}")
    finally:
        if not args.keep:
            ckpt_path.unlink(missing_ok=True)
            manifest.unlink(missing_ok=True)
            lean.unlink(missing_ok=True)
            if args.dir is None:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
