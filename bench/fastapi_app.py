"""The hand-written alternative: a plain FastAPI + onnxruntime app, as furiosa-serving's
README and most tutorials build one (an UploadFile endpoint for images, JSON for tensors).

    BENCH_FASTAPI_MODELS='{"digits": {"path": ".../model.onnx", "threads": 1}}' \
        uvicorn bench.fastapi_app:app --port 8000 --no-access-log

Each model entry: `path`, `threads` (intra-op threads, spinning off, like mlserver-npu) and,
for image classification, `labels` (a text file, one label a line). `/detect` runs a YOLOv8
detector as Ultralytics' ONNX Runtime example does (bench/baseline.py). Inference and
preprocessing run in a worker thread so the event loop keeps accepting requests.
"""
import asyncio
import json
import os
from typing import Dict, List

import numpy as np
from fastapi import FastAPI, File, HTTPException, UploadFile
from pydantic import BaseModel

from bench.baseline import (
    imagenet_preprocess, letterbox, open_session, top_k, yolov8_detections,
)


class Tensor(BaseModel):
    name: str
    shape: List[int]
    datatype: str = "FP32"
    data: List[float]


class InferRequest(BaseModel):
    inputs: List[Tensor]


class Model:
    def __init__(self, path: str, threads: int = 1, labels: str = ""):
        self.session = open_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.labels = open(labels).read().splitlines() if labels else []

    def infer(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def classify(self, jpeg: bytes, k: int) -> List[Dict]:
        (scores,) = self.session.run(self.output_names[:1], {self.input_name: imagenet_preprocess(jpeg)})
        return [{"label": label, "score": score} for label, score in top_k(scores, self.labels, k)]

    def detect(self, jpeg: bytes) -> List[Dict]:
        tensor, ratio, pad = letterbox(jpeg)
        (output,) = self.session.run(self.output_names[:1], {self.input_name: tensor})
        return yolov8_detections(output, ratio, pad)


MODELS = {
    name: Model(**config)
    for name, config in json.loads(os.environ.get("BENCH_FASTAPI_MODELS", "{}")).items()
}
app = FastAPI(title="plain FastAPI + onnxruntime")


def _model(name: str) -> Model:
    if name not in MODELS:
        raise HTTPException(404, f"unknown model {name}")
    return MODELS[name]


@app.get("/health")
async def health() -> Dict:
    return {"models": sorted(MODELS)}


@app.post("/models/{name}/infer")
async def infer(name: str, request: InferRequest) -> Dict:
    model = _model(name)
    feeds = {
        tensor.name: np.asarray(tensor.data, np.float32).reshape(tensor.shape)
        for tensor in request.inputs
    }
    outputs = await asyncio.to_thread(model.infer, feeds)
    return {
        "outputs": [
            {"name": key, "shape": list(value.shape), "data": value.ravel().tolist()}
            for key, value in outputs.items()
        ]
    }


@app.post("/models/{name}/classify")
async def classify(name: str, image: UploadFile = File(...), k: int = 5) -> Dict:
    model = _model(name)
    jpeg = await image.read()
    return {"predictions": await asyncio.to_thread(model.classify, jpeg, k)}


@app.post("/models/{name}/detect")
async def detect(name: str, image: UploadFile = File(...)) -> Dict:
    model = _model(name)
    jpeg = await image.read()
    return {"detections": await asyncio.to_thread(model.detect, jpeg)}
