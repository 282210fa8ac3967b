"""Benchmark ckptkit on synthetic checkpoints of growing size against cp, sha256 and naive scripts.

    python bench/run.py                       # 0.5, 1, 2, 4 GB; fp16 and bf16 (about half an hour)
    python bench/run.py --quick               # one 50 MB fp16 checkpoint: a smoke run (a few minutes)
    python bench/run.py --sizes 1,2 --dtypes bf16 --repeat 3

For each size and dtype it writes a transformer-like checkpoint with torch.save and safetensors
(bench/synth.py), then times, each as a child process: ckptkit inspect, convert between every pair
of formats this ckptkit reads and writes (sharded safetensors counts as one), diff, hash and
verify; ``cp`` of the same bytes; single-threaded sha256; and the script a user would write for
the same job (bench/naive/). Commands this ckptkit does not have are reported as not available.
Results go to stdout as tables and to bench/out/results.json and results.md. Memory is peak
anonymous memory (bench/measure.py says why); ratios compare runs made in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import measure  # noqa: E402 - bench/ is not a package
import synth  # noqa: E402

SHARDS = 4  # sharded outputs are split in about this many shards at every size
SHARDED = "safetensors-sharded"


@dataclass
class Row:
    """One measured operation at one size and dtype."""

    op: str
    dtype: str
    size_gb: float
    input_bytes: int
    seconds: float | None = None
    cpu_seconds: float | None = None
    peak_anon_mb: float | None = None
    vs_cp: float | None = None
    cpu_vs_cp: float | None = None
    vs_sha256: float | None = None
    naive_seconds: float | None = None
    naive_peak_anon_mb: float | None = None
    speedup_vs_naive: float | None = None
    status: str = "ok"
    notes: list[str] = field(default_factory=list)

    @property
    def gb_per_s(self) -> float | None:
        return self.input_bytes / 1e9 / self.seconds if self.seconds else None


@dataclass
class Op:
    """An operation to measure: ckptkit's command, and the naive script for the same job if any."""

    name: str
    argv: list[str] | None  # None: not available in this ckptkit
    inputs: list[Path]
    output: Path | None = None
    naive: list[str] | None = None
    naive_output: Path | None = None
    keep_output: bool = False


def probe() -> dict:
    """Which commands and read-write formats the ckptkit in this tree has."""
    # The group loads its subcommands on demand: ask it for their names, not for those loaded so far.
    code = (
        "import json, click; from ckptkit.cli import cli; from ckptkit import registry\n"
        "fmts = {f.name: f.default_extension for f in registry.formats() if f.can_read and f.can_write}\n"
        "readable = [f.name for f in registry.formats() if f.can_read]\n"
        # The group loads subcommands on demand: ask it for their names, not for those loaded so far.
        "commands = sorted(cli.list_commands(click.Context(cli)))\n"
        "print(json.dumps({'commands': commands, 'formats': fmts, 'readable': readable}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _env() -> dict[str, str]:
    return measure.child_env(REPO)


def _ckptkit(*args: object) -> list[str]:
    return [sys.executable, "-m", "ckptkit", *map(str, args)]


def _naive(script: str, *args: object) -> list[str]:
    return [sys.executable, str(HERE / "naive" / script), *map(str, args)]


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def _with_data(path: Path) -> list[Path]:
    """A checkpoint's files: a TensorFlow index with the one data file ckptkit writes beside it."""
    if path.name.endswith(".index"):
        return [path, path.with_name(path.name.removesuffix(".index") + ".data-00000-of-00001")]
    return [path]


def _remove(path: Path | None) -> None:
    """Delete a file, or empty a folder (a sharded output's folder stays for the next write); a
    TensorFlow index goes with its data files."""
    if path is None:
        return
    if path.name.endswith(".index"):
        for data in path.parent.glob(path.name.removesuffix(".index") + ".data-*"):
            data.unlink()
    if not path.exists():
        return
    if path.is_dir():
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        path.unlink()


def plan_ops(work: Path, pt: Path, st: Path, dcp: Path, caps: dict, shard_size: int) -> list[Op]:
    """The operations for one checkpoint, in an order where each input exists when needed."""
    commands, formats = set(caps["commands"]), dict(caps["formats"])
    torch_fmt = next((n for n in ("torch", "pytorch") if n in formats), None)
    files: dict[str, Path] = {"safetensors": st}
    if torch_fmt:
        files[torch_fmt] = pt
    targets: dict[str, Path] = {}
    for name, ext in formats.items():
        targets[name] = work / name / f"converted{ext or '.' + name}"
    targets[SHARDED] = work / "sharded" / "model.safetensors.index.json"
    scratch = work / "scratch"  # outputs that are deleted after each run; kept ones are inputs later
    ops = [
        Op("inspect safetensors", _ckptkit("inspect", st, "--json"), [st], naive=_naive("naive_inspect.py", st)),
        Op(
            "inspect torch",
            _ckptkit("inspect", pt, "--json") if torch_fmt else None,
            [pt],
            naive=_naive("naive_inspect.py", pt),
        ),
    ]
    # First safetensors to every format (keeping those outputs as inputs), then the rest.
    order = ["safetensors"] + [f for f in targets if f != "safetensors"]
    sources = dict(files)
    for src_name in order:
        for dst_name in order:
            if src_name == dst_name:
                continue
            label = f"convert {src_name} -> {dst_name}"
            src = sources.get(src_name)
            if src is None:
                ops.append(Op(label, None, [pt]))
                continue
            keep = src_name == "safetensors" and dst_name not in files
            dst = targets[dst_name] if keep else scratch / f"{dst_name}" / targets[dst_name].name
            dst.parent.mkdir(parents=True, exist_ok=True)
            # Every output owns its folder: shards, and an ONNX file's external data beside it
            # (written past 2 GB), go with it.
            cleanup = dst.parent
            extra = ["--shard-size", str(shard_size)] if dst_name == SHARDED else []
            to = [] if dst_name == SHARDED else ["--to", dst_name]
            naive = None
            naive_out = None
            if {src_name, dst_name} <= {"safetensors", torch_fmt, SHARDED}:
                if dst_name == SHARDED:
                    (work / "naive-sharded").mkdir(exist_ok=True)
                    naive_out = work / "naive-sharded"
                    naive = _naive("naive_convert.py", src, naive_out / "model.safetensors.index.json", shard_size)
                else:
                    naive_out = work / ("naive" + (".safetensors" if dst_name == "safetensors" else ".pt"))
                    naive = _naive("naive_convert.py", src, naive_out)
            # An output written earlier counts its folder's bytes: a shard index its shards, an ONNX
            # file its external data, a TensorFlow index its data file.
            data = [src] if src in (pt, st) else [src.parent]
            argv = _ckptkit("convert", src, dst, *to, *extra)
            ops.append(Op(label, argv, data, cleanup, naive, naive_out, keep))
            if keep:
                sources[dst_name] = dst
            if {src_name, dst_name} == {"safetensors", torch_fmt}:
                quick = scratch / f"{dst_name}-nv" / targets[dst_name].name
                quick.parent.mkdir(parents=True, exist_ok=True)
                nv = _ckptkit("convert", src, quick, *to, "--no-verify")
                ops.append(Op(f"{label} --no-verify", nv, data, quick.parent))
    if torch_fmt is None:
        ops.append(Op("convert safetensors -> torch", None, [st]))
    if "tensorflow" in sources:  # header-only inspect of the TensorFlow checkpoint written above
        tf_index = sources["tensorflow"]
        ops.append(Op("inspect tensorflow", _ckptkit("inspect", tf_index, "--json"), _with_data(tf_index)))
    has_dcp = "dcp" in caps.get("readable", [])
    ops.append(Op("inspect dcp", _ckptkit("inspect", dcp, "--json") if has_dcp else None, [dcp]))
    st_out = scratch / "converted.safetensors"
    ops.append(Op("convert dcp -> safetensors", _ckptkit("convert", dcp, st_out, "--force") if has_dcp else None,
                  [dcp], st_out))  # fmt: skip
    if torch_fmt:
        out, naive_out = scratch / "converted.pt", work / "naive.pt"
        argv = _ckptkit("convert", dcp, out, "--force") if has_dcp else None
        naive_argv = _naive("naive_dcp_to_torch.py", dcp, naive_out)
        ops.append(Op(f"convert dcp -> {torch_fmt}", argv, [dcp], out, naive_argv, naive_out))
    ops.append(
        Op("diff safetensors vs torch", _ckptkit("diff", st, pt) if "diff" in commands else None, [st, pt],
           naive=_naive("naive_diff.py", st, pt))
    )  # fmt: skip
    ops.append(Op("hash safetensors", _ckptkit("hash", st) if "hash" in commands else None, [st],
                  naive=_naive("naive_sha256.py", st)))  # fmt: skip
    ops.append(Op("verify safetensors", _ckptkit("verify", st) if "verify" in commands else None, [st],
                  naive=_naive("naive_verify.py", st)))  # fmt: skip
    return ops


def _settle(inputs: list[Path]) -> None:
    """Start every run alike: earlier writes flushed to disk, the inputs read once into the page cache.

    Without this a run pays for the previous run's dirty pages, and a 4 GB output written while
    gigabytes are still dirty stalls on the disk, which measures the disk, not the command.
    """
    os.sync()
    buf = bytearray(16 << 20)
    for path in inputs:
        for f in sorted(path.iterdir()) if path.is_dir() else [path]:
            with open(f, "rb", buffering=0) as src:
                while src.readinto(buf):
                    pass


def timed(argv: list[str], repeat: int, cleanup: Path | None = None, inputs: Sequence[Path] = ()) -> measure.Run:
    """The median wall time and the largest peak over ``repeat`` runs, each from a settled start."""
    runs = []
    for _ in range(repeat):
        _remove(cleanup)
        _settle(list(inputs))
        r = measure.run(argv, env=_env())
        runs.append(r)
        if not r.ok:
            return r
    return measure.Run(
        statistics.median(r.seconds for r in runs),
        max(r.peak_anon_bytes for r in runs),
        0,
        "",
        statistics.median(r.cpu_seconds for r in runs),
    )


def bench_one(size_gb: float, dtype: str, work: Path, caps: dict, args: argparse.Namespace) -> list[Row]:
    work.mkdir(parents=True, exist_ok=True)
    pt, st, dcp = work / "input.pt", work / "input.safetensors", work / "input.dcp"
    t0 = time.perf_counter()
    synth.make(int(size_gb * 1e9), dtype, pt, st, dcp)
    print(f"# {dtype} {size_gb:g} GB: made {st.stat().st_size / 1e9:.2f} GB inputs in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)  # fmt: skip
    nbytes = st.stat().st_size
    cp = timed(["cp", str(st), str(work / "copy")], args.repeat, work / "copy", [st])
    _remove(work / "copy")
    sha = timed(_naive("naive_sha256.py", st), args.repeat, None, [st])
    cp_mb, sha_mb = cp.peak_anon_bytes / 1e6, sha.peak_anon_bytes / 1e6
    cpu_ratio = sha.cpu_seconds / cp.cpu_seconds if cp.cpu_seconds else None
    rows = [
        Row("cp (baseline)", dtype, size_gb, nbytes, seconds=cp.seconds, cpu_seconds=cp.cpu_seconds,
            peak_anon_mb=cp_mb, vs_cp=1.0, cpu_vs_cp=1.0, vs_sha256=cp.seconds / sha.seconds),
        Row("sha256 1 thread (baseline)", dtype, size_gb, nbytes, seconds=sha.seconds, cpu_seconds=sha.cpu_seconds,
            peak_anon_mb=sha_mb, vs_cp=sha.seconds / cp.seconds, cpu_vs_cp=cpu_ratio, vs_sha256=1.0),
    ]  # fmt: skip
    for op in plan_ops(work, pt, st, dcp, caps, nbytes // SHARDS):
        if args.only and not any(op.name.startswith(o) for o in args.only):
            continue
        missing = [p for p in op.inputs if not p.exists()]
        row = Row(op.name, dtype, size_gb, sum(_size_of(p) for p in op.inputs if p.exists()))
        if op.argv is None:
            row.status = "not available"
        elif missing:
            row.status = "no input"
            row.notes.append(f"{missing[0].name} was not written (its conversion was refused)")
        else:
            r = timed(op.argv, args.repeat, op.output, op.inputs)
            if r.ok or op.name.startswith("diff"):  # diff exits 1 when it finds differences
                row.seconds, row.peak_anon_mb = r.seconds, r.peak_anon_bytes / 1e6
                # Against cp and sha256 of as many bytes as the command reads (diff reads two files).
                scale = row.input_bytes / nbytes
                row.vs_cp, row.vs_sha256 = r.seconds / (cp.seconds * scale), r.seconds / (sha.seconds * scale)
                row.cpu_seconds = r.cpu_seconds
                row.cpu_vs_cp = r.cpu_seconds / (cp.cpu_seconds * scale) if cp.cpu_seconds else None
                if not r.ok:
                    row.notes.append(f"exit {r.returncode}")
            else:
                message = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
                # A one-line ckptkit error with exit 2 is a refusal by design (say, a Keras 3 file
                # needs layer classes a plain state dict lacks); anything else is a failure.
                refused = r.returncode == 2 and message.startswith("ckptkit: error:") and "unexpected" not in message
                row.status = "refused" if refused else "failed"
                row.notes.append(message)
            if not op.keep_output:
                _remove(op.output)
        if op.naive and not args.no_naive and not missing:
            n = timed(op.naive, 1, op.naive_output, op.inputs)
            if n.ok or op.name.startswith("verify"):
                row.naive_seconds, row.naive_peak_anon_mb = n.seconds, n.peak_anon_bytes / 1e6
                if row.seconds:
                    row.speedup_vs_naive = n.seconds / row.seconds
            else:
                row.notes.append("naive script failed: " + (n.stderr.strip().splitlines() or ["?"])[-1])
            _remove(op.naive_output)
        rows.append(row)
        print(f"#   {_line(row)}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work)
    return rows


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _line(r: Row) -> str:
    if r.status != "ok":
        return f"{r.op}: {r.status} {' '.join(r.notes)}"
    return (
        f"{r.op}: {_fmt(r.seconds, '.2f')} s, {_fmt(r.gb_per_s, '.2f')} GB/s, peak {_fmt(r.peak_anon_mb, '.0f')} MB"
        f"; naive {_fmt(r.naive_seconds, '.2f')} s / {_fmt(r.naive_peak_anon_mb, '.0f')} MB"
    )


def table(rows: list[Row]) -> str:
    """Every measurement, one row each."""
    head = (
        "| operation | dtype | size | time s | GB/s | peak anon MB | × cp | × sha256 | CPU s | CPU × cp | naive s "
        "| naive peak MB | faster than naive |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        if r.status != "ok":
            naive = f"{_fmt(r.naive_seconds, '.2f')} | {_fmt(r.naive_peak_anon_mb, '.0f')}"
            lines.append(f"| {r.op} | {r.dtype} | {r.size_gb:g} GB | {r.status} |  |  |  |  |  |  | {naive} |  |")
            continue
        lines.append(
            f"| {r.op} | {r.dtype} | {r.size_gb:g} GB | {_fmt(r.seconds, '.2f')} | {_fmt(r.gb_per_s, '.2f')} "
            f"| {_fmt(r.peak_anon_mb, '.0f')} | {_fmt(r.vs_cp, '.2f')} | {_fmt(r.vs_sha256, '.2f')} "
            f"| {_fmt(r.cpu_seconds, '.2f')} | {_fmt(r.cpu_vs_cp, '.2f')} "
            f"| {_fmt(r.naive_seconds, '.2f')} | {_fmt(r.naive_peak_anon_mb, '.0f')} "
            f"| {_fmt(r.speedup_vs_naive, '.1f')}{'×' if r.speedup_vs_naive else ''} |"
        )
    return head + "\n".join(lines) + "\n"


def scaling(rows: list[Row], sizes: list[float]) -> str:
    """Peak memory and time per size for each operation: flat memory, linear time."""
    cols = " | ".join(f"{s:g} GB" for s in sizes)
    head = f"| operation | dtype | peak anon MB at {cols} | seconds at {cols} |\n"
    head += "|---|---|" + "---|" * (2 * len(sizes)) + "\n"
    lines = []
    seen: dict[tuple[str, str], dict[float, Row]] = {}
    for r in rows:
        seen.setdefault((r.op, r.dtype), {})[r.size_gb] = r
    for (op, dtype), by_size in seen.items():
        if all(r.status != "ok" for r in by_size.values()):
            continue
        peaks = " | ".join(_fmt(by_size[s].peak_anon_mb, ".0f") if s in by_size else "—" for s in sizes)
        secs = " | ".join(_fmt(by_size[s].seconds, ".2f") if s in by_size else "—" for s in sizes)
        lines.append(f"| {op} | {dtype} | {peaks} | {secs} |")
    return head + "\n".join(lines) + "\n"


GOALS = (
    # (label, operation, reference operation (None: cp of the same bytes), largest ratio allowed)
    ("PyTorch -> safetensors, verified", "convert {t} -> safetensors", None, 2.0),
    ("safetensors -> PyTorch, verified", "convert safetensors -> {t}", None, 2.0),
    ("PyTorch -> safetensors, --no-verify", "convert {t} -> safetensors --no-verify", None, 1.3),
    ("safetensors -> PyTorch, --no-verify", "convert safetensors -> {t} --no-verify", None, 1.3),
    ("sharded vs one safetensors file, from PyTorch", "convert {t} -> " + SHARDED, "convert {t} -> safetensors", 1.2),
)


def goals(rows: list[Row], torch_fmt: str = "torch") -> str:
    """The targets the project set itself, each with the ratio this run measured (wall time, which
    the goals are about; CPU time beside it where both sides were measured)."""
    lines = ["| size | dtype | goal | measured | met | in CPU time |", "|---|---|---|---|---|---|"]
    by_key = {(r.op, r.dtype, r.size_gb): r for r in rows if r.status == "ok" and r.seconds}
    keys = sorted({(r.dtype, r.size_gb) for r in rows}, key=lambda k: (k[0], k[1]))

    def add(
        size: float, dtype: str, what: str, value: float | None, limit: float, most: bool = True,
        cpu: float | None = None,
    ) -> None:  # fmt: skip
        shown = "—" if value is None else f"{value:.2f}×"
        met = "—" if value is None else ("yes" if (value <= limit if most else value >= limit) else "no")
        sign = "≤" if most else "≥"
        lines.append(f"| {size:g} GB | {dtype} | {what} {sign} {limit:g}× | {shown} | {met} | {_fmt(cpu, '.2f')}× |")

    for dtype, size in keys:
        for label, op, ref, limit in GOALS:
            row = by_key.get((op.format(t=torch_fmt), dtype, size))
            if ref is None:
                vs_cp, cpu_vs_cp = (row.vs_cp, row.cpu_vs_cp) if row else (None, None)
                add(size, dtype, f"{label}, × cp", vs_cp, limit, cpu=cpu_vs_cp)
                continue
            base = by_key.get((ref.format(t=torch_fmt), dtype, size))
            ratio = cpu = None
            if row and base and row.seconds and base.seconds:
                ratio = row.seconds / base.seconds
                cpu = row.cpu_seconds / base.cpu_seconds if row.cpu_seconds and base.cpu_seconds else None
            add(size, dtype, f"{label}, time ×", ratio, limit, cpu=cpu)
        others = [
            r for (op, d, sz), r in by_key.items()
            if d == dtype and sz == size and op.startswith("convert ") and r.vs_cp is not None
            and "--no-verify" not in op and not {op.split()[1], op.split()[-1]} <= {"safetensors", torch_fmt}
        ]  # fmt: skip
        worst = max(others, key=lambda r: r.vs_cp or 0.0) if others else None
        add(size, dtype, f"every other conversion (worst: {worst.op if worst else '—'}), × cp",
            worst.vs_cp if worst else None, 2.5, cpu=worst.cpu_vs_cp if worst else None)  # fmt: skip
        diff = by_key.get(("diff safetensors vs torch", dtype, size))
        add(size, dtype, "diff, faster than the naive script", diff.speedup_vs_naive if diff else None, 20, most=False)
        hashed = by_key.get(("hash safetensors", dtype, size))
        add(size, dtype, "hash, × one-thread sha256 script (start-up included)",
            hashed.vs_sha256 if hashed else None, 1.0)  # fmt: skip
    return "\n".join(lines) + "\n"


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gb"] = round(int(f.readline().split()[1]) / 1e6, 1)
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="0.5,1,2,4", help="checkpoint sizes in GB, comma-separated")
    p.add_argument("--dtypes", default="fp16,bf16", help="fp16, bf16 or both")
    p.add_argument("--quick", action="store_true", help="one 50 MB fp16 checkpoint: a smoke run")
    p.add_argument("--repeat", type=int, default=1, help="runs per command; the median time is kept")
    p.add_argument("--only", action="append", default=[], help="measure only operations starting with this")
    p.add_argument("--no-naive", action="store_true", help="skip the naive scripts")
    p.add_argument("--workdir", type=Path, default=HERE / "out" / "work", help="where the checkpoints are written")
    p.add_argument("--out", type=Path, default=HERE / "out", help="where results.json and results.md go")
    p.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.dtypes = "0.05", "fp16"
    sizes = [float(s) for s in args.sizes.split(",")]
    dtypes = args.dtypes.split(",")
    unknown = set(dtypes) - set(synth.DTYPES)
    if unknown:
        p.error(f"unknown dtype {sorted(unknown)}; use {', '.join(synth.DTYPES)}")
    start_load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    caps = probe()
    print(f"# ckptkit commands: {', '.join(caps['commands'])}; formats: {', '.join(caps['formats'])}", file=sys.stderr)
    rows: list[Row] = []
    args.workdir.mkdir(parents=True, exist_ok=True)
    for dtype in dtypes:
        for size in sizes:
            free = shutil.disk_usage(args.workdir).free
            if free < size * 1e9 * 7:
                print(f"# skipping {dtype} {size:g} GB: needs ~{size * 7:.0f} GB free disk", file=sys.stderr)
                continue
            rows += bench_one(size, dtype, args.workdir / f"{dtype}-{size:g}gb", caps, args)
    args.out.mkdir(parents=True, exist_ok=True)
    torch_fmt = next((n for n in ("torch", "pytorch") if n in caps["formats"]), "torch")
    info = machine()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    report = {
        "schema": "ckptkit.bench/1",
        "machine": info,
        "sizes_gb": sizes,
        "dtypes": dtypes,
        "repeat": args.repeat,
        "memory": "peak RssAnon of the child process, polled every 3 ms",
        "results": [{**asdict(r), "gb_per_s": r.gb_per_s} for r in rows],
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    text = (
        f"Machine: {info['cpus']} cores, Python {info['python']}; load average at the start {start_load}, "
        f"at the end {load}.\n\n## Goals\n\n" + goals(rows, torch_fmt)
        + "\n## All measurements\n\n" + table(rows) + "\n## Scaling\n\n" + scaling(rows, sizes)
    )  # fmt: skip
    notes = dict.fromkeys(f"- {r.op}: {r.status}: {n}" for r in rows if r.status != "ok" for n in r.notes)
    if notes:
        text += "\n## Not measured\n\n" + "\n".join(notes) + "\n"
    (args.out / "results.md").write_text(text)
    print(text)
    return 0 if all(r.status != "failed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
