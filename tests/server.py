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
from typing import Any, Callable, Dict, Optional

import httpx

REPO = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO / "model-repository"
TFLITE_REPOSITORY = REPO / "examples" / "tflite-repository"
FAKE_FURIOSA = Path(__file__).resolve().with_name("fake_furiosa")
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


def fake_furiosa_env(log: Path, **extra: str) -> Dict[str, str]:
    """Server environment with the fake `furiosa.runtime` (two Warboy cards) logging to `log`."""
    return {
        "PYTHONPATH": str(FAKE_FURIOSA),
        "FAKE_FURIOSA_LOG": str(log),
        "FAKE_FURIOSA_NPUS": "2",
        **extra,
    }


def copy_model(
    source: Path, repository: Path, name: str, extra: Optional[Dict[str, Any]] = None, **top: Any
) -> Path:
    """A copy of the model folder `source` named `name` in `repository`, with `extra` keys
    replacing those of `parameters.extra` and `top` keys those of model-settings.json."""
    folder = repository / name
    shutil.copytree(source, folder)
    path = folder / "model-settings.json"
    settings = json.loads(path.read_text())
    settings.update(top, name=name)
    settings["parameters"]["extra"].update(extra or {})
    path.write_text(json.dumps(settings, indent=2))
    return folder


def write_model(folder, name, extra, uri="./model.onnx", model=None, declared=None, **top):
    """A model folder `folder` with a model-settings.json (and `model` bytes as model.onnx);
    `declared` maps "x-inputs" / "y-outputs" to the tensors model-settings.json lists."""
    folder.mkdir()
    settings = {
        "name": name,
        "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"uri": uri, "version": "1", "extra": extra},
        **top,
    }
    for key, tensors in (declared or {}).items():
        settings[key.split("-")[1]] = tensors
    (folder / "model-settings.json").write_text(json.dumps(settings))
    if model is not None:
        (folder / "model.onnx").write_bytes(model)


class Server:
    """One MLServer process that we started, reachable only through its own ports."""

    def __init__(
        self,
        repository: Path,
        workdir: Path,
        settings: Optional[Dict[str, Any]] = None,
        env: Optional[Dict[str, str]] = None,
    ):
        """`env` adds variables for the server process; its PYTHONPATH goes before ours."""
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
        self._spawn([str(MLSERVER), "start", str(repository)], workdir, env)

    def _spawn(self, command: list, workdir: Path, env: Optional[Dict[str, str]]) -> None:
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log_path = workdir / f"{self.name}.log"
        self._log = open(self.log_path, "wb")
        # MLServer writes .metrics/ and .envs/ into its working directory.
        self.process = subprocess.Popen(
            command, cwd=workdir, env=server_env(env), stdout=self._log, stderr=subprocess.STDOUT
        )
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _ready(self) -> bool:
        if self.http.get("/v2/health/ready").status_code != 200:
            return False
        # Another server could hold a port we thought free: check it is ours.
        assert self.http.get("/v2").json()["name"] == self.name
        return True

    def wait_ready(self, timeout: float = 90) -> "Server":
        wait_until_ready(self.process, self._ready, self.log, "mlserver", timeout)
        return self

    @classmethod
    def start(
        cls,
        repository: Path,
        workdir: Path,
        settings: Optional[Dict[str, Any]] = None,
        env: Optional[Dict[str, str]] = None,
        attempts: int = 3,
    ) -> "Server":
        """A ready server; new ports when a free port was taken before mlserver bound it."""
        return cls._start(lambda: cls(repository, workdir, settings, env), attempts)

    @staticmethod
    def _start(new: Callable[[], "Server"], attempts: int = 3) -> "Server":
        for attempt in range(attempts):
            server = new()
            try:
                return server.wait_ready()
            except (RuntimeError, AssertionError):
                server.stop()
                taken = "address already in use" in server.log().lower()
                if not taken or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def infer(self, model: str, inputs: list, outputs: Optional[list] = None) -> httpx.Response:
        body: Dict[str, Any] = {"inputs": inputs}
        if outputs is not None:
            body["outputs"] = outputs
        return self.http.post(f"/v2/models/{model}/infer", json=body)

    def assert_load_fails(self, model: str, words: list) -> str:
        """Load `model` through the repository API: a 400 whose message has all `words`, and
        the model not ready. Returns the message."""
        response = self.http.post(f"/v2/repository/models/{model}/load")
        assert response.status_code == 400, response.text
        message = response.json()["error"]
        for word in [f"Model '{model}' could not be loaded"] + list(words):
            assert word in message, (word, message)
        assert self.http.get(f"/v2/models/{model}/ready").status_code != 200
        return message

    def metrics(self) -> Dict[str, Dict[tuple, float]]:
        """Prometheus samples from the metrics port: name -> {sorted label items: value}."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30).text
        samples: Dict[str, Dict[tuple, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = (
                    sample.value
                )
        return samples

    def session_runs(self, model: str) -> Dict[str, float]:
        """Runs started per session of `model` ("0", "1", ...), from the plugin's metrics."""
        runs = self.metrics().get("mlserver_npu_session_runs_total", {})
        return {
            dict(labels)["session"]: value
            for labels, value in runs.items()
            if dict(labels)["model_name"] == model
        }

    def stop(self) -> None:
        self.http.close()
        terminate(self.process)
        self._log.close()


class Serve(Server):
    """`mlserver-npu serve ARGS...` of this checkout, on free loopback ports."""

    def __init__(self, args: list, workdir: Path, env: Optional[Dict[str, str]] = None):
        self.name = f"mlserver-npu-serve-{uuid.uuid4().hex[:8]}"
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        command = [
            sys.executable, "-m", "mlserver_npu.cli", "serve", *map(str, args),
            "--host", "127.0.0.1", "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
        ]
        self._spawn(command, workdir, {"MLSERVER_SERVER_NAME": self.name, **(env or {})})

    @classmethod
    def start(cls, args: list, workdir: Path, env: Optional[Dict[str, str]] = None) -> "Serve":
        return cls._start(lambda: cls(args, workdir, env))  # type: ignore[return-value]


def server_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This environment with `env` added, this checkout first on PYTHONPATH (after env's)."""
    extra = dict(env or {})
    merged = dict(os.environ)
    merged["PYTHONPATH"] = os.pathsep.join(
        filter(None, [extra.pop("PYTHONPATH", None), str(REPO), merged.get("PYTHONPATH")])
    )
    merged.update(extra)
    return merged


def cli(*args: str, env: Optional[Dict[str, str]] = None, timeout: float = 180,
        cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """`mlserver-npu ARGS...` of this checkout, to completion."""
    return subprocess.run(
        [sys.executable, "-m", "mlserver_npu.cli", *map(str, args)],
        capture_output=True, text=True, env=server_env(env), timeout=timeout, cwd=cwd,
    )


def wait_until_ready(
    process: subprocess.Popen,
    ready: Callable[[], bool],
    log: Callable[[], str],
    what: str,
    timeout: float,
) -> None:
    """Poll `ready` until it says yes; fail with the log if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log()}")
        try:
            if ready():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout}s:\n{log()}")


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
