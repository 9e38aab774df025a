"""One model folder moves between devices by its `backend`/`device` keys alone: onnxruntime's
`cpu`, OpenVINO's `CPU` and `AUTO`, Qualcomm's `qnn` (the emulated HTP, where onnxruntime-qnn is
installed) and a FuriosaAI Warboy PE (the fake `furiosa.runtime`), each answering as onnxruntime
does on the same input."""
import importlib.util

import pytest

from server import MODEL_REPOSITORY, Server, copy_model, fake_furiosa_env
from test_openvino import empty_repository, load, served_like_onnxruntime

# (backend/device keys, the backend that serves it, its `devices` metadata)
PLACES = [
    ({"device": "cpu"}, "onnxruntime", "cpu"),
    ({"backend": "openvino", "device": "CPU"}, "openvino", "CPU"),
    ({"device": "AUTO"}, "openvino", "AUTO"),
    ({"device": "npu:0:0"}, "furiosa", "npu:0:0"),
]
if importlib.util.find_spec("onnxruntime_qnn"):
    PLACES.append(({"device": "qnn"}, "onnxruntime", "qnn"))


@pytest.fixture(scope="module")
def anywhere(tmp_path_factory):
    root = tmp_path_factory.mktemp("portability")
    repository = empty_repository(root)
    running = Server.start(repository, root, env={
        **fake_furiosa_env(root / "furiosa.log"), "MLSERVER_NPU_CACHE_DIR": str(root / "cache")})
    yield running
    running.stop()


@pytest.mark.parametrize("place", PLACES, ids=[p[2] for p in PLACES])
def test_the_same_folder_on_every_device(anywhere, place):
    keys, backend, devices = place
    name = "on-" + "-".join(keys.values()).replace(":", "-").lower()
    # The example's options are onnxruntime's: a folder that moves carries none.
    copy_model(MODEL_REPOSITORY / "digits-temperature", anywhere.repository, name,
               {**keys, "options": {}})
    load(anywhere, name)
    parameters = anywhere.http.get(f"/v2/models/{name}").json()["parameters"]
    assert (parameters["backend"], parameters["devices"]) == (backend, devices)
    # OpenVINO computes in bf16 on this CPU by default
    served_like_onnxruntime(anywhere, name, atol=1e-2 if backend == "openvino" else 1e-5)
