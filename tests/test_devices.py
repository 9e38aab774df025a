"""Devices that are not there: a backend whose runtime is missing or cannot start, a TFLite
file or delegate that cannot be opened. Each fails only its own load, with the reason; and
`mlserver-npu devices` tells what this machine has."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import openvino as ov
import pytest

from server import (
    FAKE_FURIOSA,
    MODEL_REPOSITORY,
    REPO,
    TFLITE_REPOSITORY,
    copy_model,
    fake_furiosa_env,
)

TFLITE = TFLITE_REPOSITORY / "digits-uint8"

# (folder, model folder to copy, extra, file to overwrite with garbage, words the error needs)
BROKEN = [
    ("furiosa-not-installed", MODEL_REPOSITORY / "digits", {"device": "warboy(1)*1"}, None,
     ["backend 'furiosa' is not usable here", "furiosa.runtime cannot be imported",
      "No module named 'furiosa'", "pip install 'mlserver-npu[furiosa]'"]),
    ("tflite-corrupt-file", TFLITE, {}, "model.tflite",
     ["LiteRT cannot open 'model.tflite'"]),
    ("tflite-unknown-device", TFLITE, {"device": "gpu"}, None,
     ["unknown tflite device 'gpu'", "known devices: cpu", "options.delegate"]),
    ("tflite-missing-delegate", TFLITE, {"options": {"delegate": "libnowhere.so"}}, None,
     ["tflite delegate 'libnowhere.so' cannot be loaded"]),
    ("tflite-onnxruntime-option", TFLITE, {"options": {"intra_op_threads": 1}}, None,
     ["unknown key 'parameters.extra.options.intra_op_threads'"]),
    ("onnx-on-openvino", MODEL_REPOSITORY / "digits", {"device": "openvino:NPU"}, None,
     ["device 'openvino:NPU' needs OpenVINOExecutionProvider", "available providers"]),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_an_unavailable_device_fails_only_its_load(server, case):
    name, source, extra, garbage, words = case
    folder = copy_model(source, server.repository, name, extra)
    if garbage:
        (folder / garbage).write_bytes(b"not a model")
    response = server.http.post(f"/v2/repository/models/{name}/load")
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.json()["error"], (word, response.json()["error"])
    assert server.http.get("/v2/models/digits/ready").status_code == 200


def test_a_tflite_model_file_that_is_missing(server):
    folder = copy_model(TFLITE, server.repository, "tflite-missing")
    (folder / "model.tflite").unlink()
    response = server.http.post("/v2/repository/models/tflite-missing/load")
    assert response.status_code == 400
    assert "model.tflite' does not exist" in response.json()["error"]


def test_an_npu_runtime_without_its_driver(make_server, tmp_path):
    """The real SDK raises RuntimeError at import without the driver: a clear load error."""
    repository = tmp_path / "repository"
    repository.mkdir()
    shutil.copy(MODEL_REPOSITORY / "settings.json", repository)
    env = fake_furiosa_env(tmp_path / "log", FAKE_FURIOSA_NO_DRIVER="1")
    live = make_server(repository, env=env)
    copy_model(MODEL_REPOSITORY / "digits", repository, "warboy", {"device": "npu:0:0",
                                                                   "options": {}})
    response = live.http.post("/v2/repository/models/warboy/load")
    assert response.status_code == 400
    error = response.json()["error"]
    assert "backend 'furiosa' is not usable here" in error
    assert "RuntimeError: fake furiosa: NPU driver not found" in error
    assert "NPU driver" in error


def _devices(*args, pythonpath=()):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, pythonpath), str(REPO)]))
    completed = subprocess.run(
        [sys.executable, "-m", "mlserver_npu.cli", "devices", *args],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )
    return completed.stdout


def test_devices_command_lists_backends_and_devices():
    report = json.loads(_devices("--json"))
    # qnn: onnxruntime-qnn's plugin, which the test extra installs on Linux x86_64
    qnn = ["qnn"] if importlib.util.find_spec("onnxruntime_qnn") else []
    assert report["onnxruntime"] == {"available": True, "devices": ["cpu", *qnn]}
    assert report["tflite"] == {"available": True, "devices": ["cpu"]}
    assert report["furiosa"]["available"] is False
    assert "furiosa.runtime cannot be imported" in report["furiosa"]["reason"]

    # OpenVINO (installed by the test extra) sees this machine's CPU, with its full name
    cpu_name = ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    assert report["openvino"] == {"available": True, "devices": ["CPU"],
                                  "names": {"CPU": cpu_name}}

    table = _devices().splitlines()
    assert [line.split()[0] for line in table] == ["onnxruntime", "tflite", "furiosa", "openvino"]
    assert table[0].split(maxsplit=1)[1] == ", ".join(["cpu", *qnn])
    assert "unavailable:" in table[2]
    assert table[3].split(maxsplit=1)[1] == f"CPU ({cpu_name})"

    # With FuriosaAI's runtime importable (here the fake) the backend is available; devices are
    # the driver's /dev/npu*pe* files, which this machine has none of.
    report = json.loads(_devices("--json", pythonpath=[FAKE_FURIOSA]))
    assert report["furiosa"] == {"available": True, "devices": []}
