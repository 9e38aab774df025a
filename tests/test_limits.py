"""Bounded under abuse and overload (issue 21), against one real server: a REST body over
MLSERVER_NPU_MAX_REQUEST_BYTES is a 413 before it is read (the server does not grow by it),
a gRPC message over grpc_max_message_length is RESOURCE_EXHAUSTED; a burst of large images
decodes within the model's pixel budget and the memory comes back; past a model's
max_queue_size requests get a fast 429 (gRPC RESOURCE_EXHAUSTED), counted as rejected, while
accepted ones keep a bounded latency and the health endpoints answer; a settings path out of
the model folder (/etc/passwd as labels, a symlink out, a relative uri up and out) is a load
error naming the key."""
import base64
import json
import os
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List

import httpx
import numpy as np
import onnxruntime as ort
import psutil
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import reference
from images import encode
from server import Server, copy_model, copy_repository, grpc_calls, write_model

MAX_BODY = 4 * 2**20  # MLSERVER_NPU_MAX_REQUEST_BYTES of the server
GRPC_MAX = 4 * 2**20  # its grpc_max_message_length
# How much the server may grow while refusing a body of 25x the limit: the limit itself,
# plus what a request and Python's allocator keep (the body unbounded grows it by >100 MB).
BODY_GROWTH = 24 * 2**20

SIDE = 3000  # burst images: 3000x3000 RGB (36 MB decoded, a small PNG)
BURST = 8
BUDGET = SIDE * SIDE  # one of them decoded at a time
HOLD_MS = 2500  # the "held" model keeps each request this long in its batcher

SLOW_WIDTH, SLOW_LAYERS = 1024, 120  # ~40 ms a request on one thread
SLOW_QUEUE = 2


def slow_model() -> bytes:
    """x [N, 1024] -> 120 MatMul+Tanh layers with one shared weight: 250 MFLOP a row."""
    weight = np.random.default_rng(0).normal(0, 0.05, (SLOW_WIDTH, SLOW_WIDTH)).astype(np.float32)
    nodes, previous = [], "x"
    for layer in range(SLOW_LAYERS):
        nodes.append(helper.make_node("MatMul", [previous, "w"], [f"m{layer}"]))
        previous = "y" if layer == SLOW_LAYERS - 1 else f"t{layer}"
        nodes.append(helper.make_node("Tanh", [f"m{layer}"], [previous]))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SLOW_WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SLOW_WIDTH])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    repository = copy_repository(root / "repo", models=["digits", "digits-image"])
    copy_model(repository / "digits-image", repository, "burst",
               {"image_pixel_budget": BUDGET, "max_image_pixels": SIDE * SIDE})
    copy_model(repository / "digits", repository, "held", {
        "batching": {"max_batch_size": 64, "max_delay_ms": HOLD_MS}, "max_queue_size": 1,
    })
    for name, bound in (("slow", SLOW_QUEUE), ("slow-unbounded", 0)):
        write_model(repository / name, name, {
            "options": {"intra_op_threads": 1}, "max_queue_size": bound,
        }, model=slow_model())
    running = Server.start(
        repository, root, settings={"grpc_max_message_length": GRPC_MAX},
        env={"MLSERVER_NPU_MAX_REQUEST_BYTES": str(MAX_BODY)},
    )
    yield running
    running.stop()


class PeakRSS:
    """The largest resident size of a process, sampled every 5 ms while in the block."""

    def __init__(self, pid: int):
        self._process = psutil.Process(pid)
        self.before = self.peak = self._process.memory_info().rss
        self._done = threading.Event()

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> "PeakRSS":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def now(self) -> int:
        return self._process.memory_info().rss


def _digits_body(rows: int = 1) -> dict:
    return {"inputs": [reference.v2_input("input", reference.digits(rows))]}


# --- 1. request size ---

def _raw_request(port: int, head: bytes, chunks: Callable[[], bytes], total: int) -> bytes:
    """Send `head`, then chunks until `total` bytes or the server stops reading; the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sent = 0
        try:
            while sent < total:
                chunk = chunks()
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while b"\r\n\r\n" not in reply or len(reply) < reply.index(b"\r\n\r\n") + 4 + 50:
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
        except (ConnectionResetError, socket.timeout):
            pass
        return reply


def test_an_oversized_body_is_a_413_before_it_is_read(limited):
    """By its Content-Length: refused at once, nothing of it read."""
    head = (
        f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {200 * 2**20}\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    reply = _raw_request(limited.http_port, head, lambda: b" " * 2**16, 2**20)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert time.perf_counter() - started < 5
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert "MLSERVER_NPU_MAX_REQUEST_BYTES" in body["error"] and str(MAX_BODY) in body["error"]


def test_a_chunked_body_is_cut_at_the_limit_without_the_server_growing(limited):
    """Chunked (no Content-Length): counted as it streams; 100 MB offered, the 413 comes once
    the limit is passed and the server grows by less than BODY_GROWTH."""
    head = (
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    payload = b"[" + b"1.0," * 16383 + b"1]"
    chunk = f"{len(payload):x}\r\n".encode() + payload + b"\r\n"
    with PeakRSS(limited.process.pid) as rss:
        reply = _raw_request(limited.http_port, head, lambda: chunk, 100 * 2**20)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert rss.peak - rss.before < BODY_GROWTH, (rss.before, rss.peak)
    assert limited.http.get("/v2/health/live").status_code == 200


def test_a_body_under_the_limit_is_served(limited):
    rows = 1000  # ~700 KB of JSON
    response = limited.http.post("/v2/models/digits/infer", json=_digits_body(rows))
    assert response.status_code == 200, response.text[:300]
    expected = reference.run("digits", {"input": reference.digits(rows)})["label"]
    served = {o["name"]: o for o in response.json()["outputs"]}
    assert served["label"]["data"] == expected.tolist()


def test_a_grpc_message_over_the_limit_is_resource_exhausted(limited):
    array = np.zeros((GRPC_MAX // 4 // 64 + 10, 64), np.float32)  # just over the limit
    [result] = grpc_calls(limited.grpc_target, [
        {"op": "infer", "model": "digits", "inputs": [reference.v2_input("input", array)]},
    ])
    assert result["status"] == "StatusCode.RESOURCE_EXHAUSTED", result
    assert "larger than max" in result["error"], result


# --- 2. image pixel budget ---

def _burst_image(seed: int) -> bytes:
    """A large PNG that compresses well (smooth bands), a different digit-like blob each."""
    ys, xs = np.mgrid[0:SIDE:30, 0:SIDE:30]
    small = ((np.sin(xs / (200 + seed * 10)) + np.cos(ys / 300)) * 60 + 128).astype(np.uint8)
    big = Image.fromarray(np.stack([small] * 3, -1)).resize((SIDE, SIDE), Image.NEAREST)
    return encode(big, "PNG")


def test_a_burst_of_large_images_decodes_within_the_budget_and_memory_returns(limited):
    files = [_burst_image(i) for i in range(BURST)]
    decoded_bytes = SIDE * SIDE * 4  # Pillow keeps RGB in 4 bytes a pixel

    def send(data: bytes) -> httpx.Response:
        body = {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                            "parameters": {"content_type": "image"},
                            "data": [base64.b64encode(data).decode()]}]}
        return httpx.post(f"{limited.url}/v2/models/burst/infer", json=body, timeout=60)

    send(files[0])  # warm: the first decode's one-off allocations
    with PeakRSS(limited.process.pid) as rss, ThreadPoolExecutor(BURST) as pool:
        responses = list(pool.map(send, files))
    assert [r.status_code for r in responses] == [200] * BURST, responses[0].text[:300]
    expected = [reference.run("digits", {"input": _digits_of(f)})["label"][0] for f in files]
    for response, label in zip(responses, expected):
        top = {o["name"]: o for o in response.json()["outputs"]}["probabilities"]["data"][0]
        assert top.split(":")[1] == str(label)
    growth = rss.peak - rss.before
    # One image of 36 MB decoded at a time, with its grey copy (9 MB), the resize's working
    # copies and the requests' bodies: measured 40-60 MB; without the budget 190-250 MB
    # (the server decodes up to 6 at once: its default thread pool on 2 cores).
    assert growth < 2.5 * decoded_bytes, growth / 2**20
    time.sleep(0.5)
    assert rss.now() - rss.before < decoded_bytes, (rss.now() - rss.before) / 2**20


def test_a_request_that_waits_past_the_budget_wait_gets_a_503():
    """In-process: while one request holds the whole budget, another waits `wait` seconds
    and then gets a 503 naming the setting; a request's second image never waits."""
    from mlserver_npu.codecs.budget import BudgetExhausted, PixelBudget

    budget = PixelBudget(100, wait=0.3)
    with budget.holding() as first:
        first(80)
        first(80)  # its own second image: counted, not waited for
        assert budget.held == 160
        started = time.perf_counter()
        with pytest.raises(BudgetExhausted) as refused:
            with budget.holding() as second:
                second(50)
        assert 0.25 < time.perf_counter() - started < 2
    assert refused.value.status_code == 503
    assert "image_pixel_budget" in str(refused.value)
    assert budget.held == 0
    with budget.holding() as third:  # free again: no wait
        third(1000)  # more than the budget: waits for all of it, and takes it
        assert budget.held == 100


def _digits_of(data: bytes) -> np.ndarray:
    """What digits-image's preprocessing makes of the file, computed with Pillow here."""
    image = Image.open(__import__("io").BytesIO(data)).convert("L").resize((8, 8), Image.BOX)
    return (np.asarray(image, np.float32) * 16 / 255).reshape(1, 64)


# --- 3. load shedding ---

def test_past_max_queue_size_a_request_gets_a_fast_429_and_is_counted(limited):
    """`held` (max_queue_size 1) keeps its one request HOLD_MS in the batcher: a second one
    over REST is a 429 and over gRPC RESOURCE_EXHAUSTED, at once, both with the reason."""
    before = _rejected(limited, "held")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(limited.http.post, "/v2/models/held/infer", json=_digits_body())
        time.sleep(0.5)
        started = time.perf_counter()
        second = limited.http.post("/v2/models/held/infer", json=_digits_body())
        fast = time.perf_counter() - started
        [grpc_result] = grpc_calls(limited.grpc_target, [{
            "op": "infer", "model": "held",
            "inputs": [reference.v2_input("input", reference.digits(1))],
        }])
        assert first.result().status_code == 200
    assert second.status_code == 429, second.text
    assert fast < 0.5
    assert "max_queue_size" in second.json()["error"] and "'held'" in second.json()["error"]
    assert grpc_result["status"] == "StatusCode.RESOURCE_EXHAUSTED", grpc_result
    assert "max_queue_size" in grpc_result["error"]
    assert _rejected(limited, "held") - before == 2
    # and once the model is free again, it serves
    assert limited.http.post("/v2/models/held/infer", json=_digits_body()).status_code == 200


def _rejected(server: Server, model: str) -> float:
    samples = server.metrics().get("mlserver_npu_requests_total", {})
    return sum(
        value for labels, value in samples.items()
        if dict(labels)["model_name"] == model and dict(labels)["outcome"] == "rejected"
    )


def _p99(values: List[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def _overload(server: Server, model: str, clients: int, duration: float) -> dict:
    """`clients` closed-loop clients (one rejected backs off 200 ms, as a client retrying a 429 would) and
    health probes every 0.2 s, for `duration` seconds: latencies by status, probe times."""
    body = {"inputs": [{"name": "x", "shape": [1, SLOW_WIDTH], "datatype": "FP32",
                        "data": [0.1] * SLOW_WIDTH}]}
    for _ in range(3):
        assert server.http.post(f"/v2/models/{model}/infer", json=body).status_code == 200
    results: Dict[int, List[float]] = {200: [], 429: []}
    other: List[int] = []
    probes: List[float] = []
    deadline = time.perf_counter() + duration

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                status = http.post(f"/v2/models/{model}/infer", json=body).status_code
                if status not in results:
                    other.append(status)
                    continue
                results[status].append(time.perf_counter() - started)
                if status == 429:
                    time.sleep(0.2)

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=5) as http:
            while time.perf_counter() < deadline:
                for path in ("/v2/health/live", "/v2/health/ready"):
                    started = time.perf_counter()
                    assert http.get(path).status_code == 200
                    probes.append(time.perf_counter() - started)
                time.sleep(0.2)

    with ThreadPoolExecutor(clients + 1) as pool:
        futures = [pool.submit(client) for _ in range(clients)] + [pool.submit(probe)]
        for future in futures:
            future.result()
    assert not other, other
    accepted, rejected = results[200], results[429]
    return {
        "accepted": len(accepted), "accepted_p50": statistics.median(accepted),
        "accepted_p99": _p99(accepted), "rejected": len(rejected),
        "rejected_p99": _p99(rejected) if rejected else 0.0, "probe_max": max(probes),
    }


def test_overload_is_shed_fast_accepted_latency_stays_bounded_and_health_answers(limited):
    """16 closed-loop clients against `slow` (one request at a time, SLOW_QUEUE held, the
    running one included), then against the same model without a bound, 3 s each, with
    health probes meanwhile. With the bound, the excess is refused in a few ms, and an
    accepted request waits behind at most SLOW_QUEUE - 1 others: its p99 is well under the
    unbounded model's, where all 16 queue. Probes answer within 1 s throughout."""
    before = _rejected(limited, "slow")
    bounded = _overload(limited, "slow", 16, 3.0)
    unbounded = _overload(limited, "slow-unbounded", 16, 3.0)
    summary = f"bounded {bounded}, unbounded {unbounded}"
    print(summary)
    assert bounded["accepted"] >= 10 and bounded["rejected"] >= 10, summary
    assert bounded["rejected_p99"] < 0.25, summary
    # The medians: an accepted request waits behind SLOW_QUEUE - 1 others, against 15. (The
    # p99 of ~250 requests is a few stalls of the 2 shared cores: compared, it failed 2 in 5.)
    assert bounded["accepted_p50"] < 0.5 * unbounded["accepted_p50"], summary
    assert unbounded["rejected"] == 0, summary
    assert max(bounded["probe_max"], unbounded["probe_max"]) < 1.0, summary
    assert _rejected(limited, "slow") - before == bounded["rejected"]


# --- 4. paths confined to the model folder ---

@pytest.mark.parametrize("case, extra, uri, words", [
    ("passwd", {"postprocess": {"type": "classification", "labels": "/etc/passwd"}},
     "../digits/model.onnx", ["parameters.extra.postprocess.labels", "'/etc/passwd'",
                              "outside the model folder"]),
    ("symlink", {"postprocess": {"type": "classification", "labels": "labels.txt"}},
     "../digits/model.onnx", ["parameters.extra.postprocess.labels", "/etc/hostname"]),
    ("uri-up", {}, "../../../etc/model.onnx", ["parameters.uri", "outside the model folder"]),
])
def test_a_path_out_of_the_model_folder_is_a_load_error_naming_the_key(
    limited, case, extra, uri, words
):
    name = f"escape-{case}"
    folder = limited.repository / name
    write_model(folder, name, extra, uri=uri)
    if case == "symlink":
        os.symlink("/etc/hostname", folder / "labels.txt")
    message = limited.assert_load_fails(name, words)
    assert "root:" not in message
    assert limited.http.post("/v2/models/digits/infer", json=_digits_body()).status_code == 200


def test_a_pipeline_step_out_of_the_repository_is_a_load_error(limited):
    folder = limited.repository / "escape-pipeline"
    folder.mkdir()
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "escape-pipeline", "implementation": "mlserver_npu.Pipeline",
        "parameters": {"extra": {"steps": [{"name": "only", "model": "../../../../etc"}],
                                 "outputs": {"y": "only.outputs.y"}}},
    }))
    limited.assert_load_fails("escape-pipeline", ["step 'only': model", "outside the model folder"])


def test_allowed_paths_lets_the_operator_name_a_folder_outside(tmp_path, monkeypatch):
    """In-process: the resolver every postprocess gets its files through (stages.py)."""
    from mlserver.settings import ModelSettings

    from mlserver_npu.errors import ConfigurationError
    from mlserver_npu.stages import path_resolver

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "labels.txt").write_text("a\nb\n")
    folder = tmp_path / "repo" / "model"
    folder.mkdir(parents=True)
    (folder / "palette.txt").write_text("x")
    settings = ModelSettings(
        name="m", implementation="mlserver_npu.NPURuntime",
        parameters={"extra": {"postprocess": {"palette": str(shared / "labels.txt")}}},
    )
    settings._source = str(folder / "model-settings.json")
    assert path_resolver(settings)("palette.txt") == (folder / "palette.txt").resolve()
    with pytest.raises(ConfigurationError, match=r"parameters\.extra\.postprocess\.palette"):
        path_resolver(settings)(str(shared / "labels.txt"))
    monkeypatch.setenv("MLSERVER_NPU_ALLOWED_PATHS", str(shared))
    assert path_resolver(settings)(str(shared / "labels.txt")) == shared / "labels.txt"


# --- 4b. ONNX external data, checked by the plugin whatever the runtime does ---

WEIGHT = np.array([[1.5, -2.0, 3.25, 0.5]], np.float32)
REAL_SESSION = ort.InferenceSession  # the tests below replace it in the onnxruntime module


def _external_data_model(model_file: Path, location: str, data_file: Path) -> None:
    """y = x + w, with w's bytes in `data_file`, which the model names as `location`."""
    from onnx import external_data_helper

    tensor = numpy_helper.from_array(WEIGHT, "w")
    external_data_helper.set_external_data(tensor, location, 0, WEIGHT.nbytes)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model_file.parent.mkdir(parents=True, exist_ok=True)
    model_file.write_bytes(model.SerializeToString())
    data_file.parent.mkdir(parents=True, exist_ok=True)
    data_file.write_bytes(WEIGHT.tobytes())


def _permissive_session(path: str, **kwargs):
    """What onnxruntime 1.22.1 (which setup.py allows) does: read each external-data location
    wherever it points, `../secret.bin` included (checked by hand against that release)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            where = {e.key: e.value for e in tensor.external_data}["location"]
            tensor.raw_data = (Path(path).parent / where).read_bytes()
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
    return REAL_SESSION(model.SerializeToString(), **kwargs)


def _open_onnx(model_file: Path):
    import asyncio

    from mlserver_npu.backends.onnxruntime import OnnxRuntimeBackend, Options

    async def run():
        session = await OnnxRuntimeBackend().open(model_file, None, Options())
        return (await session.run({"x": np.zeros((1, 4), np.float32)}))["y"]

    return asyncio.run(run())


@pytest.mark.parametrize("location", ["../secret.bin", "/ABS/secret.bin", "link.bin"])
def test_external_data_outside_the_model_folder_is_refused_by_the_plugin(
    tmp_path, monkeypatch, location
):
    """With onnxruntime replaced by one that follows any location (as 1.22.1 does), the
    plugin still refuses: the runtime is never reached."""
    from mlserver_npu.backends import BackendError
    from mlserver_npu.backends import onnxruntime as backend

    secret = tmp_path / "secret.bin"
    folder = tmp_path / "model"
    folder.mkdir()
    if location == "link.bin":
        os.symlink(secret, folder / "link.bin")  # inside by name, outside once resolved
    location = location.replace("/ABS", str(tmp_path))
    _external_data_model(folder / "model.onnx", location, secret)
    monkeypatch.setattr(backend.ort, "InferenceSession", _permissive_session)
    # the stand-in does read outside: the refusal below is the plugin's
    np.testing.assert_array_equal(
        _permissive_session(str(folder / "model.onnx"))
        .run(["y"], {"x": np.zeros((1, 4), np.float32)})[0], WEIGHT,
    )
    with pytest.raises(BackendError, match="outside the folder of the model file"):
        _open_onnx(folder / "model.onnx")


def test_a_symlinked_model_finds_its_external_data_beside_its_real_file(tmp_path):
    """A model folder of symlinks (a cache's layout): the weights sit beside the real file,
    which the runtime is given; it serves x + w."""
    real = tmp_path / "store" / "model.onnx"
    _external_data_model(real, "model.onnx.data", real.parent / "model.onnx.data")
    served = tmp_path / "repo" / "m" / "model.onnx"
    served.parent.mkdir(parents=True)
    os.symlink(real, served)
    np.testing.assert_array_equal(_open_onnx(served), WEIGHT)


def test_openvino_reading_an_onnx_file_gets_the_same_check(tmp_path):
    import asyncio

    from mlserver_npu.backends import BackendError
    from mlserver_npu.backends.openvino import OpenVINOBackend, Options

    folder = tmp_path / "model"
    _external_data_model(folder / "model.onnx", "../secret.bin", tmp_path / "secret.bin")
    with pytest.raises(BackendError, match="outside the folder of the model file"):
        asyncio.run(OpenVINOBackend().open(folder / "model.onnx", "CPU", Options()))
