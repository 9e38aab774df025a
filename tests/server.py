"""A real `mlserver start` in a subprocess, on free loopback ports, for the tests."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Optional

import httpx

REPO = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO / "model-repository"
MLSERVER = Path(sys.executable).with_name("mlserver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_repository(destination: Path, models: Optional[list] = None) -> Path:
    """A private copy of model-repository (only `models`, if given) with its settings.json."""
    destination.mkdir(parents=True, exist_ok=True)
    for folder in MODEL_REPOSITORY.iterdir():
        if folder.is_dir() and (models is None or folder.name in models):
            shutil.copytree(folder, destination / folder.name)
    shutil.copy(MODEL_REPOSITORY / "settings.json", destination / "settings.json")
    return destination


class Server:
    """One MLServer process that we started, reachable only through its own ports."""

    def __init__(self, repository: Path, workdir: Path, settings: Optional[Dict[str, Any]] = None):
        self.repository = repository
        self.name = f"mlserver-npu-test-{uuid.uuid4().hex[:8]}"
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        server_settings = json.loads((repository / "settings.json").read_text())
        server_settings.update(
            {
                "server_name": self.name,
                "host": "127.0.0.1",
                "http_port": self.http_port,
                "grpc_port": self.grpc_port,
                "metrics_port": self.metrics_port,
            }
        )
        server_settings.update(settings or {})
        (repository / "settings.json").write_text(json.dumps(server_settings, indent=2))
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log_path = workdir / "mlserver.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update(self.extra_env())
        self._log = open(self.log_path, "wb")
        # MLServer writes .metrics/ and .envs/ into its working directory.
        self.process = subprocess.Popen(
            [str(MLSERVER), "start", str(repository)],
            cwd=workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def extra_env(self) -> Dict[str, str]:
        return {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlserver exited with {self.process.returncode}:\n{self.log()}")
            try:
                ready = self.http.get("/v2/health/ready")
                if ready.status_code == 200:
                    # Another server could hold a port we thought free: check it is ours.
                    assert self.http.get("/v2").json()["name"] == self.name
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"mlserver not ready after {timeout}s:\n{self.log()}")

    def infer(self, model: str, inputs: list, outputs: Optional[list] = None) -> httpx.Response:
        body: Dict[str, Any] = {"inputs": inputs}
        if outputs is not None:
            body["outputs"] = outputs
        return self.http.post(f"/v2/models/{model}/infer", json=body)

    def stop(self) -> None:
        self.http.close()
        terminate(self.process)
        self._log.close()


def terminate(process: subprocess.Popen, timeout: float = 20) -> None:
    """End a process we started: SIGTERM, then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def grpc_calls(target: str, calls: list, timeout: float = 120) -> list:
    """Run tritonclient.grpc calls in a child process (it cannot share one with mlserver)."""
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("grpc_client.py")), target],
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"grpc client failed:\n{completed.stderr}")
    return json.loads(completed.stdout)
