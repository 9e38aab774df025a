"""Real servers on loopback for the remote-URI tests: a scriptable HTTP file server and an S3
API (moto's server), both started by the tests in threads of the test process; and the model
files they serve."""
import base64
import hashlib
import io
import logging
import tarfile
import threading
import time
import zipfile
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional

import boto3
import onnx

from server import MODEL_REPOSITORY

DIGITS = (MODEL_REPOSITORY / "digits" / "model.onnx").read_bytes()
DIGITS_SHA = hashlib.sha256(DIGITS).hexdigest()
SECRET = "hunter2-very-secret"


class FileServer:
    """Serves registered bodies; each path can misbehave on its next requests (`plan`) or on
    every request (`always`):

    - "500": a 500 response
    - "cut": the headers announce the whole body, half is sent, the connection closes
    - "stall": nothing is sent for `stall_seconds`
    - "nolength": the body is sent without Content-Length (ended by closing the connection)
    """

    def __init__(self) -> None:
        self.files: Dict[str, bytes] = {}
        self.validators: Dict[str, bool] = {}
        self.modified: Dict[str, str] = {}
        self.redirects: Dict[str, str] = {}
        self.auth: Dict[str, str] = {}
        self.plan: Dict[str, List[str]] = {}
        self.always: Dict[str, str] = {}
        self.chunk_delay: Dict[str, float] = {}
        self.requests: Counter = Counter()
        self.downloads: Counter = Counter()  # 200 responses, by path
        self.stall_seconds = 5.0
        self.chunk_size = 64 * 1024
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def put(self, path: str, body: bytes, validators: bool = True) -> str:
        self.files[path] = body
        self.validators[path] = validators
        self.modified[path] = formatdate(time.time() + len(self.modified), usegmt=True)
        return self.url(path)

    def redirect(self, path: str, target: str) -> str:
        self.redirects[path] = target
        return self.url(path)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next_behaviour(self, path: str) -> Optional[str]:
        with self._lock:
            self.requests[path] += 1
            if self.plan.get(path):
                return self.plan[path].pop(0)
            return self.always.get(path)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


def _handler(server: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # the request line holds the test's secrets
            pass

        def do_GET(self) -> None:
            try:
                self._get()
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: fine
                pass

        def _get(self) -> None:
            path = self.path.partition("?")[0]
            behaviour = server._next_behaviour(path)
            if behaviour == "stall":
                time.sleep(server.stall_seconds)
                return self._reply(503, b"")
            if behaviour == "500":
                return self._reply(500, b"oops")
            if path in server.redirects:
                self.send_response(302)
                self.send_header("Location", server.url(server.redirects[path]))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path in server.auth:
                expected = "Basic " + base64.b64encode(server.auth[path].encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self._reply(401, b"who are you?")
            body = server.files.get(path)
            if body is None:
                return self._reply(404, b"no such file")
            headers = {}
            if server.validators[path]:
                etag, modified = etag_of(body), server.modified[path]
                headers = {"ETag": etag, "Last-Modified": modified}
                if self.headers.get("If-None-Match") == etag or (
                    self.headers.get("If-Modified-Since") == modified
                ):
                    return self._reply(304, b"", headers)
            server.downloads[path] += 1
            if behaviour == "cut":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            if behaviour == "nolength":
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            delay = server.chunk_delay.get(path, 0)
            size = server.chunk_size
            for start in range(0, len(body), size):
                self.wfile.write(body[start : start + size])
                if delay:
                    self.wfile.flush()
                    time.sleep(delay)

        def _reply(self, status: int, body: bytes, headers: Optional[dict] = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if status != 304:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if status != 304:
                self.wfile.write(body)

    return Handler


class S3Store:
    """moto's S3 API server on a free loopback port, with one bucket."""

    bucket = "models"
    env = {
        "AWS_ACCESS_KEY_ID": "AKIATESTKEYID0000000",
        "AWS_SECRET_ACCESS_KEY": "test-secret-key-not-real-0000000000000000",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.env = dict(self.env, AWS_ENDPOINT_URL=self.endpoint)
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, body: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        return f"s3://{self.bucket}/{key}"

    def close(self) -> None:
        self._server.stop()


def cache_entries(cache_dir: Path) -> List[str]:
    """What the cache holds: entry folders and staging leftovers (lock files do not count)."""
    if not cache_dir.exists():
        return []
    entries = [p.name for p in cache_dir.iterdir() if not p.name.startswith(".")]
    staging = cache_dir / ".staging"
    if staging.exists():
        entries += [f".staging/{p.name}" for p in staging.iterdir()]
    return sorted(entries)


def cache_files(cache_dir: Path) -> Dict[str, str]:
    """Every file of the cache's entries and staging folder -> its sha256 (lock files, which
    only coordinate loads, do not count)."""
    if not cache_dir.exists():
        return {}
    return {
        path.relative_to(cache_dir).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(cache_dir.rglob("*"))
        if path.is_file() and not path.relative_to(cache_dir).as_posix().startswith(".locks/")
    }


def external_data_model(folder: Path) -> Path:
    """digits-temperature with its weights in a side file, as torch's exporter writes them."""
    folder.mkdir(parents=True)
    model = onnx.load(str(MODEL_REPOSITORY / "digits-temperature" / "model.onnx"))
    onnx.save_model(
        model, str(folder / "model.onnx"), save_as_external_data=True,
        all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0,
    )
    assert (folder / "model.onnx.data").stat().st_size > 2000
    return folder


def archive(folder: Path, kind: str) -> bytes:
    buffer = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w") as zip_file:
            for path in sorted(folder.iterdir()):
                zip_file.write(path, path.name)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(folder, arcname=folder.name)  # one top folder, as `tar czf` makes
    return buffer.getvalue()
