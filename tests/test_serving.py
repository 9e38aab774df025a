"""The example repository served by a real `mlserver start`: health, metadata, inference over
REST (plain HTTP and tritonclient.http) and gRPC (tritonclient.grpc), outputs checked against
onnxruntime run directly on the same input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.http as httpclient

import reference
from reference import EXAMPLE_MODELS, sample_inputs, v2_input
from server import REPO, grpc_calls

EXPECTED_METADATA = {
    "digits": (
        [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        ],
    ),
    "digits-temperature": (
        [
            {"name": "pixels", "datatype": "FP32", "shape": [-1, 64]},
            {"name": "temperature", "datatype": "FP32", "shape": [-1, 1]},
        ],
        [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
    ),
    "squeezenet": (
        [{"name": "data_0", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
        [{"name": "softmaxout_1", "datatype": "FP32", "shape": [-1, 1000, 1, 1]}],
    ),
}


def _tensors(items):
    return sorted(({k: t[k] for k in ("name", "datatype", "shape")} for t in items),
                  key=lambda t: t["name"])


def test_health_and_server_metadata_over_rest(server):
    assert server.http.get("/v2/health/live").status_code == 200
    assert server.http.get("/v2/health/ready").status_code == 200
    metadata = server.http.get("/v2").json()
    assert metadata["name"] == server.name
    assert metadata["version"]


@pytest.mark.parametrize("model", EXAMPLE_MODELS)
def test_model_metadata_is_introspected_over_rest(server, model):
    response = server.http.get(f"/v2/models/{model}")
    assert response.status_code == 200, response.text
    metadata = response.json()
    inputs, outputs = EXPECTED_METADATA[model]
    assert _tensors(metadata["inputs"]) == _tensors(inputs)
    assert _tensors(metadata["outputs"]) == _tensors(outputs)
    assert metadata["parameters"]["backend"] == "onnxruntime"
    assert metadata["parameters"]["devices"] == "cpu"
    assert server.http.get(f"/v2/models/{model}/ready").status_code == 200


def test_health_and_metadata_over_grpc(server):
    results = grpc_calls(
        server.grpc_target,
        [{"op": "live"}, {"op": "ready"}, {"op": "server_metadata"}]
        + [{"op": "model_metadata", "model": m} for m in EXAMPLE_MODELS]
        + [{"op": "model_ready", "model": "digits"}],
    )
    assert [r.get("ok") for r in results[:2]] == [True, True]
    assert results[2]["ok"]["name"] == server.name
    for model, result in zip(EXAMPLE_MODELS, results[3:]):
        inputs, outputs = EXPECTED_METADATA[model]
        metadata = result["ok"]
        # tritonclient's JSON renders int64 shapes as strings
        for tensor in metadata["inputs"] + metadata["outputs"]:
            tensor["shape"] = [int(d) for d in tensor["shape"]]
        assert _tensors(metadata["inputs"]) == _tensors(inputs)
        assert _tensors(metadata["outputs"]) == _tensors(outputs)
    assert results[-1]["ok"] is True


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("model", EXAMPLE_MODELS)
def test_rest_inference_equals_onnxruntime(server, model, batch):
    feeds = sample_inputs(model, batch)
    expected = reference.run(model, feeds)
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    inputs = []
    for name, array in feeds.items():
        tensor = httpclient.InferInput(name, list(array.shape), "FP32")
        # MLServer's REST has no binary tensor extension: JSON data only.
        tensor.set_data_from_numpy(array, binary_data=False)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    response = result.get_response()
    assert response["model_name"] == model
    assert response["model_version"] == "1"
    assert {o["name"] for o in response["outputs"]} == set(expected)
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got.shape == want.shape
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 7])
def test_grpc_inference_equals_onnxruntime(server, batch):
    calls, expected = [], []
    for model in EXAMPLE_MODELS:
        feeds = sample_inputs(model, batch)
        calls.append(
            {"op": "infer", "model": model, "inputs": [v2_input(n, a) for n, a in feeds.items()]}
        )
        expected.append(reference.run(model, feeds))
    for model, result, want in zip(EXAMPLE_MODELS, grpc_calls(server.grpc_target, calls), expected):
        assert "ok" in result, (model, result)
        assert result["ok"]["model_version"] == "1"
        outputs = result["ok"]["outputs"]
        assert set(outputs) == set(want)
        for name, array in want.items():
            assert outputs[name]["shape"] == list(array.shape)
            assert outputs[name]["datatype"] == str(array.dtype)
            got = np.array(outputs[name]["data"], dtype=array.dtype).reshape(array.shape)
            np.testing.assert_allclose(got, array, rtol=1e-5, atol=1e-5)


def test_only_requested_outputs_are_returned(server):
    feeds = sample_inputs("digits", 3)
    response = server.infer(
        "digits", [v2_input("input", feeds["input"])], outputs=[{"name": "probabilities"}]
    )
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == ["probabilities"]
    want = reference.run("digits", feeds)["probabilities"]
    np.testing.assert_allclose(
        np.array(outputs[0]["data"]).reshape(outputs[0]["shape"]), want, rtol=1e-5, atol=1e-6
    )
    [result] = grpc_calls(
        server.grpc_target,
        [{"op": "infer", "model": "digits", "inputs": [v2_input("input", feeds["input"])],
          "outputs": [{"name": "label"}]}],
    )
    assert list(result["ok"]["outputs"]) == ["label"]
    assert result["ok"]["outputs"]["label"]["data"] == reference.run("digits", feeds)["label"].tolist()


def test_inputs_are_matched_by_name_not_order(server):
    feeds = sample_inputs("digits-temperature", 4)
    # temperature first, pixels second: the reverse of the model's order
    inputs = [v2_input(name, feeds[name]) for name in ("temperature", "pixels")]
    response = server.infer("digits-temperature", inputs)
    assert response.status_code == 200, response.text
    want = reference.run("digits-temperature", feeds)
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    got = np.array(outputs["probabilities"]["data"], dtype=np.float32).reshape(4, 10)
    np.testing.assert_allclose(got, want["probabilities"], rtol=1e-5, atol=1e-6)
    assert outputs["label"]["data"] == want["label"].tolist()
    # The temperature really reaches the model: a hotter softmax is flatter.
    hot = dict(feeds, temperature=np.full((4, 1), 50, np.float32))
    hot_response = server.infer("digits-temperature", [v2_input(n, a) for n, a in hot.items()])
    hot_probs = np.array(
        {o["name"]: o for o in hot_response.json()["outputs"]}["probabilities"]["data"]
    ).reshape(4, 10)
    assert hot_probs.max(axis=1).max() < got.max(axis=1).min()


def test_single_input_model_accepts_any_input_name(server):
    feeds = sample_inputs("digits", 2)
    response = server.infer("digits", [v2_input("digits", feeds["input"])])
    assert response.status_code == 200, response.text
    label = {o["name"]: o for o in response.json()["outputs"]}["label"]["data"]
    assert label == reference.run("digits", feeds)["label"].tolist()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_readme_example_client_prints_the_served_labels(server, protocol):
    url = server.url.removeprefix("http://") if protocol == "http" else server.grpc_target
    completed = subprocess.run(
        [sys.executable, str(REPO / "examples" / "infer_digits.py"),
         "--protocol", protocol, "--url", url, "--count", "6"],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    predicted = [int(line.split()[3]) for line in completed.stdout.splitlines()]
    assert predicted == reference.run("digits", sample_inputs("digits", 6))["label"].tolist()


def test_readme_curl_body_is_served(server):
    body = json.loads((REPO / "examples" / "digit.json").read_text())
    response = server.http.post("/v2/models/digits/infer", json=body)
    assert response.status_code == 200, response.text
    pixels = np.array(body["inputs"][0]["data"], np.float32).reshape(1, 64)
    label = {o["name"]: o for o in response.json()["outputs"]}["label"]["data"]
    assert label == reference.run("digits", {"input": pixels})["label"].tolist()


def test_nested_integer_data_gives_the_same_tensor_as_flat_floats(server):
    """REST JSON may nest `data` by shape and write whole numbers as integers; decoding takes
    another path for those than for flat floats, and must give the same tensor."""
    feeds = sample_inputs("digits", 3)  # whole-numbered pixel values 0..16
    pixels = feeds["input"]
    nested = dict(v2_input("input", pixels), data=pixels.astype(int).tolist())
    want = reference.run("digits", feeds)
    for inputs in ([nested], [v2_input("input", pixels)]):
        response = server.infer("digits", inputs)
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        got = np.array(outputs["probabilities"]["data"], np.float32).reshape(3, 10)
        np.testing.assert_allclose(got, want["probabilities"], rtol=1e-5, atol=1e-6)
        assert outputs["label"]["data"] == want["label"].tolist()
