"""The benchmark harness, on a 20 MB checkpoint: it measures what it says and reports every row."""

import json
import subprocess
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import measure
import synth


def test_peak_anonymous_memory_sees_an_allocation_and_ignores_a_mapped_file(tmp_path):
    big = measure.run([sys.executable, "-c", "import time; b = b'x' * 300_000_000; time.sleep(0.3)"])
    assert big.ok and big.peak_anon_bytes > 300_000_000
    data = tmp_path / "data.bin"
    data.write_bytes(b"\1" * 300_000_000)
    code = (
        "import mmap, sys, time; f = open(sys.argv[1], 'rb'); m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ);"
        "s = sum(m[i] for i in range(0, len(m), 4096)); time.sleep(0.3)"
    )
    mapped = measure.run([sys.executable, "-c", code, str(data)])
    assert mapped.ok and mapped.peak_anon_bytes < 100_000_000  # 300 MB of file pages touched, not counted
    failed = measure.run([sys.executable, "-c", "import sys; sys.exit('no such thing')"])
    assert failed.returncode == 1 and "no such thing" in failed.stderr


def test_cpu_time_counts_the_childs_work_and_not_its_waiting():
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    busy = measure.run([sys.executable, "-c", spin])
    idle = measure.run([sys.executable, "-c", "import time; time.sleep(0.5)"])
    assert busy.ok and busy.cpu_seconds >= 0.3
    assert idle.ok and idle.cpu_seconds < 0.3 < idle.seconds


def test_layout_keeps_tensor_count_and_largest_tensor_fixed():
    sizes = [synth.layout(int(gb * 1e9)) for gb in (0.5, 1, 2, 4)]
    assert {len(s.shapes) for s in sizes} == {201}
    assert {s.largest for s in sizes} == {32000 * 2304}
    for gb, s in zip((0.5, 1, 2, 4), sizes, strict=True):
        assert abs(s.numel * 2 / 1e9 - gb) / gb < 0.02


def test_quick_run_reports_rows_and_json(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(REPO / "bench" / "run.py"), "--sizes", "0.02", "--dtypes", "bf16", "--no-naive",
        "--only", "inspect safetensors", "--only", "convert safetensors -> safetensors-sharded", "--only", "hash",
        "--only", "diff", "--only", "verify", "--only", "convert safetensors -> torch",
        "--workdir", str(tmp_path / "work"), "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "results.json").read_text())
    rows = {r["op"]: r for r in report["results"]}
    assert {"cp (baseline)", "sha256 1 thread (baseline)", "inspect safetensors"} <= set(rows)
    convert = rows["convert safetensors -> safetensors-sharded"]
    assert convert["status"] == "ok" and convert["seconds"] > 0 and convert["peak_anon_mb"] > 1
    assert convert["input_bytes"] > 15_000_000 and convert["vs_cp"] > 0
    # Every command is found and measured (the subcommands load on demand, so probing must ask for them).
    for op in ("hash safetensors", "diff safetensors vs torch", "verify safetensors",
               "convert safetensors -> torch", "convert safetensors -> torch --no-verify"):  # fmt: skip
        assert rows[op]["status"] == "ok" and rows[op]["seconds"] > 0 and rows[op]["vs_cp"] > 0, op
        assert 0 < rows[op]["cpu_seconds"] < 60 and rows[op]["cpu_vs_cp"] > 0, op  # the child's CPU, not ours
    text = (out / "results.md").read_text()
    assert "| inspect safetensors | bf16 | 0.02 GB |" in text
    assert "| 0.02 GB | bf16 | safetensors -> PyTorch, --no-verify, × cp ≤ 1.3× |" in text
    assert "load average" in text and len(report["machine"]["load_average"]) == 3
    assert not (tmp_path / "work" / "bf16-0.02gb").exists()  # generated checkpoints are removed


def test_tensorflow_bench_reports_every_row(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "tf_bench.py"), "--size", "0.01", "--rounds", "1",
           "--workdir", str(tmp_path / "tf")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split(" | ")[0].lstrip("| "): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert {"cp safetensors", "convert tensorflow -> safetensors", "convert safetensors -> tensorflow --no-verify",
            "inspect tensorflow --json", "verify tensorflow"} <= set(rows)  # fmt: skip
    assert "safetensors inspect" in rows["inspect tensorflow --json"]
    assert not (tmp_path / "tf").exists()  # the checkpoints go unless --keep
