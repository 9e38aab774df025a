"""The load process: `python -m bench.load JOB_JSON` drives one target at each concurrency
and prints one JSON line per point.

It runs apart from the servers it measures, so their CPU is theirs alone; for the raw
onnxruntime case the session lives here and this process's own CPU is the server's. It never
imports tritonclient (its protos clash with MLServer's): gRPC goes through MLServer's stubs.
"""
import asyncio
import json
import os
import struct
import sys
import time
from typing import Any, Awaitable, Callable, Dict, List

import httpx
import numpy as np
import psutil

from .workloads import TARGETS, WORKLOADS, Workload


class Skip(Exception):
    """The server cannot serve this case (e.g. a feature not built yet); the reason says why."""


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants."""
    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


class RawClient:
    """onnxruntime itself: the same session settings, a thread per run, nothing else."""

    def __init__(self, workload: Workload, job: Dict[str, Any]):
        from .baseline import (
            imagenet_preprocess, letterbox, open_session, top_k, yolov8_detections,
        )

        session = open_session(workload.model_file, job["threads"])
        names = [output.name for output in session.get_outputs()]
        if workload.detection:
            jpeg = workload.jpeg()

            def run() -> Any:
                tensor, ratio, pad = letterbox(jpeg)
                (output,) = session.run(names[:1], {workload.input_name: tensor})
                return yolov8_detections(output, ratio, pad)
        elif workload.image:
            labels = [f"class {i}" for i in range(1000)]
            jpeg = workload.jpeg()

            def run() -> Any:
                (scores,) = session.run(names[:1], {workload.input_name: imagenet_preprocess(jpeg)})
                return top_k(scores, labels, workload.top_k)
        else:
            feeds = {workload.input_name: workload.sample()}

            def run() -> Any:
                return session.run(names, feeds)

        self._run = run

    def caller(self, worker: int) -> Callable[[], Awaitable[Any]]:
        return self._call

    async def _call(self) -> Any:
        return await asyncio.to_thread(self._run)

    async def probe(self) -> Dict[str, Any]:
        return {"result": repr(await self._call())[:200]}

    async def aclose(self) -> None:
        pass


class HttpClient:
    """POSTs over keep-alive connections, one httpx client per worker: a single shared
    client's pool costs twice the CPU per request at 16 workers (measured: 1.0 vs 0.4 ms)."""

    def __init__(self, url: str, **request: Any):
        self._url, self._request = url, request
        self._clients: List[httpx.AsyncClient] = []

    def caller(self, worker: int) -> Callable[[], Awaitable[Any]]:
        while len(self._clients) <= worker:
            self._clients.append(httpx.AsyncClient(timeout=120))
        client = self._clients[worker]

        async def call() -> httpx.Response:
            response = await client.post(self._url, **self._request)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            return response

        return call

    async def probe(self) -> Dict[str, Any]:
        response = await self.caller(0)()
        length = response.headers.get("inference-header-content-length")
        if length is None:
            return response.json()
        return json.loads(response.content[: int(length)])

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


class GrpcClient:
    """ModelInfer through MLServer's own stubs, the tensor as raw_input_contents."""

    def __init__(self, target: str, model: str, workload: Workload):
        import grpc
        from mlserver.grpc import dataplane_pb2 as pb
        from mlserver.grpc import dataplane_pb2_grpc

        size = 64 * 1024 * 1024
        self._channel = grpc.aio.insecure_channel(
            target, options=[("grpc.max_send_message_length", size),
                             ("grpc.max_receive_message_length", size)]
        )
        self._stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        spec = workload.v2_input()
        tensor = pb.ModelInferRequest.InferInputTensor(
            name=spec["name"], datatype=spec["datatype"], shape=spec["shape"]
        )
        if workload.image:
            tensor.parameters["content_type"].string_param = "image"
            jpeg = workload.jpeg()
            raw = struct.pack("<I", len(jpeg)) + jpeg  # Triton's length-prefixed BYTES
        else:
            raw = workload.sample().tobytes()
        self._request = pb.ModelInferRequest(
            model_name=model, inputs=[tensor], raw_input_contents=[raw]
        )

    def caller(self, worker: int) -> Callable[[], Awaitable[Any]]:
        return self._call  # one HTTP/2 channel multiplexes every worker

    async def _call(self) -> Any:
        import grpc

        try:
            return await self._stub.ModelInfer(self._request)
        except grpc.aio.AioRpcError as error:
            raise RuntimeError(f"gRPC {error.code().name}: {error.details()}") from None

    async def probe(self) -> Dict[str, Any]:
        response = await self._call()
        return {"outputs": [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
                            for o in response.outputs]}

    async def aclose(self) -> None:
        await self._channel.close()


def make_client(job: Dict[str, Any]):
    workload, target = WORKLOADS[job["workload"]], TARGETS[job["target"]]
    model = target.model_name(workload)
    protocol = target.protocol_for(workload)
    if protocol == "in-process":
        return RawClient(workload, job)
    if protocol == "grpc":
        return GrpcClient(job["address"], model, workload)
    if protocol == "upload":
        files = {"image": ("image.jpg", workload.jpeg(), "image/jpeg")}
        endpoint = "detect" if workload.detection else "classify"
        return HttpClient(f"{job['address']}/models/{model}/{endpoint}", files=files)
    path = f"/v2/models/{model}/infer" if protocol != "json" else f"/models/{model}/infer"
    if protocol == "rest-binary":
        body, header_length = workload.v2_binary()
        return HttpClient(f"{job['address']}{path}", content=body, headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(header_length)})
    return HttpClient(f"{job['address']}{path}", content=workload.v2_body(),
                      headers={"content-type": "application/json"})


def check_image_response(body: Dict[str, Any], k: int) -> None:
    """mlserver-npu must answer an image with top-k labels; anything else means unsupported."""
    outputs = body.get("outputs", [])
    if not any(o["datatype"] == "BYTES" and list(o["shape"]) == [1, k] for o in outputs):
        shapes = [(o["name"], o["datatype"], o["shape"]) for o in outputs]
        raise Skip(f"the server answered without BYTES [1, {k}] top-{k} labels: {shapes}")


def check_detection_response(body: Dict[str, Any]) -> None:
    """mlserver-npu must answer with boxes (`detection_boxes`), not the raw head."""
    names = [o["name"] for o in body.get("outputs", [])]
    if "detection_boxes" not in names:
        raise Skip(f"the server answered without detection_boxes: {names}")


async def measure(client: Any, concurrency: int, warmup: float,
                  duration: float, cpu_pid: int) -> Dict[str, Any]:
    """Keep `concurrency` requests in flight; measure a window of `duration` seconds that
    starts after `warmup` seconds, in steady state (no ramp-up or drain inside it)."""
    latencies: List[float] = []
    errors: List[str] = []
    state = {"recording": False, "stop": False}

    async def worker(call: Callable[[], Awaitable[Any]]) -> None:
        while not state["stop"]:
            start = time.perf_counter()
            try:
                await call()
                failed = None
            except Exception as error:  # counted, and the first one reported
                failed = str(error) or type(error).__name__
            if state["recording"]:
                if failed is None:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors.append(failed)

    me = psutil.Process()
    tasks = [asyncio.create_task(worker(client.caller(i))) for i in range(concurrency)]
    await asyncio.sleep(warmup)
    server0, client0 = tree_cpu_seconds(cpu_pid), sum(me.cpu_times()[:2])
    began = time.perf_counter()
    state["recording"] = True
    await asyncio.sleep(duration)
    state["recording"] = False
    elapsed = time.perf_counter() - began
    server1, client1 = tree_cpu_seconds(cpu_pid), sum(me.cpu_times()[:2])
    state["stop"] = True
    await asyncio.gather(*tasks)

    done = len(latencies)
    ms = np.array(latencies) * 1000
    own = cpu_pid == os.getpid()
    return {
        "concurrency": concurrency,
        "requests": done,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": elapsed,
        "rps": done / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if done else None,
        "p99_ms": float(np.percentile(ms, 99)) if done else None,
        "server_cpu_ms": 1000 * (server1 - server0) / done if done else None,
        "client_cpu_ms": None if own else 1000 * (client1 - client0) / done if done else None,
    }


async def run_job(job: Dict[str, Any]) -> None:
    client = make_client(job)
    workload, target = WORKLOADS[job["workload"]], TARGETS[job["target"]]
    try:
        try:
            first = await client.probe()
        except Exception as error:
            raise Skip(f"the first request failed: {error}") from None
        if workload.detection and target.server == "mlserver" and target.variant != "echo":
            check_detection_response(first)
        elif workload.image and target.server == "mlserver" and target.variant != "echo":
            check_image_response(first, workload.top_k)
        for concurrency in job["concurrency"]:
            point = await measure(client, concurrency, job["warmup"], job["duration"],
                                  job.get("cpu_pid") or os.getpid())
            print(json.dumps(point), flush=True)
    except Skip as skip:
        print(json.dumps({"skipped": str(skip)}), flush=True)
    finally:
        await client.aclose()


def main() -> None:
    job = json.loads(sys.argv[1])
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run_job(job))


if __name__ == "__main__":
    main()
