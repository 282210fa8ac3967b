"""Speed and memory of safetensors -> Keras .h5 -> safetensors, against ``cp`` of the same bytes.

    python bench/keras_h5.py [--gb 2.29] [--dtype float16] [--runs 3] [--dir /tmp/ckptkit-bench]

Makes a transformer-like checkpoint (201 tensors: a 32000 x 2304 embedding and output head, 22
blocks of attention and MLP weights), then times, as child processes with a warm page cache:
``cp`` of the source, the command's start-up alone (``ckptkit formats``), and ``ckptkit convert``
to a legacy .h5 and back, each with and without the check that re-reads the output. Memory is the
child's peak ``RssAnon`` (private anonymous memory, polled from /proc): mapped file pages are not
counted, since a lazy reader maps the whole file without holding it. Medians of ``--runs`` runs;
the limits are 1.5x cp and the largest tensor + 256 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import measure  # noqa: E402 - bench/measure.py: child processes' time and peak anonymous memory
import synth  # noqa: E402 - bench/synth.py: the transformer-like shapes every benchmark uses

from ckptkit.core.dtypes import by_name  # noqa: E402
from ckptkit.core.model import Checkpoint, TensorInfo  # noqa: E402


class Synthetic(Checkpoint):
    """Seeded values made one tensor at a time, so writing the source needs no more memory than that."""

    format_name = "synthetic"

    def __init__(self, total_bytes: int, dtype: str) -> None:
        super().__init__(None)
        self.dtype = by_name(dtype)
        self._infos = [
            TensorInfo(n, self.dtype, s) for n, s in synth.layout(total_bytes, self.dtype.itemsize).shapes.items()
        ]

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        ti = self.info(name)
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        return (rng.standard_normal(ti.shape, dtype=np.float32) * 0.02).astype(self.dtype.numpy)


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak anonymous memory of a child process."""
    run = measure.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)})
    if not run.ok:
        raise SystemExit(f"{' '.join(cmd)} failed: {run.stderr}")
    return run.seconds, run.peak_anon_bytes


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.29, help="checkpoint size in GB (default 2.29)")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "ckptkit-bench")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    import ckptkit

    args.dir.mkdir(parents=True, exist_ok=True)
    src = args.dir / f"synthetic-{args.gb}GB-{args.dtype}.safetensors"
    synth = Synthetic(int(args.gb * 1e9), args.dtype)
    if not src.exists():
        ckptkit.save(synth, src)
    largest = max(ti.nbytes for ti in synth.tensor_infos())
    h5, back, copy = args.dir / "bench.h5", args.dir / "back.safetensors", args.dir / "copy.bin"
    ckptkit_cmd = [sys.executable, "-m", "ckptkit", "convert", "--force"]
    cases = {
        "cp": (["cp", str(src), str(copy)], src),
        "ckptkit start-up (formats)": ([sys.executable, "-m", "ckptkit", "formats"], src),
        "safetensors -> h5 (no verify)": ([*ckptkit_cmd, "--no-verify", str(src), str(h5)], src),
        "h5 -> safetensors (no verify)": ([*ckptkit_cmd, "--no-verify", str(h5), str(back)], h5),
        "safetensors -> h5 (verified)": ([*ckptkit_cmd, str(src), str(h5)], src),
        "h5 -> safetensors (verified)": ([*ckptkit_cmd, str(h5), str(back)], h5),
    }
    results = {}
    for label, (cmd, source) in cases.items():
        runs = []
        for _ in range(args.runs):
            warm(source)
            runs.append(timed(cmd))
        results[label] = {"seconds": statistics.median(r[0] for r in runs), "peak_anon_bytes": max(r[1] for r in runs)}
    with ckptkit.load(src) as a, ckptkit.load(back) as b:
        same = all(a.read_tensor(n).tobytes() == b.read_tensor(n).tobytes() for n in a.names())
    cp_seconds = results["cp"]["seconds"]
    limit = largest + 256 * 10**6
    summary = {
        "bytes": src.stat().st_size,
        "h5_bytes": h5.stat().st_size,
        "tensors": len(synth.tensor_infos()),
        "largest_tensor_bytes": largest,
        "memory_limit_bytes": limit,
        "round_trip_bit_exact": same,
        "results": {k: {**v, "x_cp": v["seconds"] / cp_seconds} for k, v in results.items()},
    }
    for path in (h5, back, copy):
        path.unlink(missing_ok=True)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    size = f"{summary['bytes'] / 1e9:.2f} GB {args.dtype}, {summary['tensors']} tensors"
    print(f"{size}, largest {largest / 1e6:.0f} MB; medians of {args.runs}; round trip bit-exact: {same}")
    print(f"{'':32} {'seconds':>8} {'x cp':>6} {'peak anon MB':>13}  (limit {limit / 1e6:.0f} MB)")
    for label, r in summary["results"].items():
        print(f"{label:32} {r['seconds']:8.2f} {r['x_cp']:6.2f} {r['peak_anon_bytes'] / 1e6:13.0f}")


if __name__ == "__main__":
    main()
