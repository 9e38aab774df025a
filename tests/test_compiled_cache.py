"""The compiled-model cache's own guarantees, on the real file system: a failed compile leaves
nothing, concurrent fills of one entry both succeed, keys follow content not location; and the
provider options that point TensorRT and the OpenVINO EP at it (those providers are not
installed here: only the options are checked)."""
import json
import shutil
import threading

import pytest

from mlserver_npu.backends.compiled import cache_entry, cache_root
from mlserver_npu.backends.onnxruntime import ep_cache_options
from server import MODEL_REPOSITORY

FACTS = {"sha256": "ab" * 32, "device": "NPU", "config": {"PERFORMANCE_HINT": "LATENCY"}}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSERVER_NPU_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def entries(backend="openvino"):
    return sorted(p.name for p in cache_root(backend).iterdir() if p.name != ".staging")


def test_a_failed_compile_leaves_nothing_and_a_good_one_an_entry(tmp_path):
    with pytest.raises(RuntimeError):
        with cache_entry("openvino", "NPU", FACTS, tmp_path / "model.onnx") as entry:
            (entry.folder / "half.blob").write_bytes(b"partial")
            raise RuntimeError("the compiler failed")
    assert entries() == []
    assert not any((cache_root("openvino") / ".staging").iterdir())

    with cache_entry("openvino", "NPU", FACTS, tmp_path / "model.onnx") as entry:
        assert entry.cached is False
        (entry.folder / "model.blob").write_bytes(b"compiled")
    (name,) = entries()
    assert name.startswith("NPU-")
    written = json.loads((cache_root("openvino") / name / "entry.json").read_text())
    assert written["sha256"] == FACTS["sha256"] and written["source"].endswith("model.onnx")

    # the same facts from another file location: the same entry, as it is
    with cache_entry("openvino", "NPU", FACTS, tmp_path / "elsewhere.onnx") as entry:
        assert entry.cached is True
        assert (entry.folder / "model.blob").read_bytes() == b"compiled"
    # other facts: another entry
    with cache_entry("openvino", "NPU", {**FACTS, "device": "GPU"}, tmp_path / "m") as entry:
        assert entry.cached is False
    assert len(entries()) == 2


def test_two_fills_of_one_entry_at_once_both_succeed(tmp_path):
    inside = threading.Barrier(2)
    results = []

    def fill(blob):
        with cache_entry("openvino", "NPU", FACTS, tmp_path / "model.onnx") as entry:
            inside.wait(timeout=10)  # both are filling before either renames
            (entry.folder / "model.blob").write_bytes(blob)
            results.append(entry.cached)

    threads = [threading.Thread(target=fill, args=(b"first" if i else b"second",))
               for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [False, False]
    (name,) = entries()
    assert (cache_root("openvino") / name / "model.blob").read_bytes() in (b"first", b"second")
    assert not any((cache_root("openvino") / ".staging").iterdir())


def test_tensorrt_and_openvino_ep_engines_go_to_a_folder_per_model(tmp_path, cache):
    model = MODEL_REPOSITORY / "squeezenet" / "model.onnx"
    trt = ep_cache_options("TensorrtExecutionProvider", model, {"device_id": 0})
    folder = trt["trt_engine_cache_path"]
    assert trt == {"trt_engine_cache_enable": "True", "trt_engine_cache_path": folder,
                   "trt_timing_cache_enable": "True", "trt_timing_cache_path": folder}
    assert folder.startswith(str(cache / "compiled" / "tensorrt" / "TensorrtExecutionProvider-"))
    assert ep_cache_options("TensorrtExecutionProvider", model, {"device_id": 0}) == trt

    changed = shutil.copy(MODEL_REPOSITORY / "digits" / "model.onnx", tmp_path / "model.onnx")
    other = ep_cache_options("TensorrtExecutionProvider", changed, {"device_id": 0})
    assert other["trt_engine_cache_path"] != folder
    assert ep_cache_options("TensorrtExecutionProvider", model, {"device_id": 1}) != trt

    (cache_dir,) = ep_cache_options("OpenVINOExecutionProvider", model, {}).values()
    assert cache_dir.startswith(str(cache / "compiled" / "openvino"))


def test_a_cache_that_cannot_be_written_compiles_without_it(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("MLSERVER_NPU_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    with cache_entry("openvino", "NPU", FACTS, tmp_path / "model.onnx") as entry:
        assert entry.cached is False
        (entry.folder / "model.blob").write_bytes(b"compiled")  # a scratch folder
    assert not entry.folder.exists()
    model = MODEL_REPOSITORY / "squeezenet" / "model.onnx"
    assert ep_cache_options("TensorrtExecutionProvider", model, {}) == {}
