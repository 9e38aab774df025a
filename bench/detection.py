"""Where a detection request's time goes, and what its reply weighs against the raw head.

    python -m bench.detection [--requests 30] [--threads 1]

Serves the `detection` workload (a real YOLOv8n, letterbox 640, boxes out) from one
`mlserver start`, sends `--requests` sequential requests over REST and over gRPC, then reads
the server's `mlserver_npu_stage_seconds` sums: the `postprocess` stage (decode, NMS, mapping
back) against the `device` stage (the session run). It also times the same decode and NMS
in-process on a YOLOv8n-sized head ([1, 84, 8400], 80 classes, about 300 candidates above
the threshold as a trained model gives on a busy photo), and prints the reply sizes against the
raw head's as REST JSON and as binary.
"""
import argparse
import json
import struct
import tempfile
import time
from pathlib import Path
from typing import Dict

import httpx
import numpy as np

from .servers import start_mlserver
from .workloads import TARGETS, WORKLOADS


def stage_sums(metrics_port: int, model: str) -> Dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
    sums: Dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mlserver_npu_stage_seconds_sum" and sample.labels.get(
                "model_name"
            ) == model:
                sums[sample.labels["stage"]] = sample.value
    return sums


def grpc_reply_bytes(target: str, model: str, count: int) -> int:
    import grpc
    from mlserver.grpc import dataplane_pb2 as pb
    from mlserver.grpc import dataplane_pb2_grpc

    jpeg = WORKLOADS["detection"].jpeg()
    tensor = pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])
    tensor.parameters["content_type"].string_param = "image"
    request = pb.ModelInferRequest(
        model_name=model, inputs=[tensor],
        raw_input_contents=[struct.pack("<I", len(jpeg)) + jpeg],
    )
    with grpc.insecure_channel(target) as channel:
        stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(count):
            reply = stub.ModelInfer(request)
    return reply.ByteSize()


def in_process_decode(repeats: int = 20) -> Dict[str, float]:
    """ms per image of the server's decode + NMS on a [1, 84, 8400] head."""
    from mlserver_npu.backends import TensorSpec
    from mlserver_npu.processing.decoders import create_decoder
    from mlserver_npu.processing.detection import nms

    rng = np.random.default_rng(0)
    head = np.zeros((1, 84, 8400), np.float32)
    head[0, :2] = rng.uniform(0, 640, (2, 8400))
    head[0, 2:4] = rng.uniform(8, 200, (2, 8400))
    head[0, 4:] = rng.uniform(0, 0.1, (80, 8400))
    anchors, classes = rng.integers(0, 8400, 300), rng.integers(0, 80, 300)
    head[0, 4 + classes, anchors] = rng.uniform(0.25, 1, 300)  # ~300 candidates, as trained
    spec = TensorSpec("output0", np.dtype(np.float32), [1, 84, 8400])
    decoder = create_decoder("yolov8", [spec])
    start = time.perf_counter()
    for _ in range(repeats):
        (row,) = decoder({"output0": head}, (640, 640), 0.25)
        kept = nms(row, 0.45, False, None)
    seconds = (time.perf_counter() - start) / repeats
    return {"ms": 1000 * seconds, "candidates": len(row), "kept": len(kept)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    workload = WORKLOADS["detection"]
    pairs = [(workload, TARGETS["npu-rest"])]
    with tempfile.TemporaryDirectory() as work:
        server = start_mlserver(Path(work), pairs, args.threads, (8, 0.005))
        try:
            server.wait_ready()
            body = json.dumps({"inputs": [workload.v2_input()]}).encode()
            for _ in range(args.requests):
                response = server.http.post(
                    "/v2/models/detection/infer", content=body,
                    headers={"content-type": "application/json"},
                )
                response.raise_for_status()
            rest_bytes = len(response.content)
            grpc_bytes = grpc_reply_bytes(server.grpc_target, "detection", args.requests)
            sums = stage_sums(server.metrics_port, "detection")
        finally:
            server.stop()
    head = np.random.default_rng(0).random((1, 22, 8400), dtype=np.float32)
    raw_json = len(json.dumps({"data": head.ravel().tolist()}).encode())
    found = response.json()["outputs"]
    count = next(o for o in found if o["name"] == "num_detections")["data"][0]
    decode = in_process_decode()
    print(f"requests: {2 * args.requests} (REST then gRPC), {count} boxes per reply")
    for stage in ("decode", "preprocess", "queue", "device", "postprocess", "encode"):
        if stage in sums:
            print(f"  {stage:12s} {1000 * sums[stage] / (2 * args.requests):8.2f} ms/request")
    if sums.get("device"):
        print(f"postprocess / device: {sums.get('postprocess', 0) / sums['device']:.3f}")
    print(f"decode + NMS of a [1, 84, 8400] head in-process: {decode['ms']:.2f} ms "
          f"({decode['candidates']} candidates, {decode['kept']} kept)")
    print(f"reply: REST JSON {rest_bytes} B, gRPC {grpc_bytes} B; the raw [1, 22, 8400] head: "
          f"{head.nbytes} B binary, {raw_json} B as JSON numbers; a YOLOv8n-COCO [1, 84, 8400]: "
          f"{84 * 8400 * 4} B binary")


if __name__ == "__main__":
    main()
