"""The plugin's dynamic batcher (`parameters.extra.batching`) over a live server: concurrent
clients with different batch sizes and requested outputs each get exactly their own rows
(equal to onnxruntime on their own input), merging and filling shown by the plugin's
metrics, a bad request among good ones fails alone, and settings that cannot work fail the
load with a message."""
import asyncio
import json
import math
import shutil
import time

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import triton_to_np_dtype

import reference
from reference import v2_input
from server import MODEL_REPOSITORY, Server, copy_model, copy_repository

# A long delay makes the tests deterministic: a batch leaves only when it is full.
WAIT = 5000


def _save_model(path, node, inputs, outputs, initializer):
    graph = helper.make_graph([node], node.op_type, inputs, outputs, initializer=initializer)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _row_sums_model(path):
    """y = x.sum(axis=1) for x of any [N, M]: rows of different widths cannot be merged."""
    _save_model(path, helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0),
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
                [numpy_helper.from_array(np.array([1], np.int64), "axes")])


def _gather_model(path):
    """y = table[idx]: an index out of range passes every check but fails the device run."""
    _save_model(path, helper.make_node("Gather", ["table", "idx"], ["y"], axis=0),
                [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                [numpy_helper.from_array(np.arange(30, dtype=np.float32).reshape(10, 3), "table")])


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("batcher")
    repository = copy_repository(root / "repository", models=[])  # settings.json only
    copy_model(MODEL_REPOSITORY / "digits", repository, "ours",
               {"batching": {"max_batch_size": 8, "max_delay_ms": 30}})
    copy_model(MODEL_REPOSITORY / "digits-b4", repository, "ours-b4",
               {"sessions": 2, "batching": {"max_delay_ms": WAIT}})
    gather = copy_model(MODEL_REPOSITORY / "digits", repository, "gather",
                        {"batching": {"max_batch_size": 17, "max_delay_ms": WAIT}})
    _gather_model(gather / "model.onnx")
    sums = copy_model(MODEL_REPOSITORY / "digits", repository, "row-sums",
                      {"batching": {"max_batch_size": 4, "max_delay_ms": WAIT}})
    _row_sums_model(sums / "model.onnx")
    copy_model(MODEL_REPOSITORY / "digits-temperature", repository, "temperature",
               {"batching": {"max_batch_size": 6, "max_delay_ms": 30}})
    running = Server.start(repository, root)
    yield running
    running.stop()


def _outputs(response):
    assert response.status_code == 200, response.text
    # in the datatype the reply declares: FP32 values are written as float32's shortest
    # decimals, which a float64 parse would not give back bit for bit
    return {
        o["name"]: np.array(o["data"], dtype=triton_to_np_dtype(o["datatype"])).reshape(o["shape"])
        for o in response.json()["outputs"]
    }


async def _concurrently(server, model, bodies):
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        return await asyncio.gather(
            *(client.post(f"/v2/models/{model}/infer", json=body) for body in bodies)
        )


def _rows_histogram(server, model):
    """(device runs, request rows in them) from mlserver_npu_batch_rows."""
    metrics = server.metrics()

    def value(name):
        return sum(v for labels, v in metrics.get(name, {}).items()
                   if dict(labels)["model_name"] == model)

    return value("mlserver_npu_batch_rows_count"), value("mlserver_npu_batch_rows_sum")


def _queue_count(server, model):
    samples = server.metrics().get("mlserver_npu_stage_seconds_count", {})
    return sum(v for labels, v in samples.items()
               if dict(labels)["model_name"] == model and dict(labels)["stage"] == "queue")


TOP3 = {"name": "probabilities", "parameters": {"classification": 3}}
OUTPUT_CHOICES = [None, [{"name": "label"}], [{"name": "probabilities"}],
                  [{"name": "probabilities"}, {"name": "label"}], [TOP3]]


def _assert_own_outputs(outputs, want, expected):
    """The requested outputs, in request order, of exactly the client's rows."""
    assert list(outputs) == ([o["name"] for o in want] if want else list(expected))
    for name, array in outputs.items():
        assert array.shape[0] == len(expected["label"])
        if want == [TOP3]:  # Triton's classification: "score:index" strings, best first
            indices = [[int(s.split(":")[1]) for s in row] for row in array]
            assert indices == np.argsort(-expected[name], axis=1, kind="stable")[:, :3].tolist()
        else:
            np.testing.assert_allclose(array, expected[name], rtol=1e-5, atol=1e-6)


def test_each_client_gets_its_own_rows_and_outputs(batch_server):
    """25 clients, 1 to 5 rows each and one of 20 (over max_batch_size 8), five kinds of
    requested outputs (classification strings among them), merged into runs of at most 8."""
    runs0, rows0 = _rows_histogram(batch_server, "ours")
    queued0 = _queue_count(batch_server, "ours")
    pixels = [reference.digits(1 + i % 5, offset=41 * i) for i in range(24)]
    pixels.insert(7, reference.digits(20, offset=1000))
    wanted = [OUTPUT_CHOICES[i % len(OUTPUT_CHOICES)] for i in range(len(pixels))]
    bodies = [{"inputs": [v2_input("input", p)], **({"outputs": want} if want else {})}
              for p, want in zip(pixels, wanted)]
    responses = asyncio.run(_concurrently(batch_server, "ours", bodies))
    for rows, want, response in zip(pixels, wanted, responses):
        _assert_own_outputs(_outputs(response), want, reference.run("digits", {"input": rows}))

    runs1, rows1 = _rows_histogram(batch_server, "ours")
    total = sum(len(p) for p in pixels)
    assert rows1 - rows0 == total  # every row ran exactly once
    assert math.ceil(total / 8) <= runs1 - runs0 < len(pixels), "requests were not merged"
    assert _queue_count(batch_server, "ours") - queued0 == len(pixels)


def test_grpc_clients_get_their_own_rows(batch_server):
    """The same over gRPC raw contents (MLServer's own stubs, no tritonclient in-process)."""
    import grpc
    from mlserver.grpc import dataplane_pb2 as pb
    from mlserver.grpc import dataplane_pb2_grpc

    pixels = [reference.digits(1 + i % 3, offset=13 * i) for i in range(16)]

    async def call_all():
        async with grpc.aio.insecure_channel(batch_server.grpc_target) as channel:
            stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
            requests = [
                pb.ModelInferRequest(
                    model_name="ours",
                    inputs=[pb.ModelInferRequest.InferInputTensor(
                        name="input", datatype="FP32", shape=list(p.shape))],
                    outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")],
                    raw_input_contents=[p.tobytes()],
                )
                for p in pixels
            ]
            return await asyncio.gather(*(stub.ModelInfer(r) for r in requests))

    runs0, _ = _rows_histogram(batch_server, "ours")
    responses = asyncio.run(call_all())
    for rows, response in zip(pixels, responses):
        (output,) = response.outputs
        assert output.name == "probabilities" and list(output.shape) == [len(rows), 10]
        got = (np.frombuffer(response.raw_output_contents[0], np.float32) if
               response.raw_output_contents else np.array(output.contents.fp32_contents))
        np.testing.assert_allclose(got.reshape(len(rows), 10),
                                   reference.run("digits", {"input": rows})["probabilities"],
                                   rtol=1e-5, atol=1e-6)
    runs1, _ = _rows_histogram(batch_server, "ours")
    assert runs1 - runs0 < len(pixels), "requests were not merged"


def test_two_inputs_are_merged_and_split_together(batch_server):
    """digits-temperature: `pixels` and `temperature` rows stay paired through the merge."""
    runs0, _ = _rows_histogram(batch_server, "temperature")
    feeds = [{"pixels": reference.digits(1 + i % 3, offset=29 * i),
              "temperature": np.full((1 + i % 3, 1), 0.5 + i / 4, np.float32)} for i in range(12)]
    responses = asyncio.run(_concurrently(batch_server, "temperature", [
        {"inputs": [v2_input(name, array) for name, array in feed.items()]} for feed in feeds]))
    for feed, response in zip(feeds, responses):
        outputs = _outputs(response)
        expected = reference.run("digits-temperature", feed)
        assert outputs["label"].tolist() == expected["label"].tolist()
        np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"],
                                   rtol=1e-5, atol=1e-6)
    assert _rows_histogram(batch_server, "temperature")[0] - runs0 < len(feeds)


def test_only_requests_of_the_same_shape_are_merged(batch_server):
    """A model with a dynamic second axis: 4 one-row requests of width 3 and 4 of width 5,
    interleaved, make one run of each width (max_batch_size 4)."""
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 3 if i % 2 else 5)).astype(np.float32) for i in range(8)]
    runs0, _ = _rows_histogram(batch_server, "row-sums")
    responses = asyncio.run(_concurrently(
        batch_server, "row-sums", [{"inputs": [v2_input("x", x)]} for x in xs]))
    session = reference.session(batch_server.repository / "row-sums" / "model.onnx")
    for x, response in zip(xs, responses):
        np.testing.assert_allclose(_outputs(response)["y"], session.run(None, {"x": x})[0],
                                   rtol=1e-6)
    assert _rows_histogram(batch_server, "row-sums")[0] - runs0 == 2


def _static_reference(rows):
    """onnxruntime on the digits-b4 file itself, rows run 4 at a time (zero-padded)."""
    padded = np.zeros((-(-len(rows) // 4) * 4, 64), np.float32)
    padded[: len(rows)] = rows
    runs = [reference.run("digits-b4", {"input": padded[i : i + 4]})
            for i in range(0, len(padded), 4)]
    return {name: np.concatenate([r[name] for r in runs])[: len(rows)] for name in runs[0]}


def test_static_batch_is_filled_not_padded(batch_server):
    """digits-b4 (static batch 4, two sessions): 16 one-row clients make 4 full runs, and a
    10-row request with two one-row ones makes 3 (the 10 rows spread over the runs)."""
    for sizes in ([1] * 16, [10, 1, 1]):
        runs0, rows0 = _rows_histogram(batch_server, "ours-b4")
        sessions0 = sum(batch_server.session_runs("ours-b4").values())
        pixels = [reference.digits(n, offset=17 * i) for i, n in enumerate(sizes)]
        responses = asyncio.run(_concurrently(
            batch_server, "ours-b4", [{"inputs": [v2_input("input", p)]} for p in pixels]))
        for rows, response in zip(pixels, responses):
            # Bit-exact: every run of this model is a batch of 4, whoever's rows are in it.
            expected = _static_reference(rows)
            for name, array in _outputs(response).items():
                np.testing.assert_array_equal(array, expected[name])
        runs1, rows1 = _rows_histogram(batch_server, "ours-b4")
        sessions1 = sum(batch_server.session_runs("ours-b4").values())
        total = sum(sizes)
        assert (runs1 - runs0, rows1 - rows0) == (total // 4, total), sizes  # 4 rows per run
        assert sessions1 - sessions0 == total // 4


def test_a_bad_request_among_good_ones_fails_alone(batch_server):
    """Eight good requests and two refused by their checks (wrong shape, wrong datatype),
    then one index out of range that only the device run can find: it joins a merged run of
    17 rows, which fails; each request then runs alone and only the bad one gets the error."""
    good = [np.array([i, (i * 3) % 10], np.int64) for i in range(8)]
    bad_shape = {"name": "idx", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}
    bad_type = {"name": "idx", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}
    bodies = [{"inputs": [v2_input("idx", g)]} for g in good]
    bodies[3:3] = [{"inputs": [bad_shape]}, {"inputs": [bad_type]}]
    bodies.insert(6, {"inputs": [v2_input("idx", np.array([99], np.int64))]})
    before = sum(batch_server.session_runs("gather").values())
    responses = asyncio.run(_concurrently(batch_server, "gather", bodies))

    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 3 + [400, 400] + [200] + [400] + [200] * 4, statuses
    assert "expected shape [-1]" in responses[3].json()["error"]
    assert "expected datatype INT64" in responses[4].json()["error"]
    assert "out of" in responses[6].json()["error"], responses[6].text
    table = np.arange(30, dtype=np.float32).reshape(10, 3)
    for idx, response in zip(good, [r for r in responses if r.status_code == 200]):
        np.testing.assert_array_equal(_outputs(response)["y"], table[idx])
    # one merged run of 8 x 2 + 1 rows that failed, then 9 runs alone
    assert sum(batch_server.session_runs("gather").values()) - before == 1 + 9


@pytest.mark.parametrize("name, extra, top, message", [
    ("both", {"batching": {"max_batch_size": 8}}, {"max_batch_size": 8, "max_batch_time": 0.01},
     "MLServer's adaptive batching (max_batch_size 8, max_batch_time 0.01) are both set"),
    ("no-size", {"batching": {}}, {},
     "'parameters.extra.batching.max_batch_size' is required for a model with a dynamic"),
    ("typo", {"batching": {"max_batch_size": 8, "max_delay": 5}}, {},
     "unknown key 'parameters.extra.batching.max_delay'"),
    ("preferred", {"batching": {"max_batch_size": 8, "preferred_batch_sizes": [4, 16]}}, {},
     "preferred_batch_sizes': [16] not between 1 and max_batch_size 8"),
    ("scalar", {"batching": {"max_batch_size": 8}}, {},
     "needs a batch axis 0 on every tensor, but output 'total' has shape []"),
])
def test_batching_settings_that_cannot_work_fail_the_load(batch_server, name, extra, top,
                                                          message):
    folder = copy_model(MODEL_REPOSITORY / "digits", batch_server.repository, f"bad-{name}",
                        extra, **top)
    if name == "scalar":  # the sum of a whole batch: no row of it belongs to one request
        _save_model(folder / "model.onnx",
                    helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                    [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])], [])
    try:
        response = batch_server.http.post(f"/v2/repository/models/bad-{name}/load")
        assert response.status_code == 400, response.text
        assert message in response.json()["error"], response.text
        assert batch_server.infer("ours", [v2_input("input", reference.digits(1))]).status_code \
            == 200
    finally:
        shutil.rmtree(folder)


def test_unload_and_reload_keep_batching(batch_server):
    """A request waiting for its batch when the model unloads is served at once (not after
    max_delay_ms) before the model closes; after a reload, requests are merged again."""

    async def wait_then_unload():
        async with httpx.AsyncClient(base_url=batch_server.url, timeout=60) as client:
            waiting = asyncio.create_task(client.post(
                "/v2/models/ours-b4/infer",
                json={"inputs": [v2_input("input", reference.digits(1))]}))
            await asyncio.sleep(1)  # one row of 4: it waits up to WAIT ms for company
            unload = await client.post("/v2/repository/models/ours-b4/unload")
            return await waiting, unload

    started = time.monotonic()
    waiting, unload = asyncio.run(wait_then_unload())
    assert unload.status_code == 200, unload.text
    np.testing.assert_allclose(_outputs(waiting)["probabilities"],
                               _static_reference(reference.digits(1))["probabilities"],
                               rtol=1e-5, atol=1e-6)
    assert time.monotonic() - started < WAIT / 1000
    response = batch_server.http.post("/v2/repository/models/ours-b4/load")
    assert response.status_code == 200, response.text
    settings = json.loads((batch_server.repository / "ours-b4" / "model-settings.json")
                          .read_text())
    assert settings["parameters"]["extra"]["batching"]["max_delay_ms"] == WAIT
    runs0, _ = _rows_histogram(batch_server, "ours-b4")
    pixels = [reference.digits(1, offset=i) for i in range(8)]
    responses = asyncio.run(_concurrently(
        batch_server, "ours-b4", [{"inputs": [v2_input("input", p)]} for p in pixels]))
    assert all(r.status_code == 200 for r in responses)
    assert _rows_histogram(batch_server, "ours-b4")[0] - runs0 == 2
