"""Benchmark: checkpoints in an object store and shard work on a Dask cluster, on localhost.

(a) Starts an S3 server (moto) behind a byte-counting TCP relay, uploads a safetensors file of
    ``--inspect-mb`` (default 2048 MB; its data is a sparse run of zeros, only the header is
    written) and runs ``ckptkit inspect s3://...`` through the relay: it prints the bytes the server
    sent (HTTP headers included) next to the goal, the file's header plus 64 KB.
(b) Writes a sharded safetensors checkpoint of ``--hash-mb`` (default 2048 MB in ``--shards`` 8
    shards, filled with a repeated random block), warms the page cache, then times
    ``ckptkit hash`` locally and with ``--executor dask://`` on a LocalCluster of 2 worker
    processes (1 thread each), in alternation, ``--repeat`` times; prints medians and the ratio,
    and checks the two manifests are equal.
(c) Unless ``--no-convert``: the same checkpoint as PyTorch shards (written untimed), then times
    ``ckptkit convert`` of those shards to safetensors shards (verified, the default), locally and
    on the cluster, and prints the time per shard, the figure the README's plan scales up.

    python bench/remote_bench.py                                # 2 GB each, 2 rounds
    python bench/remote_bench.py --inspect-mb 256 --hash-mb 256 # a quick run on a loaded machine

Not part of the test suite: it needs ~8 GB of disk under --dir (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import measure  # noqa: E402 - bench/measure.py: child processes' time and peak anonymous memory
import synth  # noqa: E402 - bench/synth.py: transformer-like shapes

BUCKET = "bench"
AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
READAHEAD = 64 * 1024


class _Relay(socketserver.ThreadingTCPServer):
    """Forwards TCP connections to ``target`` and counts the bytes sent back to the client."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.downstream = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RelayHandler)


class _RelayHandler(socketserver.BaseRequestHandler):
    server: _Relay

    def handle(self) -> None:
        upstream = socket.create_connection(self.server.target)

        def pump(src: socket.socket, dst: socket.socket, count: bool) -> None:
            try:
                while data := src.recv(1 << 16):
                    if count:
                        with self.server.lock:
                            self.server.downstream += len(data)
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        back = threading.Thread(target=pump, args=(upstream, self.request, True), daemon=True)
        back.start()
        pump(self.request, upstream, False)
        back.join()
        upstream.close()


def _header(shapes: dict[str, tuple[int, ...]], itemsize: int = 2, dtype: str = "BF16") -> tuple[bytes, int]:
    """A safetensors header for ``shapes`` (8-byte length + JSON padded to 8) and the data size."""
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * itemsize
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, offset


def _sparse_safetensors(path: Path, megabytes: int) -> int:
    header, data = _header(synth.layout(megabytes * 1_000_000).shapes)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data)
    return len(header)


def _filled_safetensors(path: Path, megabytes: int) -> None:
    header, data = _header(synth.layout(megabytes * 1_000_000).shapes)
    block = np.random.default_rng(0).integers(0, 256, 16 << 20, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(header)
        left = data
        while left:
            f.write(block[: min(left, len(block))])
            left -= min(left, len(block))


def _ckptkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "ckptkit", *args]


def _check(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _warm(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass


def inspect_bench(work: Path, megabytes: int, env: dict[str, str]) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    relay = _Relay(server.get_host_and_port())
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://{server.get_host_and_port()[0]}:{server.get_host_and_port()[1]}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        local = work / "inspect.safetensors"
        header = _sparse_safetensors(local, megabytes)
        client.upload_file(str(local), BUCKET, "model.safetensors")
        size = local.stat().st_size
        local.unlink()
        url = f"s3://{BUCKET}/model.safetensors"
        relayed = f"endpoint_url=http://127.0.0.1:{relay.server_address[1]}"
        relay.downstream = 0
        out = _check(_ckptkit("inspect", url, "--json", "--storage-option", relayed), env)
        sent = relay.downstream
        tensors = len(json.loads(out)["tensors"])
        print(f"(a) inspect {url}: {size / 1e9:.2f} GB file, {tensors} tensors, header {header:,} bytes")
        print(f"    bytes the server sent: {sent:,} (HTTP headers included); goal header + 64 KB = "
              f"{header + READAHEAD:,}: {'met' if sent <= header + READAHEAD else 'NOT met'}")  # fmt: skip
    finally:
        relay.shutdown()
        relay.server_close()
        server.stop()


def cluster_bench(work: Path, megabytes: int, shards: int, repeat: int, convert: bool, env: dict[str, str]) -> None:
    from distributed import LocalCluster

    single = work / "single.safetensors"
    _filled_safetensors(single, megabytes)
    shard_size = f"{max(1, megabytes // shards)}MB"
    st = work / "st"
    _check(
        _ckptkit("convert", str(single), f"{st}/", "--to", "safetensors", "--shard-size", shard_size, "--no-verify"),
        env,
    )
    single.unlink()
    index = st / "model.safetensors.index.json"
    count = len(set(json.loads(index.read_text())["weight_map"].values()))
    _warm(st)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1") as c:
        address = "dask://" + c.scheduler_address.removeprefix("tcp://")
        local_cmd = _ckptkit("hash", str(index))
        dask_cmd = _ckptkit("hash", str(index), "--executor", address)
        if _check(local_cmd, env) != _check(dask_cmd, env):
            raise SystemExit("the manifests on the cluster and here differ")
        times: dict[str, list[float]] = {"local": [], "dask": []}
        for _ in range(repeat):
            for name, cmd in (("local", local_cmd), ("dask", dask_cmd)):
                run = measure.run(cmd, env=env)
                if not run.ok:
                    raise SystemExit(f"{' '.join(cmd)} failed: {run.stderr.strip()}")
                times[name].append(run.seconds)
        here, there = statistics.median(times["local"]), statistics.median(times["dask"])
        print(f"(b) hash of {megabytes / 1000:.2f} GB in {count} shards (medians of {repeat}): local {here:.2f} s, "
              f"2-worker LocalCluster {there:.2f} s, ratio local/dask {here / there:.2f}; manifests equal")  # fmt: skip
        print(f"    command: {' '.join(local_cmd[1:])} [--executor {address}]")
        if not convert:
            return
        pt = work / "pt"
        _check(
            _ckptkit("convert", str(index), f"{pt}/", "--to", "torch", "--shard-size", shard_size, "--no-verify"), env
        )
        src = next(pt.glob("*.index.json"))
        _warm(pt)
        rows = []
        for name, extra in (("local", []), ("dask", ["--executor", address])):
            out = work / f"out-{name}"
            cmd = _ckptkit("convert", str(src), f"{out}/", "--to", "safetensors", "--shard-size", shard_size, *extra)
            run = measure.run(cmd, env=env)
            if not run.ok:
                raise SystemExit(f"{' '.join(cmd)} failed: {run.stderr.strip()}")
            rows.append((name, run.seconds, " ".join(cmd[1:])))
            shutil.rmtree(out)
        for name, seconds, text in rows:
            print(f"(c) convert torch shards -> safetensors shards, verified, {name}: {seconds:.2f} s, "
                  f"{seconds / count:.2f} s per shard of ~{megabytes / count:.0f} MB "
                  f"({megabytes / seconds:.0f} MB/s)")  # fmt: skip
            print(f"    command: {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inspect-mb", type=int, default=2048, help="size of the file inspect reads (MB)")
    parser.add_argument("--hash-mb", type=int, default=2048, help="size of the sharded checkpoint (MB)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-convert", action="store_true", help="skip (c)")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed after)")
    args = parser.parse_args()
    os.environ.update(AWS)  # moto's server and boto3 here, ckptkit's children below
    env = measure.child_env(REPO)
    work = Path(tempfile.mkdtemp(prefix="ckptkit-remote-bench-", dir=args.dir))
    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")
    try:
        inspect_bench(work, args.inspect_mb, env)
        cluster_bench(work, args.hash_mb, args.shards, args.repeat, not args.no_convert, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")


if __name__ == "__main__":
    main()
