"""Checkpoints read at URLs, from servers on localhost: an S3 server (moto) and an HTTP server
with range requests. inspect reads only the header; hash gives the local manifest."""

from __future__ import annotations

import http.server
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

import ckptkit
from ckptkit import registry
from ckptkit.api import describe
from ckptkit.core.errors import CorruptCheckpointError, NoSuchFileError, UnknownFormatError
from ckptkit.hashing.manifest import build_manifest
from ckptkit.io.source import READAHEAD, open_source, parse_storage_options, use_storage_options
from tests.conftest import assert_one_line_error
from tests.helpers import sample_array

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

BUCKET = "ckpts"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on localhost, with a bucket; its endpoint and the fsspec options to use it."""
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    mp = pytest.MonkeyPatch()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        mp.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint, boto3.client("s3", endpoint_url=endpoint)
    mp.undo()
    server.stop()


def _upload(s3, local: Path, key: str) -> str:
    _endpoint, client = s3
    client.upload_file(str(local), BUCKET, key)
    return f"s3://{BUCKET}/{key}"


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder with single byte ranges (``Range: bytes=a-b``), and counts the bytes sent."""

    sent = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        type(self).sent += len(body)
        self.wfile.write(body)

    def do_HEAD(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()


@pytest.fixture
def http_folder(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    handler = type("Handler", (_RangeHandler,), {"sent": 0})

    def make(*args, **kwargs):
        return handler(*args, directory=str(folder), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def _checkpoint(path: Path, big: bool = False) -> Path:
    arrays = {f"layers.{i}.weight": sample_array("float16", (256, 256), seed=i) for i in range(24 if big else 3)}
    arrays["norm.bias"] = sample_array("bfloat16", (256,), seed=99)
    ckptkit.save(arrays, path, metadata={"format": "pt"})
    return path


def test_inspect_on_s3_reads_the_header_and_at_most_64_kb_more(tmp_path, s3):
    local = _checkpoint(tmp_path / "model.safetensors", big=True)
    url = _upload(s3, local, "big/model.safetensors")
    header = 8 + int.from_bytes(local.read_bytes()[:8], "little")
    with use_storage_options({"endpoint_url": s3[0]}):
        source = open_source(url)
        with registry.open_checkpoint(url) as remote, ckptkit.load(local) as here:
            assert remote.url == url
            assert describe(remote) == {**describe(here), "path": url}
            assert remote.source.bytes_read <= header + READAHEAD
            assert local.stat().st_size > 2 * (header + READAHEAD)  # a whole read would show
            np.testing.assert_array_equal(remote.read_tensor("layers.5.weight"), here.read_tensor("layers.5.weight"))
    assert source.size == local.stat().st_size


def test_hash_on_s3_equals_the_local_manifest(tmp_path, s3):
    local = _checkpoint(tmp_path / "model.safetensors")
    url = _upload(s3, local, "small/model.safetensors")
    with use_storage_options({"endpoint_url": s3[0]}):
        remote = build_manifest(url).to_dict()
    assert remote == {**build_manifest(local).to_dict(), "path": url}


def test_the_cli_reads_s3_with_storage_options(tmp_path, s3, cli):
    local = _checkpoint(tmp_path / "model.safetensors")
    url = _upload(s3, local, "cli/model.safetensors")
    option = f"endpoint_url={s3[0]}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    remote = cli("inspect", url, "--json", "--storage-option", option, env=env)
    here = cli("inspect", local, "--json")
    assert remote.code == 0, remote.stderr
    assert json.loads(remote.stdout) == {**json.loads(here.stdout), "path": url}
    missing = cli("inspect", f"s3://{BUCKET}/nothing.safetensors", "--storage-option", option, env=env)
    assert_one_line_error(missing, "nothing.safetensors", "no such file")


def test_a_remote_file_gets_the_same_checks(tmp_path, s3):
    local = _checkpoint(tmp_path / "model.safetensors")
    data = local.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_bytes(b"just some text, no checkpoint\n" * 10)
    with use_storage_options({"endpoint_url": s3[0]}):
        with pytest.raises(CorruptCheckpointError, match="truncated"):
            registry.open_checkpoint(_upload(s3, tmp_path / "cut.safetensors", "bad/cut.safetensors"))
        with pytest.raises(UnknownFormatError):
            registry.open_checkpoint(_upload(s3, tmp_path / "notes.txt", "bad/notes.txt"))
        with pytest.raises(NoSuchFileError):
            open_source(f"s3://{BUCKET}/bad/absent.safetensors")


def test_https_range_reads_equal_the_local_file(tmp_path, http_folder):
    folder, base, handler = http_folder
    local = _checkpoint(folder / "model.safetensors", big=True)
    header = 8 + int.from_bytes(local.read_bytes()[:8], "little")
    url = f"{base}/model.safetensors"
    with registry.open_checkpoint(url) as remote, ckptkit.load(local) as here:
        assert [t for t in remote.tensor_infos()] == [t for t in here.tensor_infos()]
        assert handler.sent <= header + READAHEAD
        np.testing.assert_array_equal(remote.read_tensor("norm.bias"), here.read_tensor("norm.bias"))
    assert build_manifest(url).to_dict() == {**build_manifest(local).to_dict(), "path": url}


def test_storage_options_parse_json_values():
    assert parse_storage_options(["anon=true", "endpoint_url=http://h:1", "n=3"]) == {
        "anon": True,
        "endpoint_url": "http://h:1",
        "n": 3,
    }


class _ShortHandler(_RangeHandler):
    """Announces (HEAD, Content-Range) ``missing`` bytes more than the file holds; with ``lie``, each
    range response's Content-Length also promises them, and the connection ends early."""

    missing = 4096
    lie = False

    def do_HEAD(self):
        path = Path(self.translate_path(self.path))
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size + self.missing))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self):
        data = Path(self.translate_path(self.path)).read_bytes()
        total = len(data) + self.missing
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start = int(match[1]) if match else 0
        end = min(int(match[2]) if match and match[2] else total - 1, total - 1)
        body = data[start : end + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.send_header("Content-Length", str(end + 1 - start if self.lie else len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


@pytest.fixture
def short_server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    servers = []

    def start(lie: bool) -> str:
        handler = type("Handler", (_ShortHandler,), {"lie": lie})

        def make(*args, **kwargs):
            return handler(*args, directory=str(folder), **kwargs)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield folder, start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("lie", [False, True])
def test_a_remote_file_shorter_than_announced_is_a_one_line_corrupt_file_error(short_server, cli, lie):
    folder, start = short_server
    base = start(lie)
    _checkpoint(folder / "model.safetensors")
    url = f"{base}/model.safetensors"
    source = open_source(url)
    with pytest.raises(CorruptCheckpointError, match="ends at byte") as err:
        b"".join(source.chunks())  # the whole-file hash and local copies read it this way
    assert err.value.path == url
    from ckptkit.hashing.manifest import _remote_file_sha256

    with pytest.raises(CorruptCheckpointError, match="ends at byte"):
        _remote_file_sha256(source, None)
    buf = np.empty(source.size, np.uint8)
    with pytest.raises(CorruptCheckpointError, match="ends at byte"):
        source.read_into(0, buf.data)
    assert_one_line_error(cli("hash", url), url, "ends at byte")
