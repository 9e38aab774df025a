"""MLServer's single-model environment mode, as KServe starts a runtime: a folder holding only
the model file, no model-settings.json, and `MLSERVER_MODEL_NAME/IMPLEMENTATION/URI/EXTRA`.
It must serve exactly as the same keys in a model-settings.json do, with the same errors."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import reference
from reference import v2_input
from server import MLSERVER, MODEL_REPOSITORY, REPO, TFLITE_REPOSITORY, Server, free_port
from test_tflite import litert

DIGITS = MODEL_REPOSITORY / "digits"
EXTRA = {
    "sessions": 2,
    "options": {"intra_op_threads": 1},
    # relative: next to a model-settings.json this is the folder's labels.txt
    "postprocess": {"type": "classification", "top_k": 2, "labels": "labels.txt",
                    "output": "probabilities"},
}


def server_settings(repository: Path) -> Path:
    """A repository with no model in it, only MLServer's settings.json."""
    repository.mkdir(parents=True)
    shutil.copy(MODEL_REPOSITORY / "settings.json", repository / "settings.json")
    return repository


def model_folder(folder: Path, *files: Path) -> Path:
    folder.mkdir(parents=True)
    for file in files:
        shutil.copy(file, folder / file.name)
    return folder


def environment(name: str, uri: Path, extra: dict = None) -> dict:
    env = {
        "MLSERVER_MODEL_NAME": name,
        "MLSERVER_MODEL_IMPLEMENTATION": "mlserver_npu.NPURuntime",
        "MLSERVER_MODEL_URI": str(uri),
    }
    if extra is not None:
        env["MLSERVER_MODEL_EXTRA"] = json.dumps(extra)
    return env


@pytest.fixture
def start(tmp_path):
    """start(repository, env): a ready server with a working directory of its own."""
    started = []

    def run(repository: Path, env: dict = None) -> Server:
        workdir = tmp_path / f"server-{len(started)}"
        workdir.mkdir()
        started.append(Server.start(repository, workdir, env=env))
        return started[-1]

    yield run
    for server in started:
        server.stop()


def outputs(response) -> dict:
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def test_environment_serves_as_model_settings_json(tmp_path, start):
    """Same metadata, same outputs (equal to onnxruntime), same two sessions, labels found
    next to the model: from the environment and from a model-settings.json."""
    files = (DIGITS / "model.onnx", DIGITS / "labels.txt")
    folder = model_folder(tmp_path / "models" / "digits", *files)
    from_env = start(
        server_settings(tmp_path / "empty"), env=environment("digits-env", folder, EXTRA)
    )

    repository = server_settings(tmp_path / "repository")
    model_folder(repository / "digits-env", *files)
    (repository / "digits-env" / "model-settings.json").write_text(json.dumps({
        "name": "digits-env", "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"extra": EXTRA},
    }))
    from_file = start(repository)

    pixels = reference.digits(6)
    want = reference.run("digits", {"input": pixels})
    served = []
    for server in (from_env, from_file):
        got = outputs(server.infer("digits-env", [v2_input("input", pixels)]))
        assert got["label"]["data"] == want["label"].tolist()
        top2 = np.argsort(-want["probabilities"], axis=1)[:, :2]
        indices = [[int(s.split(":")[1]) for s in row]
                   for row in np.array(got["probabilities"]["data"]).reshape(6, 2)]
        assert indices == top2.tolist()
        # "score:index:label", the label read from the folder's labels.txt
        labels = (DIGITS / "labels.txt").read_text().split()
        assert got["probabilities"]["data"][0].split(":")[2] == labels[top2[0][0]]
        served.append(got)
        assert sorted(server.session_runs("digits-env")) == ["0", "1"]
    assert served[0] == served[1]

    env_metadata = from_env.http.get("/v2/models/digits-env").json()
    file_metadata = from_file.http.get("/v2/models/digits-env").json()
    assert env_metadata == file_metadata
    assert env_metadata["parameters"]["sha256"] == file_metadata["parameters"]["sha256"]


def test_environment_serves_a_lone_tflite_file(tmp_path, start):
    """A folder with only model.tflite and no MLSERVER_MODEL_EXTRA at all."""
    folder = model_folder(tmp_path / "m", TFLITE_REPOSITORY / "digits-uint8" / "model.tflite")
    server = start(server_settings(tmp_path / "empty"), env=environment("uint8", folder))
    metadata = server.http.get("/v2/models/uint8").json()
    assert metadata["parameters"]["backend"] == "tflite"
    pixels = reference.digits(3).astype(np.uint8)
    want = litert("digits-uint8", pixels)
    got = outputs(server.infer("uint8", [v2_input("input", pixels)]))
    for name, value in want.items():
        assert got[name]["data"] == value.ravel().tolist()


def test_environment_errors_are_those_of_model_settings_json(tmp_path, start):
    """A bad MLSERVER_MODEL_EXTRA fails the load with the message the same keys get in a
    model-settings.json (a 400 from the repository API), and the server does not start."""
    bad = {"sessions": 0, "sesions": 2, "preprocess": "imagenett"}
    folder = model_folder(tmp_path / "m", DIGITS / "model.onnx")

    repository = server_settings(tmp_path / "repository")
    (repository / "settings.json").write_text(json.dumps(
        {**json.loads((repository / "settings.json").read_text()), "load_models_at_startup": False}
    ))
    model_folder(repository / "broken", DIGITS / "model.onnx")
    (repository / "broken" / "model-settings.json").write_text(json.dumps({
        "name": "broken", "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"extra": bad},
    }))
    reply = start(repository).http.post("/v2/repository/models/broken/load")
    assert reply.status_code == 400
    message = reply.json()["error"]
    for words in ("'parameters.extra.sessions'", "unknown key 'parameters.extra.sesions'",
                  "'parameters.extra.preprocess'"):
        assert words in message

    log = run_to_exit(tmp_path / "env", environment("broken", folder, bad))
    assert message in log


def test_environment_without_a_name_says_which_variable(tmp_path):
    folder = model_folder(tmp_path / "m", DIGITS / "model.onnx")
    env = environment("", folder)
    log = run_to_exit(tmp_path / "env", env)
    assert "no model name: set MLSERVER_MODEL_NAME" in log


def run_to_exit(workdir: Path, env: dict) -> str:
    """`mlserver start` on an empty folder with `env`: a model that fails at start-up stops it."""
    workdir.mkdir()
    ports = {f"MLSERVER_{kind}_PORT": str(free_port()) for kind in ("HTTP", "GRPC", "METRICS")}
    full = {**os.environ, **env, **ports, "MLSERVER_PARALLEL_WORKERS": "0",
            "MLSERVER_HOST": "127.0.0.1", "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [str(MLSERVER), "start", str(workdir)], cwd=workdir, env=full,
        capture_output=True, text=True, timeout=120,
    )
    return completed.stdout + completed.stderr
