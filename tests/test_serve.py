"""`mlserver-npu serve`: bare model files and a repository in one command, served equal to the
runtimes run directly; a model that cannot load makes it exit non-zero with the reason; the
per-stage metrics of the requests it served."""
import base64
import json
import re
import shutil
import time

import numpy as np
import pytest

import reference
from reference import v2_input
from server import MODEL_REPOSITORY, TFLITE_REPOSITORY, Serve, cli, copy_model, grpc_calls
from test_tflite import litert

IMAGE = MODEL_REPOSITORY.parent / "examples" / "images" / "digit-7.png"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Three bare files (named after their stems, `mlp/model.onnx` after its folder) and a
    repository, in one `serve`."""
    root = tmp_path_factory.mktemp("serve")
    shutil.copy(MODEL_REPOSITORY / "digits" / "model.onnx", root / "logreg.onnx")
    shutil.copy(TFLITE_REPOSITORY / "digits-uint8" / "model.tflite", root / "logreg-lite.tflite")
    (root / "mlp").mkdir()
    shutil.copy(MODEL_REPOSITORY / "digits-mlp" / "model.onnx", root / "mlp" / "model.onnx")
    repository = root / "repository"
    for model in ["digits", "digits-image"]:
        shutil.copytree(MODEL_REPOSITORY / model, repository / model)
    running = Serve.start(
        [root / "logreg.onnx", root / "logreg-lite.tflite", root / "mlp" / "model.onnx",
         repository], root,
    )
    yield running
    running.stop()


def test_serve_prints_where_it_serves(served):
    deadline = time.monotonic() + 30
    while "metrics" not in served.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = served.log()
    rows = [line.split() for line in log.splitlines()]
    rest = f"http://127.0.0.1:{served.http_port}"
    for model in ["logreg", "logreg-lite", "mlp", "digits", "digits-image"]:
        assert [model, f"{rest}/v2/models/{model}/infer"] in rows, log
    for line in [
        f"REST     http://127.0.0.1:{served.http_port}  (API docs: "
        f"http://127.0.0.1:{served.http_port}/v2/docs)",
        f"gRPC     127.0.0.1:{served.grpc_port}",
        f"metrics  http://127.0.0.1:{served.metrics_port}/metrics",
    ]:
        assert line in log, log
    assert served.http.get("/v2/docs").status_code == 200
    index = served.http.post("/v2/repository/index", json={}).json()
    assert sorted(item["name"] for item in index) == [
        "digits", "digits-image", "logreg", "logreg-lite", "mlp"
    ]
    pixels = reference.digits(3)
    response = served.infer("mlp", [v2_input("input", pixels)])
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    np.testing.assert_array_equal(outputs["label"],
                                  reference.run("digits-mlp", {"input": pixels})["label"])


def test_a_bare_onnx_file_over_rest_and_grpc_equals_onnxruntime(served):
    pixels = reference.digits(5)
    expected = reference.run("digits", {"input": pixels})
    response = served.infer("logreg", [v2_input("input", pixels)])
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    np.testing.assert_array_equal(outputs["label"]["data"], expected["label"])
    np.testing.assert_allclose(
        np.reshape(outputs["probabilities"]["data"], (5, 10)), expected["probabilities"],
        rtol=1e-6,
    )
    (result,) = grpc_calls(served.grpc_target, [
        {"op": "infer", "model": "logreg", "inputs": [v2_input("input", pixels)]}
    ])
    grpc_outputs = result["ok"]["outputs"]
    np.testing.assert_array_equal(grpc_outputs["label"]["data"], expected["label"])
    np.testing.assert_allclose(
        np.reshape(grpc_outputs["probabilities"]["data"], (5, 10)), expected["probabilities"],
        rtol=1e-6,
    )


def test_a_bare_tflite_file_equals_litert(served):
    pixels = reference.digits(3).astype(np.uint8)
    expected = litert("digits-uint8", pixels)
    response = served.infer("logreg-lite", [v2_input("input", pixels)])
    assert response.status_code == 200, response.text
    for output in response.json()["outputs"]:
        np.testing.assert_array_equal(
            np.reshape(output["data"], output["shape"]), expected[output["name"]]
        )
    assert served.http.get("/v2/models/logreg-lite").json()["parameters"]["backend"] == "tflite"


def _model_samples(served, model):
    """{(metric, stage or outcome): value} of the plugin's per-model metrics for `model`."""
    found = {}
    versions = set()
    for name, samples in served.metrics().items():
        if not name.startswith("mlserver_npu_") or name.endswith("_created"):
            continue
        for labels, value in samples.items():
            labels = dict(labels)
            if labels.get("model_name") != model or "le" in labels:
                continue
            versions.add(labels["model_version"])
            found[(name, labels.get("stage") or labels.get("outcome"))] = value
    assert len(versions) == 1, versions  # one consistent model_version label
    return found


def test_stage_metrics_count_every_request_within_its_latency(served):
    image = base64.b64encode(IMAGE.read_bytes()).decode()
    body = [{"name": "input", "shape": [1], "datatype": "BYTES",
             "parameters": {"content_type": "image"}, "data": [image]}]
    count, latency = 12, 0.0
    for _ in range(count):
        start = time.perf_counter()
        response = served.infer("digits-image", body)
        latency += time.perf_counter() - start
        assert response.status_code == 200, response.text
    start = time.perf_counter()
    bad = served.infer("digits-image", [{**body[0], "data": ["bm90IGFuIGltYWdl"]}])
    latency += time.perf_counter() - start
    assert bad.status_code == 400, bad.text

    samples = _model_samples(served, "digits-image")
    stages = ["decode", "preprocess", "device", "postprocess", "encode"]
    for stage in stages:
        assert samples[("mlserver_npu_stage_seconds_count", stage)] == count + 1, stage
        assert samples[("mlserver_npu_stage_seconds_sum", stage)] > 0, stage
    # The batcher (pool.py) times `queue`; whatever it counts, it is per request too.
    assert samples[("mlserver_npu_stage_seconds_count", "queue")] in (0, count + 1)
    total = sum(samples[("mlserver_npu_stage_seconds_sum", s)] for s in [*stages, "queue"])
    assert total <= latency, (total, latency)
    assert samples[("mlserver_npu_requests_total", "ok")] == count
    assert samples[("mlserver_npu_requests_total", "client_error")] == 1
    assert samples[("mlserver_npu_requests_total", "server_error")] == 0
    assert samples[("mlserver_npu_load_seconds_count", None)] == 1
    assert samples[("mlserver_npu_load_seconds_sum", None)] > 0


def test_serve_exits_non_zero_naming_a_model_that_cannot_load(tmp_path):
    shutil.copy(MODEL_REPOSITORY / "digits" / "model.onnx", tmp_path / "good.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx model")
    completed = cli("serve", tmp_path / "good.onnx", tmp_path / "broken.onnx",
                    "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
                    "--metrics-port", "0", cwd=tmp_path)
    assert completed.returncode == 1, completed.stderr
    assert "mlserver-npu serve: model 'broken' failed to load: onnxruntime cannot open " \
           "'broken.onnx'" in completed.stderr
    assert "Protobuf parsing failed" in completed.stderr
    assert "model 'good' failed" not in completed.stderr


@pytest.mark.parametrize("name, expected", [
    ("missing", "does not exist"),
    ("model.pt", "not a model file this plugin knows (.onnx, .tflite"),
])
def test_serve_refuses_a_path_without_a_model(tmp_path, name, expected):
    if name.endswith(".pt"):
        (tmp_path / name).write_bytes(b"torch")
    completed = cli("serve", tmp_path / name, cwd=tmp_path)
    assert completed.returncode == 2
    assert expected in completed.stderr, completed.stderr


def test_serve_refuses_two_models_of_one_name_naming_both(tmp_path):
    folder = shutil.copytree(MODEL_REPOSITORY / "digits", tmp_path / "repository" / "digits")
    completed = cli("serve", MODEL_REPOSITORY / "digits" / "model.onnx", tmp_path / "repository",
                    cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert (f"'{MODEL_REPOSITORY / 'digits' / 'model.onnx'}' and '{folder}' are both model "
            "'digits'") in completed.stderr


def test_serve_device_reaches_every_npu_runtime_spelling(tmp_path):
    repository = tmp_path / "repository"
    for model, implementation in [("short", "mlserver_npu.NPURuntime"),
                                  ("long", "mlserver_npu.runtime.NPURuntime")]:
        copy_model(MODEL_REPOSITORY / "digits", repository, model, implementation=implementation)
    completed = cli("serve", repository, "--device", "warp-drive", "--host", "127.0.0.1",
                    "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                    cwd=tmp_path, timeout=90)
    assert completed.returncode == 1, completed.stderr
    for model in ["short", "long"]:
        assert (f"model '{model}' failed to load: unknown onnxruntime device 'warp-drive'"
                in completed.stderr), completed.stderr


def test_compile_skips_hidden_folders_as_serve_does(tmp_path):
    repository = tmp_path / "repository"
    copy_model(MODEL_REPOSITORY / "digits", repository, "digits")
    copy_model(MODEL_REPOSITORY / "digits", repository, ".being-copied")  # mid `cp -r; mv`
    completed = cli("compile", repository, "--json")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert [report["model"] for report in json.loads(completed.stdout)] == ["digits"]


def test_the_grafana_dashboard_queries_metrics_the_server_publishes(served):
    served.infer("logreg", [v2_input("input", reference.digits(1))])
    dashboard = json.loads((MODEL_REPOSITORY.parent / "examples" / "grafana-dashboard.json")
                           .read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bmlserver_npu_\w+", target["expr"])
    }
    assert len(queried) >= 6
    assert queried <= set(served.metrics()), queried - set(served.metrics())
