"""Benchmark: ``ckptkit timeline`` over a run of snapshots, against ``cat`` of the same files and a naive script.

Writes N fp16 safetensors snapshots of a transformer-like model (each the previous plus a small
update, one layer frozen), warms the page cache, then times in fresh processes, alternating:
``cat`` of every file to /dev/null, ``ckptkit timeline --json``, and the script a user writes
(load every snapshot whole with safetensors + torch, then norms and update ratios per tensor).
Prints medians, the ratio against ``cat`` and the peak anonymous memory (``RssAnon``; file pages
mapped from the snapshots are not counted) against 2 x the largest tensor + 256 MB.

    python bench/timeline_bench.py                      # 10 snapshots of ~500 MB
    python bench/timeline_bench.py --snapshots 4 --mb 50 --rounds 1   # a quick run
    python bench/timeline_bench.py --no-naive --baseline ../main   # against another checkout, same run

Not part of the test suite: the default needs ~5 GB of disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import measure  # noqa: E402 - bench/measure.py: child processes' time and peak anonymous memory

from ckptkit.core.dtypes import by_name  # noqa: E402
from ckptkit.core.model import TensorInfo  # noqa: E402
from ckptkit.formats.safetensors import build_header  # noqa: E402

NAIVE_SCRIPT = r"""
import sys, torch
from safetensors.torch import load_file
snaps = [load_file(p) for p in sys.argv[1:]]
for name in snaps[0]:
    prev = None
    for s in snaps:
        w = s[name].double()
        norm = w.norm().item()
        ratio = None if prev is None else ((w - prev).norm() / prev.norm()).item()
        bad = (~torch.isfinite(w)).sum().item()
        prev = w
    print(name, norm, ratio, bad)
"""


def shapes(total_bytes: int) -> list[tuple[str, tuple[int, ...]]]:
    hidden, inter = 1024, 2816
    per_layer = 2 * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden)
    layers = max(1, (total_bytes - 2 * 2 * 8000 * hidden) // per_layer)
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (8000, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + f"self_attn.{n}_proj.weight", (hidden, hidden)) for n in "qkvo"]
        out += [(p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden))]
        out += [(p + "mlp.down_proj.weight", (hidden, inter))]
        out += [(p + "input_layernorm.weight", (hidden,)), (p + "post_attention_layernorm.weight", (hidden,))]
    return [*out, ("lm_head.weight", (8000, hidden))]


def make_run(folder: Path, snapshots: int, mb: int) -> tuple[list[Path], int]:
    fp16 = by_name("float16")
    infos = [TensorInfo(n, fp16, s) for n, s in shapes(mb * 1_000_000)]
    header, ordered = build_header(infos, {"format": "pt"})
    paths = [folder / f"step_{(i + 1) * 100}.safetensors" for i in range(snapshots)]
    if all(p.exists() for p in paths):
        return paths, max(t.nbytes for t in infos)
    rng = np.random.default_rng(0)
    state = {ti.name: (rng.standard_normal(ti.numel, dtype=np.float32) * 0.02) for ti in ordered}
    for i, path in enumerate(paths):
        with open(path, "wb") as f:
            f.write(header)
            for ti in ordered:
                if i and "layers.0." not in ti.name:  # layer 0 stays frozen
                    state[ti.name] += rng.standard_normal(ti.numel, dtype=np.float32) * 1e-3
                f.write(state[ti.name].astype(np.float16).tobytes())
    return paths, max(t.nbytes for t in infos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=10)
    parser.add_argument("--mb", type=int, default=500, help="size of each snapshot in MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive script (it holds every snapshot)")
    parser.add_argument("--dir", type=Path, help="keep the files here (default: a temporary folder, removed after)")
    parser.add_argument(
        "--baseline", type=Path, metavar="CHECKOUT",
        help="also time ckptkit timeline from this checkout of ckptkit, in the same interleaved rounds",
    )  # fmt: skip
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="ckptkit-timeline-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        paths, largest = make_run(folder, args.snapshots, args.mb)
        total = sum(p.stat().st_size for p in paths)
        print(f"{len(paths)} snapshots, {total / 1e9:.2f} GB, largest tensor {largest / 1e6:.0f} MB "
              f"(made in {time.perf_counter() - t0:.0f} s)")  # fmt: skip
        for p in paths:
            with open(p, "rb") as f:
                while f.read(64 << 20):
                    pass
        files = [str(p) for p in paths]
        commands = {
            "cat": ["cat", *files],
            "ckptkit timeline": [sys.executable, "-m", "ckptkit", "timeline", *files, "--json"],
        }
        if args.baseline is not None:
            commands["baseline timeline"] = commands["ckptkit timeline"]
        if not args.no_naive:
            commands["naive torch"] = [sys.executable, "-c", NAIVE_SCRIPT, *files]
        results: dict[str, list[measure.Run]] = {name: [] for name in commands}
        for r in range(args.rounds):
            for name in commands if r % 2 == 0 else reversed(list(commands)):
                # Each ckptkit runs from its own checkout: ``python -m`` puts the working folder first on sys.path.
                repo = args.baseline.resolve() if "baseline" in name and args.baseline is not None else REPO
                run = measure.run(commands[name], env=measure.child_env(repo), cwd=repo)
                if not run.ok:
                    raise SystemExit(f"{name} failed ({run.returncode}): {run.stderr[-2000:]}")
                results[name].append(run)
                load = os.getloadavg()[0]
                print(
                    f"  round {r + 1} {name}: {run.seconds:.2f} s (CPU {run.cpu_seconds:.2f} s, load {load:.2f})",
                    flush=True,
                )
        medians = {name: statistics.median(x.seconds for x in runs) for name, runs in results.items()}
        print(f"\n{'command':18s} {'median s':>9s} {'x cat':>7s} {'CPU s':>7s} {'peak RssAnon':>13s}")
        for name, runs in results.items():
            peak = max(x.peak_anon_bytes for x in runs)
            cpu = statistics.median(x.cpu_seconds for x in runs)
            print(f"{name:18s} {medians[name]:9.2f} {medians[name] / medians['cat']:7.2f} {cpu:7.2f} "
                  f"{peak / 1e6:10.0f} MB")  # fmt: skip
        ours = max(x.peak_anon_bytes for x in results["ckptkit timeline"])
        budget = 2 * largest + 256 * 1024 * 1024
        print(f"\nckptkit timeline: {medians['ckptkit timeline'] / medians['cat']:.2f}x cat (goal <= 3x); "
              f"peak anonymous memory {ours / 1e6:.0f} MB against 2 x largest tensor + 256 MB = "
              f"{budget / 1e6:.0f} MB: {'within' if ours < budget else 'OVER'}")  # fmt: skip
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
