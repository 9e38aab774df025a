"""The OCR workload: an image of ten text lines in, its text out (`python -m bench.ocr`).

Targets, side by side in one run, measured in short windows that alternate between them (on a
machine whose load drifts, all of them see the drift alike):

* `rapidocr` — rapidocr-onnxruntime in this process, the engine called from N threads: the
  limit on this CPU (its sessions use onnxruntime's default threads);
* `fastapi` — rapidocr wrapped in a FastAPI upload endpoint under uvicorn
  (bench/ocr_fastapi.py): what users write;
* `npu-rest`, `npu-grpc` — `model-repository/ocr` as shipped, through `mlserver start`;
* `npu-batcher-grpc` — the same with the plugin's batcher on the detector and the
  recognizer (`--batch` rows, 5 ms), so the crops of concurrent requests share runs.

rapidocr-onnxruntime is fetched as a wheel without its dependencies (it declares opencv-python)
into the tests' cache (tests/ocr_reference.py), as the tests do.

    python -m bench.ocr --rounds 3 --seconds 10 --out bench/ocr.json
"""
import argparse
import asyncio
import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Tuple

import httpx

from .load import HttpClient, measure
from .servers import MLServer, free_port, terminate, wait_until_ready
from .workloads import MODEL_REPOSITORY, REPO

IMAGE = REPO / "examples" / "images" / "ocr-page.png"
LINES = 10  # what the page holds, checked on every target's first answer

# (concurrency, targets); the first target is the one the others are compared with.
CASES: List[Tuple[int, Tuple[str, ...]]] = [
    (1, ("npu-grpc", "rapidocr")),
    (4, ("npu-grpc", "rapidocr", "npu-rest")),
    (16, ("npu-grpc", "fastapi", "npu-batcher-grpc", "npu-rest")),
]
GOALS = [  # (concurrency, numerator, denominator, threshold), from issue 18
    (4, "npu-grpc", "rapidocr", 0.85),
    (16, "npu-grpc", "fastapi", 1.2),
]


def _reference():
    sys.path.insert(0, str(REPO / "tests"))
    import ocr_reference

    return ocr_reference


class RapidClient:
    """rapidocr in this process: each call in a worker thread."""

    def __init__(self, data: bytes):
        self._engine = _reference().rapidocr()
        self._data = data

    def caller(self, worker: int) -> Callable[[], Awaitable[Any]]:
        return self._call

    async def _call(self) -> Any:
        return await asyncio.to_thread(self._engine, self._data)

    async def probe(self) -> List[str]:
        result, _ = await self._call()
        return [line[1] for line in result]

    async def aclose(self) -> None:
        pass


class OcrGrpcClient:
    """ModelInfer through MLServer's own stubs: the PNG as a raw BYTES tensor."""

    def __init__(self, target: str, model: str, data: bytes):
        import grpc
        from mlserver.grpc import dataplane_pb2 as pb
        from mlserver.grpc import dataplane_pb2_grpc

        self._channel = grpc.aio.insecure_channel(target)
        self._stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        tensor = pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
        tensor.parameters["content_type"].string_param = "image"
        self._request = pb.ModelInferRequest(
            model_name=model, inputs=[tensor],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="text")],
            raw_input_contents=[struct.pack("<I", len(data)) + data],
        )

    def caller(self, worker: int) -> Callable[[], Awaitable[Any]]:
        return self._call

    async def _call(self) -> Any:
        return await self._stub.ModelInfer(self._request)

    async def probe(self) -> List[str]:
        response = await self._call()
        raw = response.raw_output_contents[0] if response.raw_output_contents else b""
        texts, offset = [], 0
        while offset < len(raw):
            (size,) = struct.unpack_from("<I", raw, offset)
            texts.append(raw[offset + 4 : offset + 4 + size].decode())
            offset += 4 + size
        return texts or [t.decode() for t in response.outputs[0].contents.bytes_contents]

    async def aclose(self) -> None:
        await self._channel.close()


def _repository(root: Path, batch: int) -> Path:
    """The shipped OCR folders, and `ocr-batched`: the same with the plugin's batcher."""
    repository = root / "model-repository"
    repository.mkdir(parents=True)
    for name in ("ocr", "ocr-det", "ocr-rec", "ocr-cls"):
        shutil.copytree(MODEL_REPOSITORY / name, repository / name)
    shutil.copy(MODEL_REPOSITORY / "settings.json", repository / "settings.json")
    for name in ("ocr-det", "ocr-rec"):
        settings = json.loads((repository / name / "model-settings.json").read_text())
        settings["name"] = f"{name}-batched"
        settings["parameters"]["uri"] = f"../{name}/model.onnx"
        settings["parameters"]["extra"]["batching"] = {"max_batch_size": batch, "max_delay_ms": 5}
        (repository / f"{name}-batched").mkdir()
        (repository / f"{name}-batched" / "model-settings.json").write_text(json.dumps(settings))
    pipeline = json.loads((repository / "ocr" / "model-settings.json").read_text())
    pipeline["name"] = "ocr-batched"
    for step in pipeline["parameters"]["extra"]["steps"]:
        if step["model"] in ("../ocr-det", "../ocr-rec"):
            step["model"] += "-batched"
    (repository / "ocr-batched").mkdir()
    (repository / "ocr-batched" / "model-settings.json").write_text(json.dumps(pipeline))
    return repository


class FastAPIOcr:
    def __init__(self, root: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "fastapi-ocr.log"
        self._log = open(self.log_path, "wb")
        path = os.pathsep.join([str(REPO), str(_reference().rapidocr_package())])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.ocr_fastapi:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log", "--log-level", "warning"],
            cwd=root, env=dict(os.environ, PYTHONPATH=path), stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until_ready(self.process, lambda: httpx.get(f"{self.url}/health").status_code == 200,
                         self.log_path.read_text, "uvicorn", 120)

    def stop(self) -> None:
        terminate(self.process)
        self._log.close()


def _client(name: str, server: MLServer, fastapi: FastAPIOcr, data: bytes):
    """The client of target `name`, and the PID whose CPU it uses."""
    if name == "rapidocr":
        return RapidClient(data), os.getpid()
    if name == "fastapi":
        client = HttpClient(f"{fastapi.url}/ocr", files={"image": ("page.png", data, "image/png")})
        return client, fastapi.process.pid
    model = "ocr-batched" if "batcher" in name else "ocr"
    if "grpc" in name:
        return OcrGrpcClient(server.grpc_target, model, data), server.process.pid
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "parameters": {"content_type": "image"},
                        "data": [base64.b64encode(data).decode()]}],
            "outputs": [{"name": "text"}]}
    client = HttpClient(f"{server.url}/v2/models/{model}/infer", content=json.dumps(body),
                        headers={"content-type": "application/json"})
    return client, server.process.pid


async def _texts(name: str, client: Any) -> List[str]:
    first = await client.probe()
    if isinstance(first, list):
        return first
    if name == "fastapi":
        return [line["text"] for line in first["lines"]]
    return next(o["data"] for o in first["outputs"] if o["name"] == "text")


async def _case(concurrency, targets, server, fastapi, data, rounds, seconds):
    clients = {name: _client(name, server, fastapi, data) for name in targets}
    totals = {name: {"requests": 0, "seconds": 0.0, "cpu": 0.0, "errors": 0, "p50": []}
              for name in targets}
    try:
        answers = {name: await _texts(name, client) for name, (client, _) in clients.items()}
        for name, texts in answers.items():
            if len(texts) != LINES or texts != answers["rapidocr" if "rapidocr" in answers
                                                       else targets[0]]:
                print(f"warning: {name} read {texts}", flush=True)
        for _ in range(rounds):
            for name, (client, pid) in clients.items():
                point = await measure(client, concurrency, 2.0, seconds, pid)
                total = totals[name]
                total["requests"] += point["requests"]
                total["seconds"] += point["seconds"]
                total["cpu"] += (point["server_cpu_ms"] or 0) * point["requests"]
                total["errors"] += point["errors"]
                if point["p50_ms"] is not None:
                    total["p50"].append(point["p50_ms"])
    finally:
        for client, _ in clients.values():
            await client.aclose()
    rows = []
    for name, total in totals.items():
        done = total["requests"]
        rows.append({
            "concurrency": concurrency, "target": name, "rps": done / total["seconds"],
            "p50_ms": sorted(total["p50"])[len(total["p50"]) // 2] if total["p50"] else None,
            "cpu_ms": total["cpu"] / done if done else None, "errors": total["errors"],
        })
    return rows


def _table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| conc | target | req/s | p50 ms | CPU ms/req | errors |",
             "|--:|---|--:|--:|--:|--:|"]
    for r in rows:
        cpu = f"{r['cpu_ms']:.0f}" if r["cpu_ms"] is not None else "-"
        p50 = f"{r['p50_ms']:.0f}" if r["p50_ms"] is not None else "-"
        lines.append(f"| {r['concurrency']} | {r['target']} | {r['rps']:.2f} | {p50} | {cpu} | "
                     f"{r['errors']} |")
    return "\n".join(lines)


def _goals(rows: List[Dict[str, Any]]) -> str:
    by = {(r["concurrency"], r["target"]): r["rps"] for r in rows}
    lines = ["| goal | ratio | threshold | met |", "|---|--:|--:|---|"]
    for concurrency, top, bottom, threshold in GOALS:
        if (concurrency, top) in by and by.get((concurrency, bottom)):
            ratio = by[(concurrency, top)] / by[(concurrency, bottom)]
            lines.append(f"| @{concurrency}: {top} / {bottom} | {ratio:.2f}x | {threshold}x | "
                         f"{'yes' if ratio >= threshold else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ocr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per window")
    parser.add_argument("--batch", type=int, default=16, help="the batcher's max_batch_size")
    parser.add_argument("--concurrency", default="1,4,16", help="which cases to run")
    parser.add_argument("--out", type=Path, help="rows as JSON")
    args = parser.parse_args()
    wanted = {int(c) for c in args.concurrency.split(",")}
    data = IMAGE.read_bytes()
    with tempfile.TemporaryDirectory(prefix="mlserver-npu-ocr-bench-") as tmp:
        root = Path(tmp)
        server = MLServer.start(_repository(root, args.batch), root)
        fastapi = FastAPIOcr(root)
        try:
            rows = []
            for concurrency, targets in CASES:
                if concurrency in wanted:
                    rows += asyncio.run(_case(concurrency, targets, server, fastapi, data,
                                              args.rounds, args.seconds))
                    print(_table(rows[-len(targets):]), flush=True)
        finally:
            server.stop()
            fastapi.stop()
    print(_table(rows))
    print(_goals(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
