"""Conversions against ``cp`` in interleaved rounds, for ratios that hold on a busy machine.

    python bench/convert_rounds.py --gb 1.4 --rounds 5
    python bench/convert_rounds.py --gb 4 --pairs torch:safetensors,safetensors:keras-h5 --rounds 3
    python bench/convert_rounds.py --against /path/to/other/checkout   # each conversion by both trees

Each round times ``cp`` of the safetensors input, then every conversion (each as a child process,
from a settled start: dirty pages flushed, inputs read into the page cache), so a burst of load
from other work hits both sides of a ratio alike. Per conversion it prints the median time, the
median of the per-round ratios to that round's ``cp`` (of as many bytes as it reads), the median
CPU time and the largest peak anonymous memory; the load average is printed at the start and the
end. With ``--against`` every conversion is also run, in the same round, by the ckptkit of
another checkout (say, the main branch), for a before/after ratio. Inputs come from
bench/synth.py (fp16 by default); outputs go to a scratch folder and are deleted after each run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import measure  # noqa: E402 - bench/ is not a package
import synth  # noqa: E402
from run import _remove, _settle, _size_of  # noqa: E402

EXT = {"safetensors": ".safetensors", "torch": ".pt", "keras-h5": ".h5", "onnx": ".onnx", "gguf": ".gguf"}
DEFAULT_PAIRS = (
    "torch:safetensors,safetensors:torch,torch:safetensors:nv,safetensors:torch:nv,"
    "torch:sharded,safetensors:keras-h5,keras-h5:safetensors,keras-h5:torch"
)


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=1.4, help="checkpoint size in GB")
    p.add_argument("--dtype", default="fp16", choices=synth.DTYPES)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--pairs",
        default=DEFAULT_PAIRS,
        help="comma-separated SRC:DST[:nv] (nv: --no-verify); 'sharded' is safetensors in ~4 shards",
    )
    p.add_argument("--dir", type=Path, default=HERE / "out" / "rounds")
    p.add_argument("--keep", action="store_true", help="keep the inputs for the next run")
    p.add_argument("--against", type=Path, help="another ckptkit checkout whose conversions run in the same rounds")
    args = p.parse_args(argv)
    work = args.dir / f"{args.dtype}-{args.gb:g}gb"
    work.mkdir(parents=True, exist_ok=True)
    inputs = {"torch": work / "input.pt", "safetensors": work / "input.safetensors"}
    if not all(p.exists() for p in inputs.values()):
        synth.make(int(args.gb * 1e9), args.dtype, inputs["torch"], inputs["safetensors"], work / "input.dcp")
    env = measure.child_env(HERE.parent)
    st = inputs["safetensors"]
    nbytes = st.stat().st_size
    pairs = [tuple(x.split(":")) for x in args.pairs.split(",") if x]
    # Inputs of other formats are written once, unverified, from safetensors.
    for pair in pairs:
        src = pair[0]
        if src not in inputs:
            path = work / f"input{EXT[src]}"
            if not path.exists():
                r = measure.run([sys.executable, "-m", "ckptkit", "convert", str(st), str(path), "--to", src,
                                 "--no-verify"], env=env)  # fmt: skip
                if not r.ok:
                    sys.exit(f"could not write the {src} input: {r.stderr.strip()}")
            inputs[src] = path
    scratch = work / "scratch"
    ops: list[tuple[str, list[str], Path, Path]] = [("cp", ["cp", str(st), str(scratch / "copy")], scratch, st)]
    envs = {"cp": env}
    for pair in pairs:
        src, dst = pair[0], pair[1]
        nv = len(pair) > 2 and pair[2] == "nv"
        out_dir = scratch / f"{src}-{dst}{'-nv' if nv else ''}"
        if dst == "sharded":
            target = out_dir / "model.safetensors.index.json"
            extra = ["--shard-size", str(nbytes // 4)]
        else:
            target = out_dir / f"out{EXT[dst]}"
            extra = ["--to", dst]
        argv = [sys.executable, "-m", "ckptkit", "convert", str(inputs[src]), str(target), *extra]
        if nv:
            argv.append("--no-verify")
        label = f"{src} -> {dst}{' --no-verify' if nv else ''}"
        ops.append((label, argv, out_dir, inputs[src]))
        envs[label] = env
        if args.against:
            other = f"{label} [{args.against.name}]"
            ops.append((other, argv, out_dir, inputs[src]))
            envs[other] = measure.child_env(args.against.resolve())
    print(f"# {args.dtype} {nbytes / 1e9:.2f} GB, {args.rounds} rounds; load at start {_load()}", flush=True)
    times: dict[str, list[float]] = {name: [] for name, *_ in ops}
    cpus: dict[str, list[float]] = {name: [] for name, *_ in ops}
    ratios: dict[str, list[float]] = {name: [] for name, *_ in ops}
    peaks: dict[str, int] = {name: 0 for name, *_ in ops}
    for k in range(args.rounds):
        cp_seconds = 0.0
        for name, argv, out_dir, src in ops:
            _remove(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            _settle([src])
            r = measure.run(argv, env=envs[name])
            if not r.ok:
                sys.exit(f"{name} failed: {r.stderr.strip()}")
            _remove(out_dir)
            if name == "cp":
                cp_seconds = r.seconds
            scale = _size_of(src) / nbytes
            times[name].append(r.seconds)
            cpus[name].append(r.cpu_seconds)
            ratios[name].append(r.seconds / (cp_seconds * scale))
            peaks[name] = max(peaks[name], r.peak_anon_bytes)
        print(f"# round {k + 1} done, load {_load()}", file=sys.stderr, flush=True)
    print("| operation | median s | median × cp (per round) | CPU s | peak anon MB |")
    print("|---|---|---|---|---|")
    for name, *_ in ops:
        print(
            f"| {name} | {statistics.median(times[name]):.2f} | {statistics.median(ratios[name]):.2f} "
            f"| {statistics.median(cpus[name]):.2f} | {peaks[name] / 1e6:.0f} |"
        )
    print(f"# load at end {_load()}")
    if not args.keep:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
