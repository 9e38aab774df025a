"""Every client mistake is a 400 (gRPC: INVALID_ARGUMENT) naming the tensor and what was
expected, and the server keeps serving afterwards."""
import numpy as np
import pytest

import reference
from reference import sample_inputs, v2_input
from server import grpc_calls

PIXELS = sample_inputs("digits", 2)["input"]
TEMPERATURE = np.ones((2, 1), np.float32)


def _digits(**changes):
    tensor = v2_input("input", PIXELS)
    tensor.update(changes)
    return [tensor]


# (id, model, inputs, requested outputs, words the error must contain)
MISTAKES = [
    ("unknown-input", "digits-temperature",
     [v2_input("pixels", PIXELS), v2_input("temp", TEMPERATURE)], None,
     ["unknown input 'temp'", "'temperature'"]),
    ("missing-input", "digits-temperature", [v2_input("pixels", PIXELS)], None,
     ["missing input 'temperature'", "FP32 [-1, 1]"]),
    ("wrong-shape", "digits", _digits(shape=[4, 32]), None,
     ["input 'input'", "expected shape [-1, 64]", "[4, 32]"]),
    ("wrong-rank", "digits", _digits(shape=[128]), None,
     ["input 'input'", "expected shape [-1, 64]", "[128]"]),
    ("wrong-datatype", "digits", _digits(datatype="INT64", data=[1] * 128), None,
     ["input 'input'", "expected datatype FP32", "got INT64"]),
    ("data-length", "digits", _digits(data=PIXELS.ravel().tolist()[:-1]), None,
     ["input 'input'", "needs 128 values", "got 127"]),
    ("non-numeric-data", "digits", _digits(shape=[1, 64], data=["x"] * 64), None,
     ["input 'input'", "not a valid FP32 tensor"]),
    ("batch-disagreement", "digits-temperature",
     [v2_input("pixels", PIXELS), v2_input("temperature", np.ones((3, 1), np.float32))], None,
     ["batch size", "'pixels' has 2", "'temperature' has 3"]),
    ("unknown-output", "digits", _digits(), [{"name": "scores"}],
     ["unknown output 'scores'", "'probabilities'"]),
]
IDS = [m[0] for m in MISTAKES]


def _assert_digits_still_served(server):
    feeds = sample_inputs("digits", 2)
    response = server.infer("digits", [v2_input("input", feeds["input"])])
    assert response.status_code == 200, response.text
    label = {o["name"]: o for o in response.json()["outputs"]}["label"]["data"]
    assert label == reference.run("digits", feeds)["label"].tolist()


@pytest.mark.parametrize("case", MISTAKES, ids=IDS)
def test_rest_client_mistake_is_400_naming_the_tensor(server, case):
    _, model, inputs, outputs, words = case
    response = server.infer(model, inputs, outputs)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, (word, message)
    _assert_digits_still_served(server)


# tritonclient checks these itself and refuses to send them; REST covers them above
UNSENDABLE_BY_TRITONCLIENT = {"data-length", "non-numeric-data"}


def test_grpc_client_mistakes_are_invalid_argument(server):
    checked = [m for m in MISTAKES if m[0] not in UNSENDABLE_BY_TRITONCLIENT]
    calls = [
        {"op": "infer", "model": model, "inputs": inputs, "outputs": outputs}
        for _, model, inputs, outputs, _ in checked
    ]
    good = sample_inputs("digits", 3)
    calls.append({"op": "infer", "model": "digits", "inputs": [v2_input("input", good["input"])]})
    results = grpc_calls(server.grpc_target, calls)
    for case, result in zip(checked, results):
        assert result.get("status") == "StatusCode.INVALID_ARGUMENT", (case[0], result)
        for word in case[4]:
            assert word in result["error"], (case[0], word, result["error"])
    assert results[-1]["ok"]["outputs"]["label"]["data"] == (
        reference.run("digits", good)["label"].tolist()
    )


def test_unknown_model_is_404(server):
    response = server.infer("no-such-model", _digits())
    assert response.status_code == 404
    assert "no-such-model" in response.json()["error"]
