"""Unload and reload while requests are in progress: MLServer loads the new copy before it
unloads the old one, and the old one answers every request it took (runs in flight, requests
queued in the batcher) before it closes; a request reaching a closed copy gets a 503."""
import asyncio
import json

import numpy as np
import pytest
from mlserver.settings import ModelSettings
from onnx import TensorProto

import reference
from reference import v2_input
from server import MODEL_REPOSITORY, Server, copy_model, copy_repository, write_model
from test_batcher import _static_reference

from mlserver_npu.backends import get_backend
from mlserver_npu.batcher import Batcher, BatchingSettings
from mlserver_npu.pool import SessionPool

RELOADS = 6
DELAY_MS = 50  # the queue test's max_delay_ms: a lone request waits that long


@pytest.fixture(scope="module")
def lifecycle_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle")
    repository = copy_repository(root / "repository", models=[])
    copy_model(MODEL_REPOSITORY / "squeezenet", repository, "plain")
    copy_model(MODEL_REPOSITORY / "digits-b4", repository, "batched",
               {"sessions": 2, "batching": {"max_delay_ms": 20}})
    copy_model(MODEL_REPOSITORY / "digits", repository, "queued",
               {"batching": {"max_batch_size": 8, "max_delay_ms": DELAY_MS}})
    write_model(repository / "echo", "echo", {},
                model=reference.identity_model(TensorProto.FLOAT, ["N", 10]))
    (repository / "chain").mkdir()
    (repository / "chain" / "model-settings.json").write_text(json.dumps({
        "name": "chain", "implementation": "mlserver_npu.Pipeline",
        "parameters": {"version": "1", "extra": {
            "steps": [{"name": "logistic", "model": "../queued"},
                      {"name": "echo", "model": "../echo",
                       "inputs": {"x": "logistic.outputs.probabilities"}}],
            "outputs": {"probabilities": "echo.outputs.y"},
        }},
    }))
    running = Server.start(repository, root)
    yield running
    running.stop()


def _digits_b4(index):
    pixels = reference.digits(1 + index % 4, offset=index)
    return "input", pixels, "probabilities", _static_reference(pixels)["probabilities"]


def _squeezenet(index):
    image = np.random.default_rng(index % 8).random((1, 3, 224, 224), dtype=np.float32)
    expected = reference.run("squeezenet", {"data_0": image})["softmaxout_1"]
    return "data_0", image, "softmaxout_1", expected


def _chain(index):
    pixels = reference.digits(1 + index % 4, offset=index)
    return "input", pixels, "probabilities", reference.run("digits", {"input": pixels})[
        "probabilities"]


# model -> (request number -> input name, array, output name, onnxruntime's output)
CASES = {"plain": _squeezenet, "batched": _digits_b4, "chain": _chain}


async def _clients_during_reloads(server, model):
    """REST and gRPC clients send requests without pause while the model reloads RELOADS
    times; returns the reload statuses and (expected, output or error) per request."""
    import grpc
    import httpx
    from mlserver.grpc import dataplane_pb2 as pb
    from mlserver.grpc import dataplane_pb2_grpc

    answers, stop, case = [], asyncio.Event(), CASES[model]

    async def rest_client(client, index):
        count = 0
        while not stop.is_set():
            name, array, output, expected = case(index * 100 + count)
            count += 1
            response = await client.post(f"/v2/models/{model}/infer",
                                         json={"inputs": [v2_input(name, array)]})
            if response.status_code != 200:
                answers.append((expected, f"REST {response.status_code}: {response.text}"))
                continue
            (got,) = [o for o in response.json()["outputs"] if o["name"] == output]
            answers.append((expected, np.array(got["data"]).reshape(got["shape"])))

    async def grpc_client(stub, index):
        count = 0
        while not stop.is_set():
            name, array, output, expected = case(index * 100 + count + 50)
            count += 1
            request = pb.ModelInferRequest(
                model_name=model,
                inputs=[pb.ModelInferRequest.InferInputTensor(
                    name=name, datatype="FP32", shape=list(array.shape))],
                outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=output)],
                raw_input_contents=[array.tobytes()],
            )
            try:
                response = await stub.ModelInfer(request)
            except grpc.aio.AioRpcError as error:
                answers.append((expected, f"gRPC {error.code()}: {error.details()}"))
                continue
            got = np.frombuffer(response.raw_output_contents[0], np.float32)
            answers.append((expected, got.reshape(expected.shape)))

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client, \
            grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        clients = [asyncio.create_task(rest_client(client, i)) for i in range(4)]
        clients += [asyncio.create_task(grpc_client(stub, i)) for i in range(4)]
        await asyncio.sleep(0.3)
        reloads = []
        for _ in range(RELOADS):
            reloads.append(await client.post(f"/v2/repository/models/{model}/load"))
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*clients)
    return [r.status_code for r in reloads], answers


@pytest.mark.parametrize("model", list(CASES))
def test_reloads_under_load_answer_every_request(lifecycle_server, model):
    """Concurrent REST and gRPC clients during repeated reloads (without batching, with it,
    and of a pipeline whose second step waits for its first, batched, one): no error at all (the old copy finishes what it
    took), every answer equal to onnxruntime."""
    statuses, answers = asyncio.run(_clients_during_reloads(lifecycle_server, model))
    assert statuses == [200] * RELOADS
    errors = [answer for _, answer in answers if isinstance(answer, str)]
    assert not errors, f"{len(errors)} of {len(answers)} failed, e.g. {errors[:3]}"
    assert len(answers) > 30
    for expected, got in answers:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_queue_time_is_not_also_device_time(lifecycle_server):
    """With batching, a lone request waits max_delay_ms in the queue: that counts as `queue`
    once per request, and not again as `device` (their sums stay within the latency)."""
    import time

    def stage(name):
        samples = lifecycle_server.metrics()
        return tuple(
            sum(v for labels, v in samples[f"mlserver_npu_stage_seconds_{kind}"].items()
                if dict(labels)["model_name"] == "queued" and dict(labels)["stage"] == name)
            for kind in ("sum", "count")
        )

    (queue0, queued0), (device0, _) = stage("queue"), stage("device")
    latency, requests = 0.0, 5
    for i in range(requests):
        started = time.perf_counter()
        response = lifecycle_server.infer("queued", [v2_input("input", reference.digits(1, i))])
        latency += time.perf_counter() - started
        assert response.status_code == 200, response.text
    (queue1, queued1), (device1, _) = stage("queue"), stage("device")
    assert queued1 - queued0 == requests
    assert queue1 - queue0 >= requests * DELAY_MS / 1000 * 0.9
    assert (queue1 - queue0) + (device1 - device0) <= latency


async def _batcher(delay_ms):
    backend = get_backend("onnxruntime")
    session = await backend.open(MODEL_REPOSITORY / "digits" / "model.onnx", "cpu",
                                 backend.Options.model_validate({}))
    pool = SessionPool([session], "digits")
    settings = ModelSettings(name="digits", implementation="mlserver_npu.NPURuntime")
    return Batcher(pool, BatchingSettings(max_batch_size=8, max_delay_ms=delay_ms), settings), pool


def test_batcher_close_serves_what_it_holds_and_refuses_later_requests():
    """In-process: requests queued when close() starts, and one arriving while it drains,
    are served at once (not after max_delay_ms); one after close() is a 503 at once."""
    from mlserver.errors import MLServerError

    async def scenario():
        batcher, pool = await _batcher(delay_ms=60_000)
        rows = [reference.digits(1, offset=i) for i in range(3)]
        queued = [asyncio.create_task(batcher.run({"input": r})) for r in rows[:2]]
        await asyncio.sleep(0.05)  # both wait for company (a minute)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0)
        during = asyncio.create_task(batcher.run({"input": rows[2]}))
        served = await asyncio.wait_for(asyncio.gather(*queued, during), 10)
        await asyncio.wait_for(closing, 10)
        with pytest.raises(MLServerError) as refused:
            await asyncio.wait_for(batcher.run({"input": rows[0]}), 10)
        await pool.close()
        return rows, served, refused.value

    rows, served, refused = asyncio.run(scenario())
    for pixels, outputs in zip(rows, served):
        np.testing.assert_allclose(outputs["probabilities"],
                                   reference.run("digits", {"input": pixels})["probabilities"],
                                   rtol=1e-5, atol=1e-6)
    assert refused.status_code == 503
    assert "model 'digits' was unloaded before this request ran; retry" in str(refused)


def test_a_closed_pool_refuses_runs_with_503():
    """In-process: a run reaching a closed pool is a 503, never an AttributeError."""
    from mlserver.errors import MLServerError

    async def scenario():
        _, pool = await _batcher(delay_ms=1)
        await pool.close()
        with pytest.raises(MLServerError) as refused:
            await pool.run({"input": reference.digits(1)})
        return refused.value

    assert asyncio.run(scenario()).status_code == 503


def test_a_closed_batcher_refuses_requests_at_once():
    """In-process: a request after close() (its batching loop cancelled) gets a 503 at
    once instead of waiting forever for a loop that is gone."""
    from mlserver.errors import MLServerError

    async def scenario():
        batcher, pool = await _batcher(delay_ms=1)
        await batcher.run({"input": reference.digits(1)})  # starts the batching loop
        await batcher.close()
        try:
            with pytest.raises(MLServerError) as refused:
                await asyncio.wait_for(batcher.run({"input": reference.digits(1)}), 10)
        finally:
            await pool.close()
        return refused.value

    assert asyncio.run(scenario()).status_code == 503
