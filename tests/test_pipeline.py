"""`mlserver_npu.Pipeline` over a live server: a pipeline's outputs equal running its steps by
hand through their own served models; independent steps run concurrently; every bad
pipeline fails its load naming the step at fault while the other models keep serving; a
request error inside a step is a 400 naming the step and the tensor."""
import asyncio
import json
import time

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import images
import reference
from images import b64, encode, photo
from reference import v2_input
from server import Server, copy_model, copy_repository, grpc_calls
from test_pool import _busy_model

PIPELINE = "mlserver_npu.Pipeline"


def _sharpen_model(path):
    """y = x^2 / sum(x^2) per row: a second stage that takes a classifier's probabilities."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "x"], ["squared"]),
            helper.make_node("ReduceSum", ["squared", "axes"], ["total"], keepdims=1),
            helper.make_node("Div", ["squared", "total"], ["y"]),
        ],
        "sharpen",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _write(folder, settings):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return folder


def _model(repository, name, extra=None):
    return _write(repository / name, {
        "name": name, "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"uri": "./model.onnx", "version": "1",
                       "extra": {"options": {"intra_op_threads": 1}, **(extra or {})}},
    })


def _pipeline(repository, name, extra):
    return _write(repository / name, {
        "name": name, "implementation": PIPELINE, "parameters": {"version": "1", "extra": extra},
    })


CHAIN = {
    "steps": [
        {"name": "classify", "model": "../digits-image"},
        {"name": "sharpen", "model": "../sharpen",
         "inputs": {"x": "classify.outputs.probabilities"}},
    ],
    "outputs": {"scores": "sharpen.outputs.y", "label": "classify.outputs.label"},
}
BUSY_PAIR = {
    "steps": [
        {"name": "left", "model": "../busy-a", "inputs": {"x": "inputs.rows"}},
        {"name": "right", "model": "../busy-b", "inputs": {"x": "inputs.rows"}},
        {"name": "both", "combine": "concat", "inputs": ["left.outputs.y", "right.outputs.y"]},
    ],
    "outputs": {"y": "both.outputs.y"},
}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    repository = copy_repository(
        root / "repo", models=["digits", "digits-mlp", "digits-ensemble", "digits-image"]
    )
    _sharpen_model(_model(repository, "sharpen") / "model.onnx")
    for name in ("busy-a", "busy-b"):
        _busy_model(_model(repository, name) / "model.onnx")
    _pipeline(repository, "chain", CHAIN)
    _pipeline(repository, "busy-pair", BUSY_PAIR)
    copy_model(repository / "digits", repository, "digits-batching",
               {"batching": {"max_batch_size": 8}})
    _pipeline(repository, "batched", {"steps": [{"name": "only", "model": "../digits-batching"}],
                                      "outputs": {"p": "only.outputs.probabilities"}})
    running = Server.start(repository, root)
    running.busy_model = repository / "busy-a" / "model.onnx"
    yield running
    running.stop()


def _outputs(response):
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def _array(output):
    return np.array(output["data"], np.float32).reshape(output["shape"])


def _served(live, model, inputs, outputs=None):
    return _outputs(live.infer(model, inputs, outputs))


RAW = [{"name": "probabilities", "parameters": {"classification": 0}}]


def test_the_ensemble_equals_the_average_of_its_served_models(live):
    pixels = reference.digits(40, offset=300)
    tensor = [v2_input("input", pixels)]
    by_hand = [_array(_served(live, model, tensor)["probabilities"])
               for model in ("digits", "digits-mlp")]
    mean = (by_hand[0] + by_hand[1]) / 2
    raw = _served(live, "digits-ensemble", tensor, RAW)["probabilities"]
    np.testing.assert_allclose(_array(raw), mean, rtol=1e-5, atol=1e-6)

    strings = _served(live, "digits-ensemble", tensor)["probabilities"]
    assert strings["shape"] == [40, 3]
    rows = images.parse_classes(np.array(strings["data"]).reshape(40, 3))
    assert [[i for _, i, _ in row] for row in rows] == images.top_k(mean, 3).tolist()
    assert [row[0][2] for row in rows] == [str(i) for i in mean.argmax(axis=1)]
    # and the two models really differ: the ensemble is not one of them
    assert not np.allclose(by_hand[0], by_hand[1], atol=1e-2)


def test_pipeline_metadata_shows_its_inputs_and_outputs(live):
    ensemble = live.http.get("/v2/models/digits-ensemble").json()
    assert ensemble["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert ensemble["outputs"] == [{"name": "probabilities", "datatype": "BYTES", "shape": [-1, 3]}]
    assert ensemble["parameters"]["steps"] == "logistic,mlp,average"
    chain = live.http.get("/v2/models/chain").json()
    assert chain["inputs"] == [{"name": "input", "datatype": "BYTES", "shape": [-1],
                                "parameters": {"content_type": "image"}}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in chain["outputs"]} == {
        "scores": ("FP32", [-1, 10]), "label": ("INT64", [-1])}


def _image_input(files):
    return {"name": "input", "shape": [len(files)], "datatype": "BYTES",
            "data": [b64(f) for f in files]}


def test_a_chain_of_an_image_classifier_and_a_second_model_equals_both_by_hand(live):
    _, x_test, _, _ = images.digits_split()
    files = [images.digit_file(x, "PNG") for x in x_test[:6]]
    first = _served(live, "digits-image", [_image_input(files)], RAW + [{"name": "label"}])
    second = _served(live, "sharpen", [v2_input("x", _array(first["probabilities"]))])
    outputs = _served(live, "chain", [_image_input(files)])
    np.testing.assert_allclose(_array(outputs["scores"]), _array(second["y"]), rtol=1e-5, atol=1e-7)
    assert outputs["label"]["data"] == first["label"]["data"]

    (result,) = grpc_calls(live.grpc_target, [
        {"op": "infer", "model": "chain", "inputs": [_image_input(files)]}])
    scores = result["ok"]["outputs"]["scores"]
    np.testing.assert_allclose(np.array(scores["data"], np.float32).reshape(scores["shape"]),
                               _array(second["y"]), rtol=1e-5, atol=1e-7)


def _step_seconds(live):
    histogram = live.metrics().get("mlserver_npu_step_seconds_sum", {})
    return {dict(labels)["step"]: value for labels, value in histogram.items()
            if dict(labels)["model_name"] == "busy-pair"}


def test_independent_steps_run_concurrently(live):
    """The two busy steps each take some 30 ms on the same rows. The pipeline answers
    in less wall time than the two steps took together: they overlapped."""
    x = np.random.default_rng(3).standard_normal((512, 8)).astype(np.float32)
    body = {"inputs": [v2_input("rows", x)]}
    live.http.post("/v2/models/busy-pair/infer", json=body)  # first runs: allocation
    before = _step_seconds(live)
    start = time.perf_counter()
    outputs = _outputs(live.http.post("/v2/models/busy-pair/infer", json=body))
    wall = time.perf_counter() - start
    after = _step_seconds(live)
    steps = {step: after[step] - before.get(step, 0) for step in after}
    assert set(steps) == {"left", "right"}
    assert steps["left"] + steps["right"] > wall, (steps, wall)
    (y,) = reference.session(live.busy_model).run(None, {"x": x})
    np.testing.assert_allclose(_array(outputs["y"]), np.concatenate([y, y], axis=1),
                               rtol=1e-4, atol=1e-5)


def test_concurrent_requests_to_a_pipeline_get_their_own_rows(live):
    batches = [reference.digits(1 + i % 4, offset=20 * i) for i in range(12)]

    async def send():
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            return await asyncio.gather(*(
                client.post("/v2/models/digits-ensemble/infer",
                            json={"inputs": [v2_input("input", b)], "outputs": RAW})
                for b in batches))

    for pixels, response in zip(batches, asyncio.run(send())):
        want = np.mean([reference.run("digits", {"input": pixels})["probabilities"],
                        reference.session(reference.MODEL_REPOSITORY / "digits-mlp/model.onnx")
                        .run(["probabilities"], {"input": pixels})[0]], axis=0)
        np.testing.assert_allclose(_array(_outputs(response)["probabilities"]), want,
                                   rtol=1e-5, atol=1e-6)


# --- request errors inside a step name the step and the tensor ---

def test_a_bad_tensor_is_400_naming_the_step(live):
    response = live.infer("digits-ensemble", [v2_input("input", np.zeros((2, 32), np.float32))])
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    for word in ["step 'logistic'", "input 'input'", "expected shape [-1, 64]", "[2, 32]"]:
        assert word in message, (word, message)


def test_a_bad_image_is_400_naming_the_step_over_rest_and_grpc(live):
    bad = _image_input([encode(photo(8, 8), "PNG"), b"not an image"])
    response = live.infer("chain", [bad])
    assert response.status_code == 400, response.text
    for word in ["step 'classify'", "input 'input', batch index 1", "not a decodable image"]:
        assert word in response.json()["error"], word
    (result,) = grpc_calls(live.grpc_target, [{"op": "infer", "model": "chain", "inputs": [bad]}])
    assert result["status"] == "StatusCode.INVALID_ARGUMENT", result
    assert "step 'classify'" in result["error"]


def test_unknown_and_missing_pipeline_inputs_are_400(live):
    x = np.zeros((1, 8), np.float32)
    response = live.infer("busy-pair", [v2_input("rows", x), v2_input("extra", x)])
    assert response.status_code == 400, response.text
    assert "unknown input 'extra'" in response.json()["error"]
    assert "'rows' (FP32 [-1, 8])" in response.json()["error"]


def test_a_huge_input_name_is_quoted_short(live):
    pixels = reference.digits(1)
    response = live.infer("digits-ensemble", [v2_input("input", pixels),
                                              v2_input("x" * 2**20, pixels)])
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert "unknown input 'xxx" in message and "the pipeline's inputs are: 'input'" in message
    assert len(response.content) < 1000, len(response.content)


def _model_samples(live, metric, model):
    return {dict(labels).get("outcome", dict(labels).get("stage")): value
            for labels, value in live.metrics().get(metric, {}).items()
            if dict(labels)["model_name"] == model}


def test_pipeline_requests_are_counted_and_timed(live):
    before = _model_samples(live, "mlserver_npu_requests_total", "digits-ensemble")
    stages = _model_samples(live, "mlserver_npu_stage_seconds_count", "digits-ensemble")
    for pixels, status in ((reference.digits(2), 200), (np.zeros((1, 3), np.float32), 400)):
        assert live.infer("digits-ensemble", [v2_input("input", pixels)]).status_code == status
    after = _model_samples(live, "mlserver_npu_requests_total", "digits-ensemble")
    assert after["ok"] == before.get("ok", 0) + 1
    assert after["client_error"] == before.get("client_error", 0) + 1
    timed = _model_samples(live, "mlserver_npu_stage_seconds_count", "digits-ensemble")
    for name in ("decode", "device", "encode"):
        assert timed[name] == stages.get(name, 0) + 2, name


def test_a_batching_step_records_its_queue_under_the_pipeline(live):
    """A step's batcher wait is the pipeline request's `queue` stage, not its folder's."""
    pixels = reference.digits(3)
    outputs = _served(live, "batched", [v2_input("input", pixels)])
    np.testing.assert_allclose(_array(outputs["p"]),
                               reference.run("digits", {"input": pixels})["probabilities"],
                               rtol=1e-5, atol=1e-6)
    queued = _model_samples(live, "mlserver_npu_stage_seconds_count", "batched")
    assert queued.get("queue", 0) >= 1, queued
    assert _model_samples(live, "mlserver_npu_stage_seconds_count",
                          "digits-batching").get("queue", 0) == 0


# --- bad pipelines fail the load, naming the step ---

def _steps(*steps, outputs=None):
    return {"steps": list(steps), "outputs": outputs or {"p": "a.outputs.probabilities"}}


A = {"name": "a", "model": "../digits"}
# (id, parameters.extra, words the load error must contain)
BAD_PIPELINES = [
    ("unknown-step", _steps(A, {"name": "b", "model": "../digits",
                                "inputs": {"input": "featurs.outputs.y"}}),
     ["step 'b'", "'featurs.outputs.y'", "no step 'featurs'", "the steps are: a, b"]),
    ("cycle", _steps({"name": "a", "model": "../sharpen", "inputs": {"x": "b.outputs.y"}},
                     {"name": "b", "model": "../sharpen", "inputs": {"x": "a.outputs.y"}},
                     outputs={"y": "b.outputs.y"}),
     ["step 'a'", "cycle", "a -> b -> a"]),
    ("missing-output", _steps(A, {"name": "avg", "combine": "mean",
                                  "inputs": ["a.outputs.probs", "a.outputs.probabilities"]}),
     ["step 'avg'", "'a.outputs.probs'", "no output 'probs'", "label, probabilities"]),
    ("missing-pipeline-output", _steps(A, outputs={"p": "a.outputs.scores"}),
     ["output 'p'", "no output 'scores'"]),
    ("dtype-mismatch", _steps(A, {"name": "b", "model": "../sharpen",
                                  "inputs": {"x": "a.outputs.label"}}),
     ["step 'b'", "input 'x' takes FP32 [-1, 10]", "'a.outputs.label' is INT64 [-1]"]),
    ("shape-mismatch", _steps(A, {"name": "b", "model": "../digits",
                                  "inputs": {"input": "a.outputs.probabilities"}}),
     ["step 'b'", "takes FP32 [-1, 64]", "is FP32 [-1, 10]"]),
    ("combine-mismatch", _steps(A, {"name": "avg", "combine": "max",
                                    "inputs": ["a.outputs.probabilities", "a.outputs.label"]}),
     ["step 'avg'", "max needs tensors of one datatype and shape", "INT64 [-1]"]),
    ("unknown-model-input", _steps({"name": "a", "model": "../digits",
                                    "inputs": {"pixels": "inputs.x"}}),
     ["step 'a'", "'inputs' maps 'pixels'", "the model's inputs are: input"]),
    ("no-folder", _steps({"name": "a", "model": "../nowhere"}),
     ["step 'a'", "no model-settings.json", "nowhere"]),
    ("step-fails-to-load", _steps({"name": "a", "model": "../broken"}),
     ["step 'a'", "unknown key 'parameters.extra.sesions'"]),
    ("bad-reference", _steps(A, {"name": "b", "combine": "mean",
                                 "inputs": ["a.output.probabilities", "a.outputs.probabilities"]}),
     ["step 'b'", "'a.output.probabilities' is not 'inputs.<name>' or '<step>.outputs.<name>'"]),
    ("input-disagrees", _steps({"name": "a", "model": "../digits"},
                               {"name": "b", "model": "../digits-image"}),
     ["step 'b'", "pipeline input 'input' is BYTES [-1] (image) here",
      "FP32 [-1, 64] in step 'a'"]),
    ("unknown-key", dict(_steps(A), stpes=[]), ["unknown key 'parameters.extra.stpes'"]),
    ("not-a-plugin-model", _steps({"name": "a", "model": "../foreign"}),
     ["step 'a'", "implementation 'mlserver_sklearn.SKLearnModel'"]),
]


@pytest.mark.parametrize("case", BAD_PIPELINES, ids=[c[0] for c in BAD_PIPELINES])
def test_a_bad_pipeline_fails_the_load_naming_the_step(live, case):
    name, extra, words = case
    _pipeline(live.repository, f"bad-{name}", extra)
    if not (live.repository / "broken").exists():
        _write(live.repository / "broken", {
            "name": "broken", "implementation": "mlserver_npu.NPURuntime",
            "parameters": {"uri": "../digits/model.onnx", "extra": {"sesions": 2}}})
        _write(live.repository / "foreign", {
            "name": "foreign", "implementation": "mlserver_sklearn.SKLearnModel"})
    message = live.assert_load_fails(f"bad-{name}", words)
    # the reason is in the server log too, at ERROR (MLServer logs only "Couldn't load" at INFO)
    assert f"ERROR - {message}" in live.log()
    pixels = reference.digits(2)
    raw = _served(live, "digits-ensemble", [v2_input("input", pixels)], RAW)["probabilities"]
    assert _array(raw).shape == (2, 10)
