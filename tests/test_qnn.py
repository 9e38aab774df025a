"""Qualcomm QNN through onnxruntime's plugin execution provider (onnxruntime-qnn), on its HTP
backend, which runs in emulation on x86_64: served outputs equal onnxruntime's CPU result, the
static-shape rule, and QNN context binaries in the compiled-model cache."""
import pytest

pytest.importorskip(
    "onnxruntime_qnn", reason="onnxruntime-qnn is not installed (the test extra installs it on "
    "Linux x86_64: pip install -e '.[test]')"
)

import reference  # noqa: E402
from reference import v2_input  # noqa: E402
from server import MODEL_REPOSITORY, REPO, cli, copy_model, grpc_calls  # noqa: E402
from test_openvino import (  # noqa: E402
    check_outputs,
    check_static_shape_rule,
    empty_repository,
    load,
    load_error,
    served_like_onnxruntime,
    start_with_cache,
)

# Every node on QNN, or the load fails: with a dynamic shape onnxruntime would silently run
# the graph on its CPU EP, and this proves it does not.
ON_QNN = {"session_config": {"session.disable_cpu_ep_fallback": "1"}}
TEMPERATURE = MODEL_REPOSITORY / "digits-temperature"


@pytest.fixture(scope="module")
def qnnserver(tmp_path_factory):
    root = tmp_path_factory.mktemp("qnn")
    repository = empty_repository(root)
    copy_model(TEMPERATURE, repository, "qnn-temperature", {"device": "qnn", "options": ON_QNN})
    running = start_with_cache(repository, root)
    yield running
    running.stop()


def test_served_on_the_emulated_htp_equal_to_onnxruntime_cpu(qnnserver):
    metadata = qnnserver.http.get("/v2/models/qnn-temperature").json()
    assert metadata["parameters"]["devices"] == "qnn"
    assert metadata["parameters"]["loaded_from_cache"] is False
    # the dynamic batch became a static batch of 1 (no max_batch_size): clients send any
    assert metadata["parameters"]["static_batch"] == 1
    assert metadata["inputs"][0]["shape"] == [-1, 64]

    feeds = reference.sample_inputs("digits-temperature", 3)
    want = reference.run("digits-temperature", feeds)
    response = qnnserver.infer("qnn-temperature", [v2_input(k, v) for k, v in feeds.items()])
    assert response.status_code == 200, response.text
    check_outputs({o["name"]: o for o in response.json()["outputs"]}, want, 1e-5)

    [result] = grpc_calls(qnnserver.grpc_target, [{
        "op": "infer", "model": "qnn-temperature",
        "inputs": [v2_input(k, v) for k, v in feeds.items()]}])
    check_outputs(result["ok"]["outputs"], want, 1e-5)


def test_a_second_load_uses_the_context_binary(qnnserver):
    copy_model(TEMPERATURE, qnnserver.repository, "qnn-again",
               {"device": "qnn:htp", "options": ON_QNN}, max_batch_size=2, max_batch_time=0.001)
    copy_model(TEMPERATURE, qnnserver.repository, "qnn-again-b1",
               {"device": "qnn:htp", "options": ON_QNN})
    for name, cached, batch in [("qnn-again", False, 2), ("qnn-again-b1", True, 1)]:
        load(qnnserver, name)
        parameters = qnnserver.http.get(f"/v2/models/{name}").json()["parameters"]
        # qnn:htp is qnn's default: the same entry as the first model's, unless the batch differs
        assert (parameters["loaded_from_cache"], parameters["static_batch"]) == (cached, batch)
        served_like_onnxruntime(qnnserver, name)


def test_other_dynamic_dimensions_need_free_dimensions(qnnserver, tmp_path):
    check_static_shape_rule(
        qnnserver, tmp_path, "qnn", {**ON_QNN, "free_dimensions": {"L": 5}},
        ["input 'x' has dynamic dimension 1 (['N', 'L']) and QNN needs static shapes",
         'set options.free_dimensions, e.g. {"L": 1}'])


def test_a_qnn_backend_that_does_not_start_fails_the_load(qnnserver):
    """onnxruntime-qnn ships no libQnnCpu.so: onnxruntime would go on without QNN."""
    copy_model(TEMPERATURE, qnnserver.repository, "qnn-cpu", {"device": "qnn:cpu", "options": {}})
    assert "QNN (cpu) took no node of 'model.onnx'" in load_error(qnnserver, "qnn-cpu")
    assert qnnserver.http.get("/v2/models/qnn-temperature/ready").status_code == 200

    copy_model(TEMPERATURE, qnnserver.repository, "qnn-cpu-fallback",
               {"device": "qnn:cpu", "options": {"fallback_to_cpu": True}})
    load(qnnserver, "qnn-cpu-fallback")
    parameters = qnnserver.http.get("/v2/models/qnn-cpu-fallback").json()["parameters"]
    assert parameters["devices"] == "cpu"
    assert "QNN (cpu) took no node" in parameters["warnings"]


def test_compiling_the_qnn_example_prints_no_emulator_errors(tmp_path):
    """The load's warm-up runs on ones: on zeros, the example divides by its temperature
    input 0 and the HTP emulator prints `ERROR:You shouldn't be dividing by 0` per element."""
    completed = cli("compile", REPO / "examples" / "qnn",
                    env={"MLSERVER_NPU_CACHE_DIR": str(tmp_path)})
    assert completed.returncode == 0, completed.stderr
    assert "digits-qnn: onnxruntime on qnn:htp" in completed.stdout
    assert "ERROR" not in completed.stderr, completed.stderr


def test_options_shape_fixes_dimensions_by_input_and_axis(qnnserver, tmp_path):
    """The way for a dimension without a name; here it fixes L by axis."""
    check_static_shape_rule(
        qnnserver, tmp_path, "qnn:htp", {**ON_QNN, "shape": {"x": [-1, 5]}},
        ["input 'x' has dynamic dimension 1 (['N', 'L']) and QNN needs static shapes"])
