"""The openvino backend for real on this machine's CPU (and AUTO, which executes on it): served
outputs equal to onnxruntime, LiteRT and OpenVINO run directly, over REST and gRPC; sessions
as concurrent infer requests; devices that are not here; the static-shape rule of NPUs; the
compiled-model cache; and `mlserver-npu compile` before a cold start."""
import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
from onnx import TensorProto, helper, numpy_helper

import reference
from reference import v2_input
from server import MODEL_REPOSITORY, REPO, TFLITE_REPOSITORY, Server, copy_model, grpc_calls
from test_tflite import litert

HAVE_QNN = importlib.util.find_spec("onnxruntime_qnn") is not None

F32 = {"precision_hint": "f32"}
# The example folders carry onnxruntime options: every copy here replaces them.
OV = {"backend": "openvino", "options": {}}
OV_F32 = {"backend": "openvino", "options": F32}
# OpenVINO's default precision on CPUs with AVX-512 BF16 (this one) is bf16: softmax outputs
# of squeezenet (max ~0.025) then differ from fp32 by up to ~2e-4.
BF16_ATOL = 1e-3

# model name -> (source folder, extra, reference model for onnxruntime)
MODELS = {
    "ov-squeezenet": (MODEL_REPOSITORY / "squeezenet",
                      {**OV, "device": "AUTO", "sessions": 2}, "squeezenet"),
    "ov-squeezenet-f32": (MODEL_REPOSITORY / "squeezenet",
                          {**OV_F32, "device": "CPU"}, "squeezenet"),
    "ov-temperature": (MODEL_REPOSITORY / "digits-temperature",
                       {**OV_F32, "device": "cpu"}, "digits-temperature"),
    "ov-tflite": (TFLITE_REPOSITORY / "digits-tflite", OV_F32, None),
    "ov-uint8": (TFLITE_REPOSITORY / "digits-uint8", OV, None),
}


def openvino_run(model_file: Path, feeds: dict, config: dict) -> dict:
    """OpenVINO directly on the CPU."""
    compiled = ov.Core().compile_model(str(model_file), "CPU", config)
    results = compiled.create_infer_request().infer(list(feeds.values()))
    return {port.get_any_name(): value for port, value in results.items()}


def save_ir(source: Path, folder: Path) -> Path:
    """`source` converted to OpenVINO IR (model.xml + model.bin) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.Core().read_model(str(source)), str(folder / "model.xml"),
                  compress_to_fp16=False)
    return folder / "model.xml"


def ir_folder(repository: Path, name: str, extra: dict) -> Path:
    """A model folder holding an IR of digits-temperature and nothing that names a backend."""
    folder = repository / name
    save_ir(MODEL_REPOSITORY / "digits-temperature" / "model.onnx", folder)
    settings = {"name": name, "implementation": "mlserver_npu.NPURuntime",
                "parameters": {"version": "1", "extra": extra}}
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return folder


def dynamic_length_model(path: Path) -> Path:
    """x FP32 [N, L] -> y = 2x: a dynamic batch and a dynamic second axis."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L"])],
        [numpy_helper.from_array(np.array(2, np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def model_folder(repository: Path, name: str, model: Path, extra: dict, **top) -> Path:
    folder = repository / name
    folder.mkdir()
    settings = {"name": name, "implementation": "mlserver_npu.NPURuntime",
                "parameters": {"uri": str(model), "version": "1", "extra": extra}, **top}
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return folder


def empty_repository(root: Path) -> Path:
    repository = root / "repository"
    repository.mkdir()
    shutil.copy(MODEL_REPOSITORY / "settings.json", repository)
    return repository


def start_with_cache(repository: Path, root: Path) -> Server:
    """A server of `repository` whose MLSERVER_NPU_CACHE_DIR (`.cache`) is `root/cache`."""
    running = Server.start(repository, root, env={"MLSERVER_NPU_CACHE_DIR": str(root / "cache")})
    running.cache = root / "cache"
    return running


@pytest.fixture(scope="module")
def ovserver(tmp_path_factory):
    root = tmp_path_factory.mktemp("openvino")
    repository = empty_repository(root)
    for name, (source, extra, _) in MODELS.items():
        copy_model(source, repository, name, extra)
    ir_folder(repository, "ov-ir", {"options": F32})
    running = start_with_cache(repository, root)
    yield running
    running.stop()


def inputs_for(name: str, batch: int) -> dict:
    if name in ("ov-tflite", "ov-uint8"):
        dtype = np.uint8 if name == "ov-uint8" else np.float32
        return {"input": reference.digits(batch, offset=300).astype(dtype)}
    if name == "ov-ir":
        return reference.sample_inputs("digits-temperature", batch)
    return reference.sample_inputs(MODELS[name][2], batch)


def expected(name: str, feeds: dict) -> tuple:
    """(what the reference runtime computes, its tolerance)."""
    if name in ("ov-tflite", "ov-uint8"):
        want = litert(name.replace("ov-", "digits-"), feeds["input"])
        return want, 0 if name == "ov-uint8" else 1e-5
    model = "digits-temperature" if name == "ov-ir" else MODELS[name][2]
    return reference.run(model, feeds), BF16_ATOL if name == "ov-squeezenet" else 1e-5


def check_outputs(got: dict, want: dict, atol: float) -> None:
    assert set(got) == set(want)
    for name, array in want.items():
        value = np.asarray(got[name]["data"], dtype=array.dtype).reshape(got[name]["shape"])
        assert value.shape == array.shape, name
        np.testing.assert_allclose(value, array, atol=atol, rtol=0, err_msg=name)


def load(server: Server, name: str) -> None:
    response = server.http.post(f"/v2/repository/models/{name}/load")
    assert response.status_code == 200, response.text


def load_error(server: Server, name: str) -> str:
    """The message of a load that must fail with a 400."""
    response = server.http.post(f"/v2/repository/models/{name}/load")
    assert response.status_code == 400, response.text
    return response.json()["error"]


def served_like_onnxruntime(server: Server, name: str, model: str = "digits-temperature",
                            batch: int = 3, atol: float = 1e-5) -> None:
    """`name` answers like onnxruntime running `model` (an example model) on a sample."""
    feeds = reference.sample_inputs(model, batch)
    response = server.infer(name, [v2_input(k, v) for k, v in feeds.items()])
    assert response.status_code == 200, response.text
    check_outputs({o["name"]: o for o in response.json()["outputs"]},
                  reference.run(model, feeds), atol)


SERVED = [*MODELS, "ov-ir"]


def test_metadata_says_where_it_executes(ovserver):
    for name in SERVED:
        parameters = ovserver.http.get(f"/v2/models/{name}").json()["parameters"]
        assert parameters["backend"] == "openvino", name
        assert parameters["execution_devices"] == "CPU", name
        assert parameters["loaded_from_cache"] is False, name
    squeezenet = ovserver.http.get("/v2/models/ov-squeezenet").json()
    assert squeezenet["parameters"]["devices"] == "AUTO,AUTO"
    assert [(t["name"], t["datatype"], t["shape"]) for t in squeezenet["inputs"]] == [
        ("data_0", "FP32", [-1, 3, 224, 224])]
    f32 = ovserver.http.get("/v2/models/ov-squeezenet-f32").json()["parameters"]
    assert (f32["devices"], f32["inference_precision"]) == ("CPU", "f32")
    # the IR was picked by its suffix: no backend in its settings
    ir = ovserver.http.get("/v2/models/ov-ir").json()
    assert [t["name"] for t in ir["inputs"]] == ["pixels", "temperature"]


@pytest.mark.parametrize("name", SERVED)
def test_rest_outputs_equal_the_reference_runtime(ovserver, name):
    feeds = inputs_for(name, 3)
    want, atol = expected(name, feeds)
    response = ovserver.infer(name, [v2_input(k, v) for k, v in feeds.items()])
    assert response.status_code == 200, response.text
    check_outputs({o["name"]: o for o in response.json()["outputs"]}, want, atol)


def test_served_outputs_equal_openvino_run_directly(ovserver):
    feeds = reference.sample_inputs("squeezenet", 2)
    model = MODEL_REPOSITORY / "squeezenet" / "model.onnx"
    want = openvino_run(model, feeds, {"INFERENCE_PRECISION_HINT": "f32"})
    response = ovserver.infer("ov-squeezenet-f32", [v2_input("data_0", feeds["data_0"])])
    check_outputs({o["name"]: o for o in response.json()["outputs"]}, want, 1e-7)


def test_grpc_outputs_equal_the_reference_runtime(ovserver):
    calls, wanted = [], []
    for name in SERVED:
        feeds = inputs_for(name, 2)
        calls.append({"op": "infer", "model": name,
                      "inputs": [v2_input(k, v) for k, v in feeds.items()]})
        wanted.append(expected(name, feeds))
    for name, result, (want, atol) in zip(SERVED, grpc_calls(ovserver.grpc_target, calls), wanted):
        assert "ok" in result, (name, result)
        check_outputs(result["ok"]["outputs"], want, atol)


def test_two_sessions_run_at_once(ovserver):
    """Least-busy dispatch sends a run to session 1 only while session 0 has one in flight:
    runs on both sessions prove that two infer requests were in flight at once, and that a
    run leaves the event loop free (a blocking run would finish before the next request)."""
    before = ovserver.session_runs("ov-squeezenet")
    batches = [reference.sample_inputs("squeezenet", 1 + i % 2)["data_0"] for i in range(12)]

    async def send_all():
        async with httpx.AsyncClient(base_url=ovserver.url, timeout=120) as client:
            return await asyncio.gather(*(
                client.post("/v2/models/ov-squeezenet/infer",
                            json={"inputs": [v2_input("data_0", b)]}) for b in batches))

    for batch, response in zip(batches, asyncio.run(send_all())):
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        check_outputs({output["name"]: output},
                      reference.run("squeezenet", {"data_0": batch}), BF16_ATOL)
    after = ovserver.session_runs("ov-squeezenet")
    runs = {s: after[s] - before.get(s, 0) for s in after}
    assert runs["0"] > 0 and runs["1"] > 0, runs
    assert sum(runs.values()) == len(batches)
    # the two sessions are two infer requests of one compiled model: compiled once
    assert ovserver.log().count("openvino: 'model.onnx' on AUTO (executes on CPU)") == 1


UNAVAILABLE = [
    ("npu", {**OV, "device": "NPU"},
     ["OpenVINO device 'NPU' is not available here", "Intel's NPU driver", "available: CPU ("]),
    ("gpu-1", {"device": "GPU.1", "options": {}},
     ["OpenVINO device 'GPU.1' is not available here", "OpenCL", "available: CPU ("]),
    ("hetero", {"device": "HETERO:NPU,CPU", "options": {}},
     ["OpenVINO device 'NPU' is not available"]),
    ("unknown", {**OV, "device": "FOO"}, ["OpenVINO device 'FOO' is not available here"]),
    ("bad-option", {**OV, "options": {"streams": "many"}},
     ["'parameters.extra.options.streams': must be a number of streams (1, 2, ...) or 'AUTO', "
      "got 'many'"]),
]


@pytest.mark.parametrize("case", UNAVAILABLE, ids=[c[0] for c in UNAVAILABLE])
def test_an_unavailable_device_fails_only_its_load(ovserver, case):
    name, extra, words = case
    name = f"unavailable-{name}"
    copy_model(MODEL_REPOSITORY / "squeezenet", ovserver.repository, name, extra)
    error = load_error(ovserver, name)
    for word in words:
        assert word in error, (word, error)
    assert ovserver.http.get("/v2/models/ov-squeezenet/ready").status_code == 200


def test_ops_openvino_cannot_convert_fail_the_load_naming_them(ovserver):
    copy_model(MODEL_REPOSITORY / "digits", ovserver.repository, "ov-digits-ml", OV)
    error = load_error(ovserver, "ov-digits-ml")
    assert "OpenVINO cannot load 'model.onnx' on device 'CPU'" in error
    assert "ai.onnx.ml.LinearClassifier" in error


def test_fallback_to_cpu_when_the_npu_is_missing(ovserver):
    copy_model(MODEL_REPOSITORY / "digits-temperature", ovserver.repository, "npu-fallback",
               {**OV, "device": "NPU", "options": {**F32, "fallback_to_cpu": True}})
    load(ovserver, "npu-fallback")
    parameters = ovserver.http.get("/v2/models/npu-fallback").json()["parameters"]
    assert parameters["devices"] == "CPU"
    assert "OpenVINO device 'NPU' is not available here" in parameters["warnings"]
    assert "running on CPU instead" in parameters["warnings"]
    served_like_onnxruntime(ovserver, "npu-fallback")


def test_npu_devices_get_a_static_batch(ovserver):
    """A device list with NPU applies the NPU rule (AUTO:NPU,CPU executes on the CPU here):
    the dynamic batch axis becomes the batcher's or MLServer's max_batch_size (else 1), and the
    pool splits and pads requests of any size."""
    source = MODEL_REPOSITORY / "digits-temperature"
    copy_model(source, ovserver.repository, "npu-b1", {"device": "AUTO:NPU,CPU", "options": F32})
    copy_model(source, ovserver.repository, "npu-b4", {"device": "AUTO:NPU,CPU", "options": F32},
               max_batch_size=4, max_batch_time=0.001)
    # the plugin's batcher sets the batch the same way
    copy_model(source, ovserver.repository, "npu-b8", {"device": "AUTO:NPU,CPU", "options": F32,
                                                       "batching": {"max_batch_size": 8}})
    for name, batch in [("npu-b1", 1), ("npu-b4", 4), ("npu-b8", 8)]:
        load(ovserver, name)
        metadata = ovserver.http.get(f"/v2/models/{name}").json()
        assert metadata["parameters"]["static_batch"] == batch
        assert metadata["parameters"]["devices"] == "AUTO:NPU,CPU"
        assert metadata["inputs"][0]["shape"] == [-1, 64]
        served_like_onnxruntime(ovserver, name, batch=6)
    # AUTO compiled for its device before the load returned, so its blob is in the entry (its
    # start-up fallback to the CPU would write it later, into the staging folder)
    root = ovserver.cache / "compiled" / "openvino"
    entries = [p for p in root.iterdir() if p.name.startswith("AUTO_NPU_CPU-")]
    assert len(entries) == 3 and all(list(p.glob("*.blob")) for p in entries), entries
    assert not list((root / ".staging").rglob("*"))


def check_static_shape_rule(server: Server, tmp_path: Path, device: str, fixed: dict,
                            words: list) -> None:
    """y = 2x with x [N, L]: on `device` the load fails with `words` in the error (only the
    batch axis is fixed by itself); with the options `fixed`, which set L to 5, it serves."""
    model = dynamic_length_model(tmp_path / "double.onnx")
    name = device.replace(":", "-").replace(",", "-").lower()
    model_folder(server.repository, f"{name}-dynamic", model, {"device": device})
    error = load_error(server, f"{name}-dynamic")
    for word in words:
        assert word in error, (word, error)
    model_folder(server.repository, f"{name}-fixed", model, {"device": device, "options": fixed})
    load(server, f"{name}-fixed")
    assert server.http.get(f"/v2/models/{name}-fixed").json()["inputs"][0]["shape"] == [-1, 5]
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    response = server.infer(f"{name}-fixed", [v2_input("x", x)])
    assert response.json()["outputs"][0]["data"] == (2 * x).ravel().tolist()


def test_npu_needs_options_shape_for_other_dynamic_dimensions(ovserver, tmp_path):
    check_static_shape_rule(ovserver, tmp_path, "AUTO:NPU,CPU", {"shape": {"x": [-1, 5]}}, [
        "input 'x' has dynamic dimension 1 ([-1, -1], -1 = dynamic)",
        "device 'AUTO:NPU,CPU' needs static shapes; set options.shape, e.g. {\"x\": [1, 1]}"])


def test_a_second_load_comes_from_the_cache_and_a_changed_model_does_not(ovserver, tmp_path):
    source = MODEL_REPOSITORY / "digits-temperature" / "model.onnx"
    # options no other test uses: an entry of its own
    extra = {**OV, "options": {**F32, "threads": 1}}
    first = model_folder(ovserver.repository, "cache-a", source, extra)
    # another model of the same file, device and options: the same entry
    model_folder(ovserver.repository, "cache-b", source, extra)
    # reshaped (static batch 2), compiled from OpenVINO's model object: the entry is keyed by
    # the file's digest, not its location, so a copy of the file hits it too
    reshaped = {**extra, "options": {**extra["options"], "batch_size": 2}}
    model_folder(ovserver.repository, "cache-c", source, reshaped)
    model_folder(ovserver.repository, "cache-d", shutil.copy(source, tmp_path / "copy.onnx"),
                 reshaped)
    for name, cached in [("cache-a", False), ("cache-b", True), ("cache-c", False),
                         ("cache-d", True)]:
        load(ovserver, name)
        parameters = ovserver.http.get(f"/v2/models/{name}").json()["parameters"]
        assert parameters["loaded_from_cache"] is cached, name
    entries = [p for p in (ovserver.cache / "compiled" / "openvino").iterdir()
               if p.name != ".staging"]
    staging = ovserver.cache / "compiled" / "openvino" / ".staging"
    assert not list(staging.rglob("*")), list(staging.rglob("*"))
    assert all((p / "entry.json").is_file() for p in entries)
    assert "loaded from cache: True" in ovserver.log()

    # the same folder with other weights: compiled again, and its outputs are the new model's
    changed = onnx.load(source)
    for initializer in changed.graph.initializer:
        if initializer.data_type == TensorProto.FLOAT and initializer.dims:
            array = numpy_helper.to_array(initializer) * 0.5
            initializer.CopyFrom(numpy_helper.from_array(array, initializer.name))
    changed_file = tmp_path / "changed.onnx"
    onnx.save(changed, changed_file)
    settings = json.loads((first / "model-settings.json").read_text())
    settings["parameters"]["uri"] = str(changed_file)
    (first / "model-settings.json").write_text(json.dumps(settings))
    load(ovserver, "cache-a")
    parameters = ovserver.http.get("/v2/models/cache-a").json()["parameters"]
    assert parameters["loaded_from_cache"] is False
    feeds = reference.sample_inputs("digits-temperature", 2)
    session = ort.InferenceSession(str(changed_file))
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    response = ovserver.infer("cache-a", [v2_input(k, v) for k, v in feeds.items()])
    check_outputs({o["name"]: o for o in response.json()["outputs"]}, want, 1e-5)


def compile_command(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), MLSERVER_NPU_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, "-m", "mlserver_npu.cli", "compile", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_compile_then_a_cold_start_loads_from_the_cache(make_server, tmp_path):
    repository = empty_repository(tmp_path)
    copy_model(MODEL_REPOSITORY / "squeezenet", repository, "squeezenet-on-auto",
               {**OV, "device": "AUTO"})
    ir_folder(repository, "digits-ir-copy", {"options": F32})
    copy_model(MODEL_REPOSITORY / "digits", repository, "digits")  # onnxruntime: nothing to do
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy_model(MODEL_REPOSITORY / "squeezenet", elsewhere, "on-npu", {**OV, "device": "NPU"})
    cache = tmp_path / "cache"

    examples = [REPO / "examples" / "openvino-repository", REPO / "examples" / "qnn"]
    completed = compile_command(str(repository), str(elsewhere / "on-npu"), *map(str, examples),
                                "--json", cache=cache)
    assert completed.returncode == 1, completed.stdout + completed.stderr  # on-npu failed
    reports = {r["model"]: r for r in json.loads(completed.stdout)}
    # the committed examples load as they are (QNN where onnxruntime-qnn is installed)
    assert reports["digits-ir"]["ok"] and reports["squeezenet-auto"]["ok"]
    assert reports["digits-qnn"]["ok"] is HAVE_QNN, reports["digits-qnn"]
    if HAVE_QNN:
        assert reports["digits-qnn"]["devices"] == "qnn:htp"
    assert reports["squeezenet-on-auto"]["loaded_from_cache"] is False
    assert reports["digits-ir-copy"]["loaded_from_cache"] is False
    assert "loaded_from_cache" not in reports["digits"]
    assert reports["on-npu"]["ok"] is False
    assert "Model 'on-npu' could not be loaded: OpenVINO device 'NPU'" in reports["on-npu"]["error"]
    openvino_entries = [p.name for p in (cache / "compiled" / "openvino").iterdir()]
    # one entry per model file and device (the failed NPU load left none)
    assert sorted(name.split("-")[0] for name in openvino_entries) == [
        ".staging", "AUTO", "AUTO", "CPU", "CPU"]

    again = compile_command(str(repository / "digits-ir-copy"), cache=cache)
    assert again.returncode == 0
    assert again.stdout.strip().startswith("digits-ir-copy: openvino on CPU in ")
    assert again.stdout.strip().endswith("loaded from the cache")

    live = make_server(repository, env={"MLSERVER_NPU_CACHE_DIR": str(cache)})
    for name in ("squeezenet-on-auto", "digits-ir-copy"):
        assert live.http.get(f"/v2/models/{name}").json()["parameters"]["loaded_from_cache"] is True
    served_like_onnxruntime(live, "digits-ir-copy")
