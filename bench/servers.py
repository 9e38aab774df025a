"""The servers under test, each started on free loopback ports and stopped by its PID.

MLServer is started exactly as the tests start it (tests/server.py); the benchmark only
writes the model repository it serves.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

import httpx

from .workloads import REPO, Target, Workload

# The environment of each MLServer the targets run on: mlserver-npu as it is; with its REST
# boundary off (MLServer's own REST route); and MLServer's REST route as it was before issue
# 19, also on uvicorn's h11 (httptools, now a dependency, hidden by an import that fails).
MLSERVERS: Dict[str, Dict[str, str]] = {
    "mlserver": {},
    "mlserver-plain": {"MLSERVER_NPU_REST_BOUNDARY": "0"},
    "mlserver-before": {"MLSERVER_NPU_REST_BOUNDARY": "0",
                        "PYTHONPATH": str(Path(__file__).resolve().with_name("before_issue_19"))},
}

# The simulated NPU (a `furiosa.runtime` of its own) goes first on MLServer's path.
SIMULATED_NPU = Path(__file__).resolve().with_name("simulated_npu")


def _tests_server_module():
    """tests/server.py by path: `tests` is no package, and must not become one for pytest."""
    spec = importlib.util.spec_from_file_location(
        "mlserver_npu_tests_server", REPO / "tests" / "server.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_harness = _tests_server_module()
MLServer = _harness.Server
free_port = _harness.free_port
terminate = _harness.terminate
wait_until_ready = _harness.wait_until_ready


def repo_env(**extra: str) -> Dict[str, str]:
    """This environment, with this checkout first on the path of a child Python process."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def labels_file(workload: Workload, folder: Path, classes: int = 1000) -> Path:
    """The model's labels.txt, or placeholder names (`class 0`, ...) when it has none."""
    path = folder / "labels.txt"
    source = workload.model_file.with_name("labels.txt")
    if source.is_file():
        shutil.copy(source, path)
    else:
        path.write_text("".join(f"class {i}\n" for i in range(classes)))
    return path


def _model_settings(workload: Workload, target: Target, threads: int,
                    batching: Tuple[int, float], folder: Path) -> Dict[str, Any]:
    name = target.model_name(workload)
    if target.variant == "echo":
        return {"name": name, "implementation": "bench.echo.EchoRuntime"}
    found = workload.model_file.parent / "model-settings.json"
    settings = json.loads(found.read_text()) if found.is_file() else {
        "implementation": "mlserver_npu.NPURuntime", "parameters": {"extra": {}},
    }
    extra = settings["parameters"].setdefault("extra", {})
    extra.setdefault("options", {})["intra_op_threads"] = threads
    extra.update(workload.npu_extra(labels_file(workload, folder)))
    settings["name"] = name
    settings["parameters"]["uri"] = str(workload.model_file)
    if workload.device is not None:  # the device file beside the model, as a compiler's
        shutil.copy(workload.model_file, folder / "model.onnx")
        (folder / "simulated-npu.json").write_text(json.dumps({"run_ms": workload.device.run_ms}))
        settings["parameters"]["uri"] = "./model.onnx"
    if target.variant == "batching":
        settings["max_batch_size"], settings["max_batch_time"] = batching
    if target.variant == "batcher":
        size, seconds = batching
        extra["batching"] = {"max_batch_size": size, "max_delay_ms": seconds * 1000}
    return settings


def write_repository(root: Path, pairs: Iterable[Tuple[Workload, Target]], threads: int,
                     batching: Tuple[int, float]) -> Path:
    """A model repository with one model per (workload, MLServer target variant)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "model-repository" / "settings.json", root / "settings.json")
    for workload, target in pairs:
        folder = root / target.model_name(workload)
        if target.server not in MLSERVERS or folder.exists():
            continue
        folder.mkdir()
        settings = _model_settings(workload, target, threads, batching, folder)
        (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))
    return root


def start_mlserver(root: Path, pairs: List[Tuple[Workload, Target]], threads: int,
                   batching: Tuple[int, float], **env: str) -> "MLServer":
    repository = write_repository(root / "model-repository", pairs, threads, batching)
    if any(workload.device is not None for workload, _ in pairs):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SIMULATED_NPU),
                                                           env.get("PYTHONPATH")]))
    return MLServer(repository, root, env=env or None)


class FastAPIServer:
    """bench/fastapi_app.py under uvicorn (one worker, no access log, like MLServer's)."""

    def __init__(self, root: Path, workloads: Iterable[Workload], threads: int):
        root.mkdir(parents=True, exist_ok=True)
        models = {}
        for workload in workloads:
            models[workload.name] = {"path": str(workload.model_file), "threads": threads}
            if workload.image:
                folder = root / f"fastapi-{workload.name}"
                folder.mkdir(parents=True, exist_ok=True)
                models[workload.name]["labels"] = str(labels_file(workload, folder))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "fastapi.log"
        env = repo_env(BENCH_FASTAPI_MODELS=json.dumps(models))
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.fastapi_app:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log", "--log-level", "warning"],
            cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60) -> "FastAPIServer":
        wait_until_ready(
            self.process,
            lambda: httpx.get(f"{self.url}/health").status_code == 200,
            self.log_path.read_text,
            "uvicorn",
            timeout,
        )
        return self

    def stop(self) -> None:
        terminate(self.process)
        self._log.close()
