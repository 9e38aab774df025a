"""FuriosaAI Warboy models through `mlserver start`, on the fake `furiosa.runtime` in
tests/fake_furiosa (the only part mocked: no NPU here). The fake follows FuriosaRT's documented
API, computes real outputs with onnxruntime, and logs what it was asked to do."""
import asyncio
import json
import shutil

import numpy as np
import pytest

import reference
from reference import v2_input
from server import (
    FAKE_FURIOSA,
    MODEL_REPOSITORY,
    REPO,
    Server,
    copy_model,
    fake_furiosa_env,
    grpc_calls,
)

WARBOY_EXAMPLE = REPO / "examples" / "warboy" / "model-settings.json"


@pytest.fixture(scope="module")
def npu(tmp_path_factory):
    """Two fake Warboy cards: README's example (examples/warboy) takes npu:0:0 and npu:0:1,
    npu:1:0 and npu:1:1 are left free for the tests."""
    root = tmp_path_factory.mktemp("furiosa")
    repository = root / "repository"
    repository.mkdir()
    (repository / "settings.json").write_text((MODEL_REPOSITORY / "settings.json").read_text())
    example = copy_model(MODEL_REPOSITORY / "digits", repository, "digits-warboy")
    shutil.copy(WARBOY_EXAMPLE, example / "model-settings.json")
    log = root / "furiosa.jsonl"
    running = Server.start(repository, root, env=fake_furiosa_env(log))
    running.fake_log = log
    yield running
    running.stop()


def _events(server, event=None, since=0):
    lines = server.fake_log.read_text().splitlines()[since:]
    return [e for e in map(json.loads, lines) if event is None or e["event"] == event]


def _mark(server):
    return len(server.fake_log.read_text().splitlines())


def _infer_digits(server, model, batch, offset=0):
    pixels = reference.digits(batch, offset)
    response = server.infer(model, [v2_input("input", pixels)])
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    want = reference.run("digits", {"input": pixels})
    assert outputs["label"]["data"] == want["label"].tolist()
    np.testing.assert_allclose(
        np.array(outputs["probabilities"]["data"]).reshape(batch, 10), want["probabilities"],
        rtol=1e-5, atol=1e-6)


def test_metadata_describes_the_npu_model(npu):
    metadata = npu.http.get("/v2/models/digits-warboy").json()
    assert metadata["parameters"]["backend"] == "furiosa"
    assert metadata["parameters"]["devices"] == "npu:0:0,npu:0:1"
    # batch_size 4 compiles a static batch of 4; clients still send any batch
    assert metadata["parameters"]["static_batch"] == 4
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("input", "FP32", [-1, 64])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("label", "INT64", [-1]), ("probabilities", "FP32", [-1, 10])]


def test_compile_options_and_devices_reach_the_runtime(npu):
    example = json.loads(WARBOY_EXAMPLE.read_text())["parameters"]["extra"]
    created = [e for e in _events(npu, "create_runner") if e["device"].startswith("npu:0:")]
    assert sorted(e["pes"][0] for e in created) == ["npu:0:0", "npu:0:1"]
    for event in created:  # one runner per device, each with the same options
        assert event["device"] == event["pes"][0]
        assert event["compiler_config"] == example["options"]["compiler_config"]
        assert (event["worker_num"], event["batch_size"]) == (2, 4)
        assert event["model"] == "model.onnx"


def _given_rows(event, name="input"):
    given = event["inputs"][name]
    assert given["dtype"] == "float32"
    return np.array(given["data"], np.float32).reshape(given["shape"])


def test_inference_matches_onnxruntime_over_rest_and_grpc(npu):
    mark = _mark(npu)
    _infer_digits(npu, "digits-warboy", batch=5)
    # 5 rows on a batch-4 NPU model: two runs of 4, the second padded by repeating its last row
    first, second = (_given_rows(e) for e in _events(npu, "run", since=mark))
    pixels = reference.digits(5)
    np.testing.assert_array_equal(first, pixels[:4])
    np.testing.assert_array_equal(second, np.repeat(pixels[4:], 4, axis=0))

    pixels = reference.digits(3, offset=200)
    [result] = grpc_calls(npu.grpc_target, [
        {"op": "infer", "model": "digits-warboy", "inputs": [v2_input("input", pixels)]}])
    assert result["ok"]["outputs"]["label"]["data"] == (
        reference.run("digits", {"input": pixels})["label"].tolist())


def test_a_batch_spreads_over_the_devices(npu):
    mark = _mark(npu)
    before = npu.session_runs("digits-warboy")
    _infer_digits(npu, "digits-warboy", batch=16, offset=50)
    events = _events(npu, "run", since=mark)
    assert sorted(e["device"] for e in events) == ["npu:0:0"] * 2 + ["npu:0:1"] * 2
    # each run got 4 of the request's rows, and together all 16, each once
    given = sorted(map(tuple, np.concatenate([_given_rows(e) for e in events]).tolist()))
    assert given == sorted(map(tuple, reference.digits(16, offset=50).tolist()))
    after = npu.session_runs("digits-warboy")
    assert {s: after[s] - before[s] for s in after} == {"0": 2, "1": 2}


def test_unload_closes_the_runners_and_frees_the_devices(npu):
    mark = _mark(npu)
    assert npu.http.post("/v2/repository/models/digits-warboy/unload").status_code == 200
    assert sorted(e["device"] for e in _events(npu, "close", since=mark)) == [
        "npu:0:0", "npu:0:1"]
    # the same PEs open again
    assert npu.http.post("/v2/repository/models/digits-warboy/load").status_code == 200
    _infer_digits(npu, "digits-warboy", batch=2)


def test_a_reload_in_place_finds_its_pes_busy_and_keeps_serving(npu):
    """MLServer loads the new copy before it unloads the old one (README says: unload first)."""
    response = npu.http.post("/v2/repository/models/digits-warboy/load")
    assert response.status_code == 400
    assert "busy" in response.json()["error"]
    _infer_digits(npu, "digits-warboy", batch=3)


def test_one_folder_moves_between_cpu_warboy_and_a_pool(npu):
    """Only `device` and `sessions` change in model-settings.json."""
    folder = copy_model(MODEL_REPOSITORY / "digits", npu.repository, "mover", {"options": {}})
    settings_path = folder / "model-settings.json"
    for extra, backend, devices in [
        ({"device": "cpu"}, "onnxruntime", "cpu"),
        ({"device": "warboy(1)*1"}, "furiosa", "warboy(1)*1"),
        ({"device": "cpu", "sessions": 2}, "onnxruntime", "cpu,cpu"),
    ]:
        settings = json.loads(settings_path.read_text())
        settings["parameters"]["extra"].update(extra)
        settings_path.write_text(json.dumps(settings))
        response = npu.http.post("/v2/repository/models/mover/load")
        assert response.status_code == 200, response.text
        parameters = npu.http.get("/v2/models/mover").json()["parameters"]
        assert (parameters["backend"], parameters["devices"]) == (backend, devices)
        _infer_digits(npu, "mover", batch=3, offset=300)
    assert npu.http.post("/v2/repository/models/mover/unload").status_code == 200


# (folder, extra, words the load error must contain)
BROKEN = [
    ("busy-device", {"device": "npu:0:0"},
     ["furiosa cannot open 'model.onnx' on device 'npu:0:0'", "FuriosaRuntimeError", "busy"]),
    ("two-sessions-one-pe", {"device": "npu:1:0", "sessions": 2},
     ["on device 'npu:1:0'", "busy"]),
    ("bad-device", {"device": "warboy(3)*1"}, ["device 'warboy(3)*1'", "1 or 2 PEs"]),
    ("bad-compiler-config",
     {"device": "npu:1:0", "options": {"compiler_config": {"remove_lower": 1}}},
     ["FuriosaRuntimeError", "'remove_lower' must be bool"]),
    ("onnxruntime-option", {"device": "npu:1:0", "options": {"intra_op_threads": 1}},
     ["unknown key 'parameters.extra.options.intra_op_threads'"]),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_a_bad_npu_configuration_fails_its_load_with_a_reason(npu, case):
    name, extra, words = case
    copy_model(MODEL_REPOSITORY / "digits", npu.repository, name, {"options": {}, **extra})
    response = npu.http.post(f"/v2/repository/models/{name}/load")
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.json()["error"], (word, response.json()["error"])
    _infer_digits(npu, "digits-warboy", batch=1)


def test_a_failed_load_leaves_no_device_taken(npu):
    """A load whose first runner opens on npu:1:0 and whose second finds npu:0:0 busy (the
    example holds it) closes the first: npu:1:0 is free again and a model opens on it."""
    mark = _mark(npu)
    copy_model(MODEL_REPOSITORY / "digits", npu.repository, "half-opened",
               {"device": "npu:1:0,npu:0:0", "options": {}})
    response = npu.http.post("/v2/repository/models/half-opened/load")
    assert response.status_code == 400 and "busy" in response.json()["error"], response.text
    opened = [e["runner"] for e in _events(npu, "create_runner", since=mark)]
    assert [e["device"] for e in _events(npu, "create_runner", since=mark)] == ["npu:1:0"]
    assert [e["runner"] for e in _events(npu, "close", since=mark)] == opened
    copy_model(MODEL_REPOSITORY / "digits", npu.repository, "on-free-pe",
               {"device": "npu:1:0", "options": {}})
    response = npu.http.post("/v2/repository/models/on-free-pe/load")
    assert response.status_code == 200, response.text
    _infer_digits(npu, "on-free-pe", batch=1)
    assert npu.http.post("/v2/repository/models/on-free-pe/unload").status_code == 200


def test_the_backend_maps_the_runtime_dtype_and_shape_errors(monkeypatch):
    """Requests are checked before they reach a session; a session still turns the runtime's
    TypeError and ValueError into client errors."""
    monkeypatch.syspath_prepend(str(FAKE_FURIOSA))
    from mlserver_npu.backends import InvalidInput, get_backend

    backend = get_backend("furiosa")

    async def scenario():
        session = await backend.open(MODEL_REPOSITORY / "digits" / "model.onnx", "npu:0:0",
                                     backend.Options(batch_size=2))
        try:
            good = reference.digits(2)
            assert (await session.run({"input": good}))["label"].tolist() == (
                reference.run("digits", {"input": good})["label"].tolist())
            for bad, error in [(good.astype(np.float64), "FLOAT32"), (good[:1], "shape")]:
                with pytest.raises(InvalidInput, match=error):
                    await session.run({"input": bad})
        finally:
            await session.close()

    asyncio.run(scenario())
