"""Seldon Core 2's way into the runtime: its agent copies the model's folder into a versioned
repository, rewrites model-settings.json through its own subset of the fields, writes each of
the Model's `parameters` into `parameters.extra` as a string, and loads the model through
MLServer's gRPC repository API (models are not loaded at start-up). The parameters of
deploy/seldon/model-cpu.yaml must arrive as the typed keys the runtime reads."""
import json
import shutil
from pathlib import Path

import numpy as np
import yaml

import reference
from server import MODEL_REPOSITORY, REPO, grpc_calls

# The fields of the agent's Go structs (scheduler/pkg/agent/repository/mlserver/mlserver.go,
# ModelSettings and ModelParameters); it drops every other key when it rewrites the file.
AGENT_FIELDS = ["name", "inputs", "outputs", "platform", "versions", "parallel_workers",
                "implementation", "parameters"]
AGENT_PARAMETERS = ["uri", "version", "format", "content_type", "extra", "environment_tarball"]


def seldon_agent(artifact: Path, repository: Path, model: dict, version: int = 1) -> str:
    """What the agent does to a Model's artifact before it asks MLServer to load it."""
    name = f"{model['metadata']['name']}_{version}"
    folder = repository / name / str(version)
    shutil.copytree(artifact, folder)
    settings = json.loads((folder / "model-settings.json").read_text())
    settings = {key: settings[key] for key in AGENT_FIELDS if key in settings}
    parameters = settings.setdefault("parameters", {})
    settings["parameters"] = {k: parameters[k] for k in AGENT_PARAMETERS if k in parameters}
    settings["name"] = name
    settings["parameters"]["version"] = str(version)
    extra = settings["parameters"].setdefault("extra", {})
    for parameter in model["spec"].get("parameters", []):
        extra[parameter["name"]] = parameter["value"]
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return name


def test_seldon_model_parameters_reach_the_runtime(tmp_path, make_server):
    model = yaml.safe_load((REPO / "deploy/seldon/model-cpu.yaml").read_text())
    parameters = {p["name"]: p["value"] for p in model["spec"]["parameters"]}
    assert parameters["sessions"] == "2"  # a string, as Seldon writes it

    # the user's artifact: the model and a model-settings.json naming our runtime
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    shutil.copy(MODEL_REPOSITORY / "digits" / "model.onnx", artifact)
    (artifact / "model-settings.json").write_text(json.dumps({
        "name": "digits", "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"uri": "./model.onnx"},
    }))
    repository = tmp_path / "agent-models"
    repository.mkdir()
    settings = json.loads((MODEL_REPOSITORY / "settings.json").read_text())
    (repository / "settings.json").write_text(json.dumps(
        {**settings, "load_models_at_startup": False}
    ))
    name = seldon_agent(artifact, repository, model)
    server = make_server(repository)
    assert server.http.get(f"/v2/models/{name}/ready").status_code != 200

    pixels = reference.digits(4)
    tensor = {"name": "input", "datatype": "FP32", "shape": list(pixels.shape),
              "data": pixels.ravel().tolist()}
    calls = [{"op": "load", "model": name}] + [
        {"op": "infer", "model": name, "inputs": [tensor]} for _ in range(4)
    ]
    load, *results = grpc_calls(server.grpc_target, calls)
    assert "error" not in load, load
    want = reference.run("digits", {"input": pixels})
    for result in results:
        outputs = result["ok"]["outputs"]
        np.testing.assert_allclose(
            np.array(outputs["probabilities"]["data"]).reshape(4, 10), want["probabilities"],
            rtol=1e-5, atol=1e-6,
        )
        assert outputs["label"]["data"] == want["label"].tolist()

    metadata = server.http.get(f"/v2/models/{name}").json()
    assert metadata["parameters"]["devices"] == "cpu,cpu"  # device "cpu", sessions "2"
    # and options, a JSON string, loaded as the dict the backend validates
    assert sorted(server.session_runs(name)) == ["0", "1"]
