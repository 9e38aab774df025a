"""The repository API over a live server: index, unload, load, a dropped-in folder, and
broken folders that fail with a reason while the other models keep serving."""
import json
import shutil

import numpy as np
import pytest

import reference
from reference import sample_inputs, v2_input
from server import MODEL_REPOSITORY, copy_repository, grpc_calls


@pytest.fixture
def live(make_server, tmp_path):
    return make_server(copy_repository(tmp_path / "repo", models=["digits", "digits-temperature"]))


def _settings(name, extra=None, uri="./model.onnx"):
    return {
        "name": name,
        "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"uri": uri, "version": "1", "extra": extra or {}},
    }


def _drop_folder(server, name, settings, model_bytes=None):
    folder = server.repository / name
    folder.mkdir()
    (folder / "model-settings.json").write_text(json.dumps(settings))
    if model_bytes is not None:
        (folder / "model.onnx").write_bytes(model_bytes)
    return folder


def _index(server):
    response = server.http.post("/v2/repository/index", json={})
    assert response.status_code == 200, response.text
    return {item["name"]: item for item in response.json()}


def _infer_digits(server, model="digits"):
    feeds = sample_inputs("digits", 3)
    response = server.infer(model, [v2_input("input", feeds["input"])])
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    want = reference.run("digits", feeds)
    assert outputs["label"]["data"] == want["label"].tolist()
    got = np.array(outputs["probabilities"]["data"], np.float32).reshape(want["probabilities"].shape)
    np.testing.assert_allclose(got, want["probabilities"], rtol=1e-5, atol=1e-6)


def test_index_unload_and_load_again(live):
    index = _index(live)
    assert {name: item["state"] for name, item in index.items()} == {
        "digits": "READY",
        "digits-temperature": "READY",
    }
    assert live.http.post("/v2/repository/models/digits/unload").status_code == 200
    assert live.http.get("/v2/models/digits/ready").status_code != 200
    response = live.infer("digits", [v2_input("input", sample_inputs("digits", 1)["input"])])
    assert response.status_code == 404
    assert _index(live)["digits"]["state"] != "READY"
    # the other model is untouched
    assert live.http.get("/v2/models/digits-temperature/ready").status_code == 200

    assert live.http.post("/v2/repository/models/digits/load").status_code == 200
    assert live.http.get("/v2/models/digits/ready").status_code == 200
    _infer_digits(live)


def test_a_dropped_in_folder_loads_through_the_api(live):
    model = (MODEL_REPOSITORY / "digits" / "model.onnx").read_bytes()
    _drop_folder(live, "digits-copy", _settings("digits-copy", {"sessions": 2}), model)
    assert "digits-copy" in _index(live)
    response = live.http.post("/v2/repository/models/digits-copy/load")
    assert response.status_code == 200, response.text
    assert _index(live)["digits-copy"]["state"] == "READY"
    _infer_digits(live, "digits-copy")


def test_a_folder_whose_uri_is_a_directory_finds_model_onnx(live):
    folder = _drop_folder(live, "by-folder", _settings("by-folder", uri="./weights"))
    (folder / "weights").mkdir()
    shutil.copy(MODEL_REPOSITORY / "digits" / "model.onnx", folder / "weights" / "model.onnx")
    assert live.http.post("/v2/repository/models/by-folder/load").status_code == 200
    _infer_digits(live, "by-folder")


GOOD_MODEL = (MODEL_REPOSITORY / "digits" / "model.onnx").read_bytes()

# (folder, extra, model bytes, uri, words the load error must contain)
BROKEN = [
    ("corrupt-file", {}, b"this is not an onnx model", "./model.onnx",
     ["corrupt-file", "could not be loaded", "onnxruntime cannot open 'model.onnx'"]),
    ("unknown-key", {"sesions": 2}, GOOD_MODEL, "./model.onnx",
     ["unknown key 'parameters.extra.sesions'", "known keys: backend, device, sessions"]),
    ("unknown-option", {"options": {"threads": 2}}, GOOD_MODEL, "./model.onnx",
     ["unknown key 'parameters.extra.options.threads'", "intra_op_threads"]),
    ("bad-value", {"sessions": 0}, GOOD_MODEL, "./model.onnx",
     ["'parameters.extra.sessions'", "greater than or equal to 1"]),
    ("missing-file", {}, None, "./nowhere.onnx",
     ["nowhere.onnx", "does not exist"]),
    ("empty-folder", {}, None, "./",
     ["holds none of model.onnx"]),
    ("unavailable-device", {"device": "cuda:0"}, GOOD_MODEL, "./model.onnx",
     ["device 'cuda:0'", "CUDAExecutionProvider", "available providers", "CPUExecutionProvider"]),
    ("unknown-device", {"device": "warp-drive"}, GOOD_MODEL, "./model.onnx",
     ["unknown onnxruntime device 'warp-drive'", "openvino"]),
    ("preprocess-mismatch", {"preprocess": "imagenet"}, GOOD_MODEL, "./model.onnx",
     ["preprocess"]),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_a_broken_folder_fails_its_load_with_a_reason(live, case):
    name, extra, model, uri, words = case
    _drop_folder(live, name, _settings(name, extra, uri), model)
    response = live.http.post(f"/v2/repository/models/{name}/load")
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, (word, message)
    assert live.http.get(f"/v2/models/{name}/ready").status_code != 200
    assert _index(live)[name]["state"] != "READY"
    _infer_digits(live)
    assert live.http.get("/v2/health/live").status_code == 200
    # no metric series for a model that never loaded
    left = [metric for metric, samples in live.metrics().items()
            if metric.startswith("mlserver_npu_")
            and any(dict(labels).get("model_name") == name for labels in samples)]
    assert left == [], left


def test_fallback_to_cpu_loads_on_cpu(live):
    extra = {"device": "cuda", "options": {"fallback_to_cpu": True}}
    _drop_folder(live, "fallback", _settings("fallback", extra), GOOD_MODEL)
    assert live.http.post("/v2/repository/models/fallback/load").status_code == 200
    parameters = live.http.get("/v2/models/fallback").json()["parameters"]
    assert parameters["devices"] == "cpu"
    for where in (parameters["warnings"], live.log()):
        assert "device 'cuda' needs CUDAExecutionProvider" in where
        assert "running on cpu instead (options.fallback_to_cpu)" in where
    _infer_digits(live, "fallback")
    assert "warnings" not in live.http.get("/v2/models/digits").json()["parameters"]


def test_repository_api_over_grpc(live):
    _drop_folder(live, "grpc-broken", _settings("grpc-broken", {"sesions": 1}), GOOD_MODEL)
    results = grpc_calls(
        live.grpc_target,
        [
            {"op": "unload", "model": "digits"},
            {"op": "model_ready", "model": "digits"},
            {"op": "load", "model": "digits"},
            {"op": "model_ready", "model": "digits"},
            {"op": "load", "model": "grpc-broken"},
        ],
    )
    assert "ok" in results[0], results[0]
    assert results[1].get("ok") is not True
    assert "ok" in results[2], results[2]
    assert results[3]["ok"] is True
    assert "unknown key 'parameters.extra.sesions'" in results[4]["error"]
    _infer_digits(live)
