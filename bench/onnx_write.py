"""PyTorch -> ONNX with external data: ckptkit against `cp` and against the onnx helpers.

Makes a ~2.3 GB fp16 transformer-like state_dict (about 200 tensors) under bench/out/, then times,
each a few times with a warm page cache and reports the median:
  cp                         copy of the .pt file (the floor)
  ckptkit --no-verify        `ckptkit convert model.pt model.onnx --no-verify` (external data: the
                             model passes 2 GiB)
  ckptkit                    the same with the default check after writing (re-reads everything)
  ckptkit.convert() only     the conversion inside Python, timed there: without interpreter start
  ckptkit startup            the CLI command on a one-tensor file: the fixed cost of starting
                             Python and importing numpy, click and rich
  onnx helpers (--naive)     torch.load + numpy_helper.from_array + save_model(save_as_external_data)
Peak memory is the child process's peak anonymous memory (RssAnon polled from /proc every 5 ms),
which leaves out file pages mapped from the checkpoint. With --check the written model is also
given to onnx.checker.check_model (by path) and run in onnxruntime.

    python bench/onnx_write.py [--runs 3] [--naive] [--check] [--source pt|safetensors]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
PY = sys.executable


def make_checkpoint(path: Path, layers: int = 20, d: int = 2048, ff: int = 5632, vocab: int = 32000) -> None:
    import torch

    gen = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {"embed.weight": torch.randn(vocab, d, generator=gen, dtype=torch.float16)}
    for i in range(layers):
        p = f"layers.{i}."
        for name in ("q", "k", "v", "o"):
            sd[p + f"attn.{name}.weight"] = torch.randn(d, d, generator=gen, dtype=torch.float16)
        sd[p + "mlp.gate.weight"] = torch.randn(ff, d, generator=gen, dtype=torch.float16)
        sd[p + "mlp.up.weight"] = torch.randn(ff, d, generator=gen, dtype=torch.float16)
        sd[p + "mlp.down.weight"] = torch.randn(d, ff, generator=gen, dtype=torch.float16)
        sd[p + "norm1.weight"] = torch.ones(d, dtype=torch.float16)
        sd[p + "norm2.weight"] = torch.ones(d, dtype=torch.float16)
    sd["norm.weight"] = torch.ones(d, dtype=torch.float16)
    sd["lm_head.weight"] = torch.randn(vocab, d, generator=gen, dtype=torch.float16)
    if path.suffix == ".pt":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, path)


NAIVE = """
import sys, torch, onnx
from onnx import helper, numpy_helper
sd = torch.load(sys.argv[1], weights_only=True)
inits = [numpy_helper.from_array(t.numpy(), n) for n, t in sd.items()]
outs = [helper.make_tensor_value_info(n, 10, list(t.shape)) for n, t in sd.items()]
model = helper.make_model(helper.make_graph([], "w", [], outs, initializer=inits),
                          opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
onnx.save_model(model, sys.argv[2], save_as_external_data=True, all_tensors_to_one_file=True,
                location=sys.argv[2].rsplit("/", 1)[-1] + ".data")
"""


IN_PROCESS = """
import sys, time, ckptkit
start = time.perf_counter()
ckptkit.convert(sys.argv[1], sys.argv[2], force=True, verify=False)
print("SECONDS", time.perf_counter() - start)
"""


def measure(cmd: list[str]) -> tuple[float, int]:
    """Wall time (or the time the command reports itself) and peak RssAnon (bytes) of a command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        status = f"/proc/{proc.pid}/status"
        while not done.is_set():
            try:
                with open(status) as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                return
            time.sleep(0.005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    output, _ = proc.communicate()
    code = proc.returncode
    elapsed = time.perf_counter() - start
    for line in output.splitlines():
        if line.startswith("SECONDS "):
            elapsed = float(line.split()[1])
    done.set()
    thread.join()
    if code:
        raise SystemExit(f"{cmd} failed with exit code {code}")
    return elapsed, peak


def clean(dst: Path) -> None:
    for p in (dst, dst.with_name(dst.name + ".data")):
        p.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--naive", action="store_true", help="also time the onnx-helper script (slow, ~10 GB memory)")
    ap.add_argument("--check", action="store_true", help="run onnx.checker and onnxruntime on the written model")
    ap.add_argument("--source", choices=["pt", "safetensors"], default="pt")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    src = OUT / f"model.{args.source}"
    if not src.exists():
        print(f"making {src} ...", flush=True)
        make_checkpoint(src)
    size = src.stat().st_size
    dst = OUT / "model.onnx"
    cp_dst = OUT / "copy.bin"
    largest = _largest_tensor(src)
    runs: dict[str, list[tuple[float, int]]] = {}
    tiny = OUT / "tiny.safetensors"
    if not tiny.exists():
        sys.path.insert(0, str(REPO))
        import numpy as np

        import ckptkit

        ckptkit.save({"w": np.zeros(4, np.float16)}, tiny)
    cases = {
        "cp": ["cp", str(src), str(cp_dst)],
        "ckptkit --no-verify": [PY, "-m", "ckptkit", "convert", str(src), str(dst), "--force", "--no-verify"],
        "ckptkit": [PY, "-m", "ckptkit", "convert", str(src), str(dst), "--force"],
        "ckptkit.convert() only": [PY, "-c", IN_PROCESS, str(src), str(dst)],
        "ckptkit startup": [PY, "-m", "ckptkit", "convert", str(tiny), str(OUT / "t.onnx"), "--force", "--no-verify"],
    }
    if args.naive:
        cases["onnx helpers"] = [PY, "-c", NAIVE, str(src), str(dst)]
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    for _ in range(args.runs):
        for name, cmd in cases.items():
            clean(dst)
            cp_dst.unlink(missing_ok=True)
            runs.setdefault(name, []).append(measure(cmd))
    cp_time = statistics.median(t for t, _ in runs["cp"])
    print(f"source {src.name}: {size / 1e9:.2f} GB, largest tensor {largest / 1e6:.0f} MB, {args.runs} runs")
    print(f"{'what':22} {'median s':>9} {'x cp':>6} {'peak RssAnon':>13}")
    report = {"source": str(src), "bytes": size, "largest_tensor": largest, "runs": args.runs, "results": {}}
    for name, values in runs.items():
        t = statistics.median(v[0] for v in values)
        mem = max(v[1] for v in values)
        print(f"{name:22} {t:9.2f} {t / cp_time:6.2f} {mem / 1e6:10.0f} MB")
        report["results"][name] = {"seconds": sorted(v[0] for v in values), "peak_rss_anon": mem}
    if args.check:
        clean(dst)
        subprocess.run(cases["ckptkit --no-verify"], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        report["check"] = _check(dst)
        print("check:", report["check"])
    (OUT / "onnx_write.json").write_text(json.dumps(report, indent=2))
    cp_dst.unlink(missing_ok=True)


def _largest_tensor(src: Path) -> int:
    sys.path.insert(0, str(REPO))
    import ckptkit

    with ckptkit.load(src) as ckpt:
        return max(ti.nbytes for ti in ckpt.tensor_infos())


def _check(dst: Path) -> str:
    code = (
        "import sys, onnx, onnxruntime as ort; onnx.checker.check_model(sys.argv[1]); "
        "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']); "
        "out = s.run(['norm.weight', 'layers.0.attn.q.weight'], {}); "
        "print('checker ok, onnxruntime ran:', [o.shape for o in out])"
    )
    return subprocess.run([PY, "-c", code, str(dst)], check=True, capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
