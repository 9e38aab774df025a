"""TFLite models served through LiteRT, compared with LiteRT run directly on the same input:
a float32 model with a static batch of 1, and a uint8-quantized one with a dynamic batch."""
import asyncio
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import reference
from reference import v2_input
from server import TFLITE_REPOSITORY, Server, copy_model, grpc_calls


def litert(model: str, pixels: np.ndarray) -> dict:
    """LiteRT directly, one row at a time (valid for both models whatever their batch)."""
    interpreter = Interpreter(model_path=str(TFLITE_REPOSITORY / model / "model.tflite"))
    interpreter.allocate_tensors()
    (source,) = interpreter.get_input_details()
    rows = []
    for row in pixels:
        interpreter.set_tensor(source["index"], row[None])
        interpreter.invoke()
        rows.append({d["name"]: interpreter.get_tensor(d["index"])
                     for d in interpreter.get_output_details()})
    return {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}


@pytest.fixture(scope="module")
def tflite(tmp_path_factory):
    root = tmp_path_factory.mktemp("tflite")
    repository = shutil.copytree(TFLITE_REPOSITORY, root / "repository")
    copy_model(TFLITE_REPOSITORY / "digits-uint8", repository, "digits-uint8-real",
               {"options": {"num_threads": 1, "dequantize_outputs": True}})
    running = Server(Path(repository), root).wait_ready()
    yield running
    running.stop()


def _outputs(response):
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


@pytest.mark.parametrize("model, datatype", [("digits-tflite", "FP32"), ("digits-uint8", "UINT8")])
def test_metadata_keeps_the_model_dtypes(tflite, model, datatype):
    metadata = tflite.http.get(f"/v2/models/{model}").json()
    assert metadata["parameters"]["backend"] == "tflite"
    assert metadata["parameters"]["devices"] == "cpu"
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("input", datatype, [-1, 64])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("label", "INT64", [-1]), ("probabilities", datatype, [-1, 10])]
    # batch 1 is fixed in the float model, dynamic in the quantized one
    assert metadata["parameters"].get("static_batch") == (1 if model == "digits-tflite" else None)


@pytest.mark.parametrize("model, dtype", [("digits-tflite", np.float32),
                                          ("digits-uint8", np.uint8)])
def test_inference_matches_litert_over_rest_and_grpc(tflite, model, dtype):
    pixels = reference.digits(7, offset=400).astype(dtype)
    want = litert(model, pixels)
    outputs = _outputs(tflite.infer(model, [v2_input("input", pixels)]))
    assert outputs["label"]["data"] == want["label"].tolist()
    assert outputs["probabilities"]["datatype"] == ("FP32" if dtype == np.float32 else "UINT8")
    got = np.array(outputs["probabilities"]["data"], dtype).reshape(7, 10)
    np.testing.assert_allclose(got, want["probabilities"], rtol=1e-6)
    # the model is a real classifier, not just self-consistent
    assert np.mean(want["label"] == reference.run("digits", {"input": pixels.astype(np.float32)})[
        "label"]) >= 6 / 7

    [result] = grpc_calls(tflite.grpc_target, [
        {"op": "infer", "model": model, "inputs": [v2_input("input", pixels[:3])]}])
    grpc_probabilities = result["ok"]["outputs"]["probabilities"]
    assert grpc_probabilities["datatype"] == str(np.dtype(dtype))
    assert grpc_probabilities["data"] == want["probabilities"][:3].ravel().tolist()


def test_concurrent_requests_share_one_interpreter_safely(tflite):
    """One session, one interpreter: runs are serialized, each client gets its own answer."""
    batches = [reference.digits(1 + i % 4, offset=11 * i).astype(np.uint8) for i in range(12)]

    async def send_all():
        async with httpx.AsyncClient(base_url=tflite.url, timeout=60) as client:
            return await asyncio.gather(*(
                client.post("/v2/models/digits-uint8/infer",
                            json={"inputs": [v2_input("input", b)]})
                for b in batches))

    for pixels, response in zip(batches, asyncio.run(send_all())):
        want = litert("digits-uint8", pixels)
        got = _outputs(response)
        assert got["label"]["data"] == want["label"].tolist()
        assert got["probabilities"]["data"] == want["probabilities"].ravel().tolist()


def test_wrong_datatype_for_a_quantized_model_is_400(tflite):
    response = tflite.infer("digits-uint8", [v2_input("input", reference.digits(2))])
    assert response.status_code == 400
    assert "expected datatype UINT8, got FP32" in response.json()["error"]



def _quantization(model: str) -> dict:
    """LiteRT's own (scale, zero point) of each quantized input and output of `model`."""
    interpreter = Interpreter(model_path=str(TFLITE_REPOSITORY / model / "model.tflite"))
    details = interpreter.get_input_details() + interpreter.get_output_details()
    return {
        d["name"]: (float(d["quantization_parameters"]["scales"][0]),
                    int(d["quantization_parameters"]["zero_points"][0]))
        for d in details if len(d["quantization_parameters"]["scales"])
    }


def _tensor_parameters(metadata: dict) -> dict:
    return {
        t["name"]: (t["parameters"]["scale"], t["parameters"]["zero_point"])
        for t in metadata["inputs"] + metadata["outputs"]
        if "scale" in (t.get("parameters") or {})
    }


def test_metadata_shows_the_scale_and_zero_point_of_quantized_tensors(tflite):
    quantization = _quantization("digits-uint8")
    assert set(quantization) == {"input", "probabilities"}
    metadata = tflite.http.get("/v2/models/digits-uint8").json()
    assert _tensor_parameters(metadata) == quantization
    # a float model has none
    assert _tensor_parameters(tflite.http.get("/v2/models/digits-tflite").json()) == {}


def test_dequantize_outputs_returns_real_values_as_fp32(tflite):
    metadata = tflite.http.get("/v2/models/digits-uint8-real").json()
    assert [(t["name"], t["datatype"]) for t in metadata["outputs"]] == [
        ("label", "INT64"), ("probabilities", "FP32")]
    # the input stays quantized: clients still send UINT8, and see its scale
    assert _tensor_parameters(metadata) == {"input": _quantization("digits-uint8")["input"]}

    pixels = reference.digits(5, offset=600).astype(np.uint8)
    want = litert("digits-uint8", pixels)
    scale, zero_point = _quantization("digits-uint8")["probabilities"]
    real = (want["probabilities"].astype(np.float32) - zero_point) * np.float32(scale)
    outputs = _outputs(tflite.infer("digits-uint8-real", [v2_input("input", pixels)]))
    assert outputs["label"]["data"] == want["label"].tolist()
    assert outputs["probabilities"]["datatype"] == "FP32"
    got = np.array(outputs["probabilities"]["data"], np.float32).reshape(5, 10)
    np.testing.assert_array_equal(got, real)
    assert np.all(np.abs(got.sum(axis=1) - 1) < 0.05)  # probabilities, not 0..255 integers
