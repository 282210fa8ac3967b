"""TensorFlow checkpoints against ``cp``: convert both ways, header-only inspect, peak anonymous memory.

    python bench/tf_bench.py                   # 2 GB fp16, 5 interleaved rounds
    python bench/tf_bench.py --size 0.2 --rounds 3

The input is a synthetic safetensors file with the shapes of bench/synth.py (201 tensors, normal
values, in name order as ``safetensors.save_file`` writes them), written here with numpy in 16 MB
pieces; its TensorFlow checkpoint is written by ckptkit itself (``ckptkit convert IN.safetensors
tf/ckpt-1.index``), since generating 2 GB with TensorFlow would take far longer than the
measurement. ckptkit's TensorFlow reader is tested against checkpoints TensorFlow writes
(tests/test_tensorflow_format.py); this bench measures speed only.

Each round runs every command once, in turn, each from a settled start (pending writes synced,
inputs read into the page cache), and ``cp`` of the same input in the same round; a command's
ratio is the median over rounds of its time divided by that round's ``cp`` time. The load average
is printed with every round, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import measure  # noqa: E402 - bench/ is not a package
import synth  # noqa: E402


def write_safetensors(path: Path, total_bytes: int, seed: int = 0) -> None:
    """A float16 safetensors file of synth.layout's shapes, written piece by piece (memory stays small),
    its tensors in name order as the safetensors library writes them."""
    import numpy as np

    shapes = dict(sorted(synth.layout(total_bytes).shapes.items()))
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for shape in shapes.values():
            count = math.prod(shape)
            for start in range(0, count, 8 << 20):
                n = min(8 << 20, count - start)
                f.write((rng.standard_normal(n, np.float32) * 0.02).astype(np.float16).tobytes())


def _files(path: Path) -> list[Path]:
    """A checkpoint's files: a TensorFlow prefix's index and data files, or the file itself."""
    if path.name.endswith(".index"):
        return [path, *sorted(path.parent.glob(path.name.removesuffix(".index") + ".data-*"))]
    return [path]


def _settle(inputs: list[Path]) -> None:
    os.sync()
    buf = bytearray(16 << 20)
    for path in inputs:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def _clear(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _ckptkit(*args: object) -> list[str]:
    return [sys.executable, "-m", "ckptkit", *map(str, args)]


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=float, default=2.0, help="checkpoint size in GB")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workdir", type=Path, default=HERE / "out" / "tf")
    p.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    args = p.parse_args(argv)
    env = measure.child_env(REPO)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    st = work / "input.safetensors"
    tf = work / "tf" / "ckpt-1.index"
    if not st.exists() or abs(st.stat().st_size - args.size * 1e9) > 0.05 * args.size * 1e9:
        t0 = time.perf_counter()
        write_safetensors(st, int(args.size * 1e9))
        took = time.perf_counter() - t0
        print(f"# wrote {st.stat().st_size / 1e9:.2f} GB safetensors in {took:.0f} s", file=sys.stderr)
        shutil.rmtree(tf.parent, ignore_errors=True)
    if not tf.exists():
        tf.parent.mkdir(parents=True, exist_ok=True)
        r = measure.run(_ckptkit("convert", st, tf, "--no-verify"), env=env)
        if not r.ok:
            sys.exit(f"writing the TensorFlow checkpoint failed: {r.stderr.strip()}")
    tf_files = _files(tf)
    st_bytes, tf_bytes = st.stat().st_size, sum(f.stat().st_size for f in tf_files)
    out = work / "out"
    # (label, argv, inputs, cp input): each ratio is against cp of the command's own input.
    ops = [
        ("cp safetensors", ["cp", str(st), str(out / "copy")], [st], None),
        ("cp tensorflow data", ["cp", *map(str, tf_files), str(out)], tf_files, None),
        ("convert tensorflow -> safetensors", _ckptkit("convert", tf, out / "o.safetensors"), tf_files, "tensorflow"),
        ("convert tensorflow -> safetensors --no-verify",
         _ckptkit("convert", tf, out / "o.safetensors", "--no-verify"), tf_files, "tensorflow"),
        ("convert safetensors -> tensorflow", _ckptkit("convert", st, out / "ckpt-1.index"), [st], "safetensors"),
        ("convert safetensors -> tensorflow --no-verify",
         _ckptkit("convert", st, out / "ckpt-1.index", "--no-verify"), [st], "safetensors"),
        ("inspect safetensors --json", _ckptkit("inspect", st, "--json"), [st], None),
        ("inspect tensorflow --json", _ckptkit("inspect", tf, "--json"), tf_files, None),
        ("verify tensorflow", _ckptkit("verify", tf), tf_files, "tensorflow"),
    ]  # fmt: skip
    runs: dict[str, list[measure.Run]] = {op[0]: [] for op in ops}
    ratios: dict[str, list[float]] = {op[0]: [] for op in ops}
    print(f"# {st_bytes / 1e9:.2f} GB safetensors, {tf_bytes / 1e9:.2f} GB TensorFlow; {os.cpu_count()} cores",
          file=sys.stderr)  # fmt: skip
    for k in range(args.rounds):
        cp_time: dict[str, float] = {}
        for label, cmd, inputs, ref in ops:
            _clear(out)
            _settle(inputs)
            r = measure.run(cmd, env=env)
            if not r.ok:
                sys.exit(f"{label} failed: {r.stderr.strip()}")
            runs[label].append(r)
            if label == "cp safetensors":
                cp_time["safetensors"] = r.seconds
            elif label == "cp tensorflow data":
                cp_time["tensorflow"] = r.seconds
            if ref is not None:
                ratios[label].append(r.seconds / cp_time[ref])
        print(f"# round {k + 1}: load {_load()}; "
              + ", ".join(f"{label} {rs[-1].seconds:.2f}" for label, rs in runs.items()), file=sys.stderr)  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    st_inspect = statistics.median(r.seconds for r in runs["inspect safetensors --json"])
    lines = [
        f"{st_bytes / 1e9:.2f} GB fp16, {args.rounds} interleaved rounds, load at the end {_load()}",
        "",
        "| operation | median s | best s | × cp (median of rounds) | CPU s | peak anon MB |",
        "|---|---|---|---|---|---|",
    ]
    for label, rs in runs.items():
        ratio = f"{statistics.median(ratios[label]):.2f}" if ratios[label] else "—"
        if label.startswith("inspect"):
            ratio = f"{statistics.median(r.seconds for r in rs) / st_inspect:.2f} × safetensors inspect"
        lines.append(
            f"| {label} | {statistics.median(r.seconds for r in rs):.2f} | {min(r.seconds for r in rs):.2f} | {ratio} "
            f"| {statistics.median(r.cpu_seconds for r in rs):.2f} | {max(r.peak_anon_bytes for r in rs) / 1e6:.0f} |"
        )
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
