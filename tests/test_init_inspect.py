"""`mlserver-npu inspect` describes models from the runtimes' own introspection and checks a
folder as a load would; `mlserver-npu init` writes a folder that `mlserver start` serves."""
import hashlib
import json
import shutil

import numpy as np
import pytest
from tritonclient.utils import triton_to_np_dtype

import images
import reference
from reference import v2_input
from server import MODEL_REPOSITORY, TFLITE_REPOSITORY, Server, cli

PHOTO = images.encode(images.photo(320, 240), "JPEG")


def _settings_of(folder):
    return json.loads((folder / "model-settings.json").read_text())


def _inspect(path):
    completed = cli("inspect", "--json", path)
    return completed, json.loads(completed.stdout)


def _ort_signature(model_file):
    session = reference.session(model_file)
    return ([(i.name, i.shape) for i in session.get_inputs()],
            [(o.name, o.shape) for o in session.get_outputs()])


@pytest.mark.parametrize("folder", [
    MODEL_REPOSITORY / "digits-b4", MODEL_REPOSITORY / "digits-image",
    TFLITE_REPOSITORY / "digits-uint8",
], ids=lambda p: p.name)
def test_inspect_json_describes_an_example_model(folder):
    completed, report = _inspect(folder)
    assert completed.returncode == 0, completed.stderr
    model_file = folder / ("model.tflite" if "uint8" in folder.name else "model.onnx")
    if folder.name == "digits-image":
        model_file = MODEL_REPOSITORY / "digits" / "model.onnx"
    assert report["valid"] is True and report["kind"] == "folder"
    assert report["name"] == json.loads((folder / "model-settings.json").read_text())["name"]
    assert report["model_file"] == str(model_file)
    assert report["size"] == model_file.stat().st_size
    assert report["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert report["devices"] == ["cpu"] and "cpu" in report["available_devices"]
    if folder.name == "digits-uint8":
        assert report["backend"] == "tflite"
        assert [(t["name"], t["datatype"]) for t in report["inputs"]] == [("input", "UINT8")]
        return
    assert report["backend"] == "onnxruntime"
    inputs, outputs = _ort_signature(model_file)
    if folder.name == "digits-b4":
        assert inputs == [("input", [4, 64])]  # a static batch, served as any batch
        assert report["static_batch"] == 4
        assert [(t["name"], t["shape"]) for t in report["inputs"]] == [("input", [-1, 64])]
    else:
        assert report["static_batch"] is None
        assert report["inputs"] == [
            {"name": "input", "datatype": "BYTES", "shape": [-1], "content_type": "image"}
        ]
    assert [t["name"] for t in report["outputs"]] == [name for name, _ in outputs]


def test_inspect_a_broken_folder_says_why_as_a_load_would(tmp_path):
    folder = shutil.copytree(MODEL_REPOSITORY / "digits", tmp_path / "digits")
    settings = json.loads((folder / "model-settings.json").read_text())
    settings["parameters"]["extra"]["sesions"] = 2
    (folder / "model-settings.json").write_text(json.dumps(settings))
    completed, report = _inspect(folder)
    assert completed.returncode == 1
    assert report["valid"] is False
    assert "unknown key 'parameters.extra.sesions'" in report["error"]
    # said once: not also by the runtime's log of the failed load
    assert completed.stderr.count("unknown key 'parameters.extra.sesions'") == 1, completed.stderr

    compiled = cli("compile", folder)
    assert compiled.returncode == 1
    assert "FAILED" in compiled.stdout and "sesions" in compiled.stdout
    assert "sesions" not in compiled.stderr, compiled.stderr
    written = cli("init", MODEL_REPOSITORY / "digits" / "model.onnx", "--into",
                  tmp_path / "new", "--device", "warp-drive")
    assert written.returncode == 1
    assert written.stderr.count("unknown onnxruntime device 'warp-drive'") == 1, written.stderr

    text = cli("inspect", tmp_path / "nothing-here")
    assert text.returncode == 1 and "does not exist" in text.stdout


def test_inspect_and_compile_describe_a_pipeline(tmp_path):
    ensemble = MODEL_REPOSITORY / "digits-ensemble"
    completed, report = _inspect(ensemble)
    assert completed.returncode == 0, completed.stderr
    assert report["valid"] is True and report["pipeline"] is True
    assert report["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert report["outputs"] == [{"name": "probabilities", "datatype": "BYTES", "shape": [-1, 3]}]
    logistic, mlp, average = report["steps"]
    for step, folder in ((logistic, "digits"), (mlp, "digits-mlp")):
        model_file = MODEL_REPOSITORY / folder / "model.onnx"
        assert step["model"] == f"../{folder}" and step["backend"] == "onnxruntime"
        assert step["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert average == {"name": "average", "combine": "mean", "inputs": [
        "logistic.outputs.probabilities", "mlp.outputs.probabilities"]}
    text = cli("inspect", ensemble).stdout
    for line in ["pipeline 3 steps: logistic, mlp, average",
                 "step     logistic  ../digits: onnxruntime on cpu",
                 "input    input  FP32 [-1, 64]"]:
        assert line in text, (line, text)

    compiled = cli("compile", ensemble)
    assert compiled.returncode == 0, compiled.stderr
    assert compiled.stdout.startswith("digits-ensemble: pipeline in "), compiled.stdout
    assert "step logistic: onnxruntime on cpu" in compiled.stdout
    assert "step mlp: onnxruntime on cpu" in compiled.stdout

    broken = shutil.copytree(ensemble, tmp_path / "repo" / "ensemble")
    shutil.copytree(MODEL_REPOSITORY / "digits", tmp_path / "repo" / "digits")
    settings = _settings_of(broken)
    settings["parameters"]["extra"]["steps"][1]["model"] = "../nowhere"
    (broken / "model-settings.json").write_text(json.dumps(settings))
    completed, report = _inspect(broken)
    assert completed.returncode == 1 and report["valid"] is False
    assert "step 'mlp': no model-settings.json" in report["error"]


def test_init_writes_a_folder_that_mlserver_start_serves(tmp_path):
    repository = tmp_path / "repository"
    repository.mkdir()
    shutil.copy(MODEL_REPOSITORY / "settings.json", repository)
    shutil.copy(MODEL_REPOSITORY / "digits" / "model.onnx", tmp_path / "logreg.onnx")
    squeezenet = MODEL_REPOSITORY / "squeezenet" / "model.onnx"

    written = cli("init", tmp_path / "logreg.onnx", "--into", repository / "logreg")
    assert written.returncode == 0, written.stderr
    settings = _settings_of(repository / "logreg")
    inputs, outputs = _ort_signature(MODEL_REPOSITORY / "digits" / "model.onnx")
    assert settings["name"] == "logreg"
    assert settings["parameters"]["uri"] == "./logreg.onnx"
    assert (repository / "logreg" / "logreg.onnx").read_bytes() == (
        tmp_path / "logreg.onnx").read_bytes()
    assert [(t["name"], t["shape"][1:]) for t in settings["inputs"]] == [
        (name, shape[1:]) for name, shape in inputs
    ]
    assert [t["name"] for t in settings["outputs"]] == [name for name, _ in outputs]

    again = cli("init", tmp_path / "logreg.onnx", "--into", repository / "logreg")
    assert again.returncode == 1 and "--force overwrites it" in again.stderr

    # squeezenet's file is model.onnx: the model is named after the folder, as MLServer would
    suggested = cli("init", squeezenet, "--into", repository / "photo")
    assert suggested.returncode == 0, suggested.stderr
    assert "--preprocess imagenet --force" in suggested.stdout
    confirmed = cli("init", squeezenet, "--into", repository / "photo",
                    "--preprocess", "imagenet", "--force")
    assert confirmed.returncode == 0, confirmed.stderr
    assert _settings_of(repository / "photo")["name"] == "photo"

    # a static batch: the plugin's batcher fills it, not MLServer's adaptive batching
    b4 = MODEL_REPOSITORY / "digits-b4" / "model.onnx"
    static = cli("init", b4, "--into", repository / "b4")
    assert static.returncode == 0, static.stderr
    settings = _settings_of(repository / "b4")
    assert settings["parameters"]["extra"]["batching"] == {"max_batch_size": 4, "max_delay_ms": 2}
    assert "max_batch_size" not in settings and "max_batch_time" not in settings

    server = Server.start(repository, tmp_path)
    try:
        pixels = reference.digits(4)
        response = server.infer("logreg", [v2_input("input", pixels)])
        assert response.status_code == 200, response.text
        served = {o["name"]: o["data"] for o in response.json()["outputs"]}
        expected = reference.run("digits", {"input": pixels})
        np.testing.assert_array_equal(served["label"], expected["label"])

        pixels = reference.digits(4, offset=8)
        response = server.infer("b4", [v2_input("input", pixels)])
        assert response.status_code == 200, response.text
        served = {  # in the declared datatype: FP32 comes as float32's shortest decimals
            o["name"]: np.array(o["data"], dtype=triton_to_np_dtype(o["datatype"]))
            for o in response.json()["outputs"]
        }
        expected = reference.run("digits-b4", {"input": pixels})
        np.testing.assert_array_equal(served["label"], expected["label"])
        np.testing.assert_array_equal(np.reshape(served["probabilities"], (4, 10)),
                                      expected["probabilities"])

        metadata = server.http.get("/v2/models/photo").json()
        assert metadata["inputs"][0]["parameters"]["content_type"] == "image"
        response = server.infer("photo", [{"name": "data_0", "shape": [1], "datatype": "BYTES",
                                           "data": [images.b64(PHOTO)]}])
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        feeds = {"data_0": images.imagenet(PHOTO)[None]}
        expected = reference.session(squeezenet).run(None, feeds)[0]
        np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), expected,
                                   rtol=1e-4, atol=1e-6)
    finally:
        server.stop()
