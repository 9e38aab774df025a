"""Start-up with a broken model, and where the server listens: the container image's own
command (the Dockerfile's CMD, run here on the host) exits 1 when a model fails to load;
with MLSERVER_NPU_KEEP_GOING=1 it serves the good models on the ports the environment gives
(the shipped settings.json no longer pins them), reports the broken one (ERROR line, index
state and reason, not ready) and loads it once its files are fixed. `mlserver-npu serve`
listens on 127.0.0.1 unless told otherwise (the settings it gives MLServer)."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import reference
from reference import v2_input
from server import MODEL_REPOSITORY, REPO, Server, copy_repository, free_port, server_env

BROKEN = b"not an onnx model"


def image_command() -> list:
    """The Dockerfile's CMD (exec form)."""
    [line] = [line for line in (REPO / "Dockerfile").read_text().splitlines()
              if line.startswith("CMD ")]
    return json.loads(line[len("CMD "):])


def image_env(repository: Path, **extra: str) -> dict:
    """The image's environment for the command: the models' folder, and `mlserver-npu` on
    PATH (this venv's)."""
    return {"MLSERVER_MODELS_DIR": str(repository), "MLSERVER_PARALLEL_WORKERS": "0",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


class ImageCommand(Server):
    """The image's command on free ports given by MLSERVER_* variables only."""

    def __init__(self, repository: Path, workdir: Path, env: dict):
        self.repository = repository
        self.name = f"mlserver-npu-image-{uuid.uuid4().hex[:8]}"
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self._spawn(image_command(), workdir, image_env(
            repository, MLSERVER_SERVER_NAME=self.name, MLSERVER_HOST="127.0.0.1",
            MLSERVER_HTTP_PORT=str(self.http_port), MLSERVER_GRPC_PORT=str(self.grpc_port),
            MLSERVER_METRICS_PORT=str(self.metrics_port), **env))


def with_broken_model(root: Path) -> Path:
    """The example repository's `digits` (shipped settings.json) and a `broken` model."""
    repository = copy_repository(root / "repository", models=["digits"])
    shutil.copytree(repository / "digits", repository / "broken")
    settings = json.loads((repository / "broken" / "model-settings.json").read_text())
    settings["name"] = "broken"
    (repository / "broken" / "model-settings.json").write_text(json.dumps(settings))
    (repository / "broken" / "model.onnx").write_bytes(BROKEN)
    return repository


def test_the_image_command_exits_1_when_a_model_fails_to_load(tmp_path):
    repository = with_broken_model(tmp_path)
    completed = subprocess.run(
        image_command(), env=server_env(image_env(
            repository, MLSERVER_HOST="127.0.0.1", MLSERVER_HTTP_PORT=str(free_port()),
            MLSERVER_GRPC_PORT=str(free_port()), MLSERVER_METRICS_PORT=str(free_port()))),
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert ("mlserver-npu start: model 'broken' failed to load: onnxruntime cannot open "
            "'model.onnx'") in completed.stderr
    assert "model 'digits' failed" not in completed.stderr


def test_keep_going_serves_the_good_models_and_loads_the_fixed_one(tmp_path):
    repository = with_broken_model(tmp_path)
    assert "http_port" not in json.loads((repository / "settings.json").read_text())
    server = Server._start(lambda: ImageCommand(
        repository, tmp_path, {"MLSERVER_NPU_KEEP_GOING": "1"}))
    try:
        # served on the ports of the environment, as onnxruntime computes
        feeds = reference.digits(3)
        response = server.infer("digits", [v2_input("input", feeds)])
        assert response.status_code == 200, response.text
        labels = {o["name"]: o for o in response.json()["outputs"]}["label"]["data"]
        assert labels == reference.run("digits", {"input": feeds})["label"].tolist()

        assert server.http.get("/v2/health/ready").status_code == 200  # the loaded models
        assert server.http.get("/v2/models/broken/ready").status_code == 404
        index = {item["name"]: item for item in
                 server.http.post("/v2/repository/index", json={}).json()}
        assert index["digits"]["state"] == "READY"
        assert index["broken"]["state"] == "UNAVAILABLE"
        assert index["broken"]["reason"].startswith(
            "failed to load: onnxruntime cannot open 'model.onnx'"), index["broken"]
        assert re.search(r" ERROR - Model 'broken' failed to load at start-up: onnxruntime "
                         r"cannot open 'model.onnx'.*loaded again when its files change",
                         server.log()), server.log()

        shutil.copy(MODEL_REPOSITORY / "digits" / "model.onnx", repository / "broken")
        deadline = time.monotonic() + 30
        while server.http.get("/v2/models/broken/ready").status_code != 200:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.5)
        response = server.infer("broken", [v2_input("input", feeds)])
        assert response.status_code == 200, response.text
        index = {item["name"]: item for item in
                 server.http.post("/v2/repository/index", json={}).json()}
        assert index["broken"]["state"] == "READY" and index["broken"]["reason"] == ""
    finally:
        server.stop()


def test_serve_host_default_gives_way_to_the_flag_and_the_environment(monkeypatch):
    import argparse

    from mlserver_npu.cli import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    model = str(MODEL_REPOSITORY / "digits" / "model.onnx")
    assert serve.server_settings(parser.parse_args([model])).host == "127.0.0.1"
    assert serve.server_settings(parser.parse_args([model, "--host", "0.0.0.0"])).host == \
        "0.0.0.0"
    monkeypatch.setenv("MLSERVER_HOST", "0.0.0.0")
    assert serve.server_settings(parser.parse_args([model])).host == "0.0.0.0"

    assert not serve.keep_going(parser.parse_args([model]))
    assert serve.keep_going(parser.parse_args([model, "--keep-going"]))
    monkeypatch.setenv("MLSERVER_NPU_KEEP_GOING", "1")
    assert serve.keep_going(parser.parse_args([model]))


@pytest.mark.parametrize("path", sorted(
    str(p.relative_to(REPO)) for p in [REPO / "settings.json", *REPO.glob("*/settings.json"),
                                       *REPO.glob("examples/*/settings.json")]))
def test_shipped_settings_leave_host_and_ports_to_the_environment(path):
    settings = json.loads((REPO / path).read_text())
    assert not {"host", "http_port", "grpc_port", "metrics_port"} & set(settings), path
