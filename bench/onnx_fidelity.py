"""Does a patched ONNX model compute what the tuned PyTorch model computes? A table, exporter x model.

Each model of ``tests/onnx_zoo.py`` is exported by torch.onnx (legacy with and without constant
folding, dynamo with and without its optimizer) from BASE weights, then NEW weights (BASE plus
noise) are written into the exported graph with ``ckptkit convert NEW.pt OUT.onnx --template
MODEL.onnx`` in several ways. Each cell is the largest absolute difference between onnxruntime's
output and torch's (NEW weights) when the command exits 0, or the one-line refusal when it does not.

    python bench/onnx_fidelity.py                         # this checkout's ckptkit
    python bench/onnx_fidelity.py --code /path/to/other   # another checkout's ckptkit (PYTHONPATH)
    python bench/onnx_fidelity.py --ways plain,partial    # only some invocations

Not part of the test suite (tests/test_onnx_fidelity.py asserts the same with tolerances).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from tests.onnx_zoo import EXPORTERS, MODELS, export_all, run_onnx  # noqa: E402

WAYS = {
    "plain": [],
    "partial": ["--allow-partial"],
    "base": ["--base", "{base}"],
}


def cell(code: Path, exported, way: str, out: Path) -> str:
    args = [a.format(base=exported.base) for a in WAYS[way]]
    cmd = [sys.executable, "-m", "ckptkit", "convert", str(exported.new), str(out), "--template", str(exported.onnx)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    # From the checkout's folder: ``python -m`` puts the working directory first on sys.path.
    proc = subprocess.run([*cmd, *args, "--force"], capture_output=True, text=True, env=env, cwd=code)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        return "refused: " + (lines[-1] if lines else f"exit {proc.returncode}")
    err = float(np.abs(run_onnx(out, exported.x) - exported.want).max())
    return f"exit 0, max abs err {err:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose ckptkit runs")
    parser.add_argument("--ways", default=",".join(WAYS), help="comma-separated: " + ", ".join(WAYS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--exporters", default=",".join(EXPORTERS))
    args = parser.parse_args()
    ways = args.ways.split(",")
    print("| exporter | model | unpatched | " + " | ".join(ways) + " |")
    print("|---|---|---|" + "---|" * len(ways))
    with tempfile.TemporaryDirectory() as tmp:
        exports = {model: export_all(model, Path(tmp)) for model in args.models.split(",")}
        for exporter in args.exporters.split(","):
            for model in args.models.split(","):
                exported = exports[model][exporter]
                if exported.onnx is None:
                    print(f"| {exporter} | {model} | export failed: {exported.error} |" + " |" * len(ways))
                    continue
                stale = float(np.abs(run_onnx(exported.onnx, exported.x) - exported.want).max())
                cells = [cell(args.code, exported, w, Path(tmp) / "out.onnx") for w in ways]
                row = " | ".join(c.replace("|", "\\|") for c in cells)
                print(f"| {exporter} | {model} | {stale:.3g} | {row} |", flush=True)


if __name__ == "__main__":
    main()
