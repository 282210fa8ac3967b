"""Benchmark: ``ckptkit diff`` against the script people write with torch, on two ~2 GB fp16 files.

Makes two transformer-like safetensors checkpoints (B = A plus small noise on every tensor) in
a temporary folder, warms the page cache, then times each command in a fresh process, in
alternating order, and reports the median wall time and the peak anonymous memory (``RssAnon``
of the child, polled every 5 ms; file pages mapped from the checkpoints are not counted).

    python bench/diff_bench.py                # ~2.3 GB per file, 3 rounds
    python bench/diff_bench.py --layers 4     # a quick run on smaller files
    python bench/diff_bench.py --dir /data/x  # keep the files there and reuse them next time

Not part of the test suite: it needs ~5 GB of disk and a minute or more.
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

from ckptkit.core.dtypes import by_name  # noqa: E402
from ckptkit.core.model import TensorInfo  # noqa: E402
from ckptkit.formats.safetensors import build_header  # noqa: E402

NAIVE_SCRIPT = r"""
import sys
import torch
from safetensors.torch import load_file

a = load_file(sys.argv[1])
b = load_file(sys.argv[2])
rows = []
for name in a:
    x, y = a[name].float(), b[name].float()
    d = x - y
    rows.append((
        name,
        d.abs().max().item(),
        d.abs().mean().item(),
        d.norm().item(),
        (d.norm() / x.norm()).item(),
        torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0).item(),
        (a[name] == b[name]).float().mean().item(),
    ))
rows.sort(key=lambda r: -r[4])
for r in rows[:10]:
    print(*r)
"""


def shapes(layers: int, hidden: int, inter: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """A Llama-like state dict."""
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + f"self_attn.{n}_proj.weight", (hidden, hidden)) for n in "qkvo"]
        out += [(p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden))]
        out += [(p + "mlp.down_proj.weight", (hidden, inter))]
        out += [(p + "input_layernorm.weight", (hidden,)), (p + "post_attention_layernorm.weight", (hidden,))]
    out += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return out


def make_pair(folder: Path, layers: int) -> tuple[Path, Path, int]:
    """Write a.safetensors and b.safetensors tensor by tensor; returns the paths and the largest tensor's bytes."""
    fp16 = by_name("float16")
    infos = [TensorInfo(n, fp16, s) for n, s in shapes(layers, 2048, 5632, 32000)]
    header, ordered = build_header(infos, {"format": "pt"})
    pa, pb = folder / "a.safetensors", folder / "b.safetensors"
    if pa.exists() and pb.exists():
        return pa, pb, max(t.nbytes for t in infos)
    rng = np.random.default_rng(0)
    with open(pa, "wb") as fa, open(pb, "wb") as fb:
        fa.write(header)
        fb.write(header)
        for ti in ordered:
            a = rng.standard_normal(ti.numel, dtype=np.float32)
            a *= 0.02
            noise = rng.standard_normal(ti.numel, dtype=np.float32)
            noise *= 2e-4
            noise += a
            fa.write(a.astype(np.float16).tobytes())
            fb.write(noise.astype(np.float16).tobytes())
    return pa, pb, max(t.nbytes for t in infos)


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RssAnon bytes of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
                    break
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.005)
    proc.wait()
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(
            f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.read().decode() if proc.stderr else ''}"
        )
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=20, help="transformer blocks (20: ~2.3 GB per file)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="keep the files here (default: a temporary folder, removed after)")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="ckptkit-diff-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        pa, pb, largest = make_pair(folder, args.layers)
        print(f"files: {pa.stat().st_size / 1e9:.2f} GB each, largest tensor {largest / 1e6:.0f} MB "
              f"(made in {time.perf_counter() - t0:.0f} s)")  # fmt: skip
        for p in (pa, pb):  # warm the page cache, as both runs will find it
            with open(p, "rb") as f:
                while f.read(64 << 20):
                    pass
        env_python = sys.executable
        commands = {
            "ckptkit diff": [env_python, "-m", "ckptkit", "diff", str(pa), str(pb), "--json"],
            "naive torch": [env_python, "-c", NAIVE_SCRIPT, str(pa), str(pb)],
        }
        os.environ["PYTHONPATH"] = str(REPO)
        results: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
        for r in range(args.rounds):
            order = list(commands) if r % 2 == 0 else list(reversed(commands))
            for name in order:
                results[name].append(run_measured(commands[name]))
                print(f"  round {r + 1} {name}: {results[name][-1][0]:.2f} s", flush=True)
        budget = 4 * largest + 256 * 1024 * 1024
        print(f"\n{'command':14s} {'median s':>9s} {'min s':>7s} {'peak RssAnon':>13s}")
        for name, runs in results.items():
            times = [t for t, _ in runs]
            peak = max(m for _, m in runs)
            print(f"{name:14s} {statistics.median(times):9.2f} {min(times):7.2f} {peak / 1e6:10.0f} MB")
        speedup = statistics.median(t for t, _ in results["naive torch"]) / statistics.median(
            t for t, _ in results["ckptkit diff"]
        )
        ours_peak = max(m for _, m in results["ckptkit diff"])
        print(f"\nspeed-up (median): {speedup:.1f}x (target >= 4x)")
        print(f"ckptkit peak anonymous memory {ours_peak / 1e6:.0f} MB; budget 4 x largest tensor + 256 MB = "
              f"{budget / 1e6:.0f} MB: {'within' if ours_peak < budget else 'OVER'}")  # fmt: skip
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
