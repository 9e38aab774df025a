"""What is benchmarked: the models (workloads) and the servers under test (targets).

A workload is a model plus the one request every client sends for it; a target is a way of
serving it (raw onnxruntime, mlserver-npu over REST or gRPC, ...). Adding a model or a
server is one entry in WORKLOADS or TARGETS.
"""
import base64
import functools
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from . import models

REPO = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO / "model-repository"


def _digits_sample() -> np.ndarray:
    # Pixel intensities 0..16, like scikit-learn's digits.
    return np.random.default_rng(0).integers(0, 17, (1, 64)).astype(np.float32)


def _squeezenet_sample() -> np.ndarray:
    return np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)


def _large_sample() -> np.ndarray:
    return np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)


@functools.lru_cache(maxsize=None)
def sample_jpeg(width: int = 640, height: int = 480) -> bytes:
    """A deterministic photo-sized JPEG (smooth gradients and a few edges, ~30 KB)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 128 + 100 * np.sin(x / 40) * np.cos(y / 55)
    green = 255 * x / width
    blue = np.where((x // 80 + y // 80) % 2 == 0, 200, 60) + 0 * y
    pixels = np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@functools.lru_cache(maxsize=None)
def sample_photo(width: int = 640, height: int = 480) -> bytes:
    """A 640x480 JPEG photograph with a person in it (matplotlib's Grace Hopper, cropped to
    4:3), so that a detector has something to find."""
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = Image.open(path).convert("RGB")  # 512 x 600
    crop = image.crop((0, 60, 512, 60 + 384)).resize((width, height), Image.BICUBIC)
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass(frozen=True)
class SimulatedDevice:
    """An NPU compiled for a static `batch`, `pes` processing elements each taking `run_ms`
    per run whatever the rows (bench/simulated_npu)."""

    batch: int
    run_ms: float
    pes: int

    @property
    def capacity(self) -> float:
        """Rows per second the device can compute: K x batch / time per run."""
        return self.pes * self.batch * 1000 / self.run_ms

    def extra(self) -> Dict[str, Any]:
        devices = ",".join(f"npu:{pe // 2}:{pe % 2}" for pe in range(self.pes))
        return {"backend": "furiosa", "device": devices, "options": {"batch_size": self.batch}}


@dataclass(frozen=True)
class Workload:
    """One model and the single-item request every client sends for it."""

    name: str
    folder: str  # under model-repository/, holding model.onnx
    input_name: str
    description: str
    sample: Optional[Callable[[], np.ndarray]] = None  # tensor workloads
    image: bool = False  # JPEG bytes in, top-5 labels out
    top_k: int = 5
    device: Optional[SimulatedDevice] = None  # the model runs on a simulated NPU
    detection: bool = False  # JPEG bytes in (image), boxes out
    fetch: Optional[Callable[[], Path]] = None  # the model file, when not in the repository
    make: Optional[Callable[[], Path]] = None  # builds the model (bench/models.py), else folder

    @property
    def model_file(self) -> Path:
        if self.fetch is not None:
            return self.fetch()
        return self.make() if self.make else MODEL_REPOSITORY / self.folder / "model.onnx"

    def jpeg(self) -> bytes:
        """The image every client sends, for image workloads."""
        return sample_photo() if self.detection else sample_jpeg()

    def v2_input(self) -> Dict[str, Any]:
        """The request input as V2 JSON (REST)."""
        if self.image:
            return {
                "name": self.input_name,
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "image"},
                "data": [base64.b64encode(self.jpeg()).decode()],  # JSON carries base64
            }
        array = self.sample()
        return {
            "name": self.input_name,
            "datatype": "FP32",
            "shape": list(array.shape),
            "data": array.ravel().tolist(),
        }

    def v2_body(self) -> bytes:
        return json.dumps({"inputs": [self.v2_input()]}).encode()

    def v2_binary(self) -> Tuple[bytes, int]:
        """The request in Triton's binary extension, outputs asked as binary, as
        tritonclient.http sends it by default: (body, JSON header length)."""
        tensor = {k: v for k, v in self.v2_input().items() if k != "data"}
        if self.image:
            jpeg = sample_jpeg()
            raw = len(jpeg).to_bytes(4, "little") + jpeg
        else:
            raw = self.sample().tobytes()
        tensor["parameters"] = {**tensor.get("parameters", {}), "binary_data_size": len(raw)}
        header = json.dumps({"inputs": [tensor],
                             "parameters": {"binary_data_output": True}}).encode()
        return header + raw, len(header)

    def npu_extra(self, labels: Path) -> Dict[str, Any]:
        """`parameters.extra` keys this workload adds to the model's own (threads aside)."""
        if self.device is not None:
            return self.device.extra()
        if self.detection:
            return DETECTION_EXTRA
        if not self.image:
            return {}
        return {
            "preprocess": "imagenet",
            "postprocess": {"type": "classification", "top_k": self.top_k, "labels": labels.name},
        }


@functools.lru_cache(maxsize=None)
def yolov8n() -> Path:
    """A real YOLOv8n (nudenet 3.4.2's detector, 18 classes, dynamic input size; AGPL-3.0,
    so fetched from PyPI into the test cache, never committed): at 640x640 its output is
    [1, 22, 8400]."""
    spec = importlib.util.spec_from_file_location(
        "mlserver_npu_tests_wheels", REPO / "tests" / "wheels.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fetch_wheel(module.NUDENET) / "nudenet" / "320n.onnx"


# What bench/baseline.py's hand-written detector does, as model-settings: letterbox 640
# (OpenCV INTER_LINEAR, 114), /255, YOLOv8 decode, NMS per class at 0.45 above 0.25.
DETECTION_EXTRA: Dict[str, Any] = {
    "preprocess": [
        {"op": "letterbox", "size": [640, 640], "resample": "cv2_linear"},
        {"op": "scale", "divisor": 255},
    ],
    "postprocess": {
        "type": "detection", "decoder": "yolov8", "confidence_threshold": 0.25,
        "iou_threshold": 0.45,
    },
}

WORKLOADS: Dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("digits", "digits", "input", "tiny: logistic regression, FP32 [1, 64]",
                 sample=_digits_sample),
        Workload("squeezenet", "squeezenet", "data_0",
                 "compute-bound: SqueezeNet 1.0, FP32 [1, 3, 224, 224]",
                 sample=_squeezenet_sample),
        Workload("image", "squeezenet", "data_0",
                 "image path: a 640x480 JPEG in, imagenet preprocessing, top-5 labels out",
                 image=True),
        Workload("detection", "", "images",
                 "detection: a 640x480 JPEG photo in, letterbox 640, a real YOLOv8n, boxes out",
                 image=True, detection=True, fetch=yolov8n),
        Workload("large", "", "x",
                 "large tensors: a 3x3 conv over FP32 [1, 3, 640, 640] (PP-OCR-sized), the "
                 "same size out: 1.2 M floats each way (bench/models.py)",
                 sample=_large_sample, make=models.large),
        Workload("resnet50", "", "data",
                 "compute-bound at full size: ResNet-50 v1 with seeded random weights "
                 "(bench/models.py), FP32 [1, 3, 224, 224]",
                 sample=_squeezenet_sample, make=models.resnet50),
        Workload("npu-sim", "digits", "input",
                 "simulated NPU: batch 8, 16 ms per run, 2 PEs = 1,000 rows/s; FP32 [1, 64]",
                 sample=_digits_sample, device=SimulatedDevice(batch=8, run_ms=16, pes=2)),
        Workload("npu-sim-fast", "digits", "input",
                 "fast simulated NPU: batch 8, 1 ms per run, 2 PEs = 16,000 rows/s",
                 sample=_digits_sample, device=SimulatedDevice(batch=8, run_ms=1, pes=2)),
    ]
}


@dataclass(frozen=True)
class Target:
    """A way of serving a workload: which server, which model variant, which protocol."""

    name: str
    server: str  # "raw" (in the load process), "mlserver" or "fastapi"
    protocol: str  # "in-process", "rest", "grpc", "json", "upload"
    variant: str = ""  # mlserver model variant: "" (mlserver-npu), "batching", "echo"
    description: str = ""

    def model_name(self, workload: Workload) -> str:
        return f"{workload.name}-{self.variant}" if self.variant else workload.name

    def serves(self, workload: Workload) -> bool:
        """A simulated NPU exists only behind mlserver-npu (no raw, FastAPI or echo case)."""
        if workload.make is not None and self.server == "fastapi":
            return False  # the FastAPI app serves the model-repository's models only
        return workload.device is None or (self.server == "mlserver" and self.variant != "echo")

    def protocol_for(self, workload: Workload) -> str:
        if self.server == "fastapi":
            return "upload" if workload.image else "json"
        return self.protocol


TARGETS: Dict[str, Target] = {
    t.name: t
    for t in [
        Target("raw", "raw", "in-process", description=(
            "onnxruntime in one process: N asyncio tasks over asyncio.to_thread(session.run)"
        )),
        Target("npu-rest", "mlserver", "rest", description="mlserver-npu, V2 REST JSON"),
        Target("npu-rest-binary", "mlserver", "rest-binary", description=(
            "mlserver-npu, V2 REST with Triton's binary tensor extension, as tritonclient.http "
            "sends by default (binary inputs, binary_data_output)")),
        Target("npu-rest-mlserver", "mlserver-plain", "rest", description=(
            "mlserver-npu with its REST boundary off (MLSERVER_NPU_REST_BOUNDARY=0): "
            "MLServer's own JSON route, on httptools")),
        Target("npu-rest-before", "mlserver-before", "rest", description=(
            "the REST path before issue 19: MLServer's own JSON route (the boundary off) on "
            "uvicorn's h11, as before httptools was a dependency")),
        Target("npu-grpc", "mlserver", "grpc", description="mlserver-npu, V2 gRPC raw contents"),
        Target("npu-batch-rest", "mlserver", "rest", "batching",
               "mlserver-npu with adaptive batching, REST"),
        Target("npu-batch-grpc", "mlserver", "grpc", "batching",
               "mlserver-npu with adaptive batching, gRPC"),
        Target("npu-batcher-rest", "mlserver", "rest", "batcher",
               "mlserver-npu with its own batcher (parameters.extra.batching), REST"),
        Target("npu-batcher-grpc", "mlserver", "grpc", "batcher",
               "mlserver-npu with its own batcher (parameters.extra.batching), gRPC"),
        Target("echo-rest", "mlserver", "rest", "echo",
               "MLServer's floor: an echo MLModel, REST"),
        Target("echo-grpc", "mlserver", "grpc", "echo",
               "MLServer's floor: an echo MLModel, gRPC"),
        Target("fastapi", "fastapi", "http", description=(
            "a plain FastAPI + onnxruntime app under uvicorn (JSON tensors, UploadFile images)"
        )),
    ]
}


@dataclass(frozen=True)
class Goal:
    """A ratio of two measured points that should reach `threshold` (None: report only)."""

    label: str
    workload: str
    concurrency: int
    numerator: str  # target names
    denominator: str  # or "capacity": the workload's simulated device capacity
    threshold: Optional[float]


GOALS: List[Goal] = [
    Goal("tiny @16: mlserver-npu / echo floor (REST)", "digits", 16, "npu-rest", "echo-rest", 0.9),
    Goal("tiny @16: mlserver-npu / echo floor (gRPC)", "digits", 16, "npu-grpc", "echo-grpc", 0.9),
    Goal("squeezenet @4: mlserver-npu gRPC / raw onnxruntime", "squeezenet", 4,
         "npu-grpc", "raw", 0.85),
    Goal("image @16: mlserver-npu REST / FastAPI", "image", 16, "npu-rest", "fastapi", 1.0),
    Goal("image @16: mlserver-npu gRPC / FastAPI", "image", 16, "npu-grpc", "fastapi", 1.0),
    Goal("detection @16: mlserver-npu REST / FastAPI", "detection", 16, "npu-rest", "fastapi",
         1.0),
    Goal("detection @16: mlserver-npu gRPC / FastAPI", "detection", 16, "npu-grpc", "fastapi",
         1.0),
    Goal("detection @4: mlserver-npu gRPC / raw onnxruntime + the same postprocess",
         "detection", 4, "npu-grpc", "raw", 0.8),
    Goal("squeezenet @8: REST binary / gRPC", "squeezenet", 8, "npu-rest-binary", "npu-grpc",
         0.9),
    Goal("squeezenet @8: REST JSON / REST JSON before issue 19 (MLServer's route, h11)",
         "squeezenet", 8, "npu-rest", "npu-rest-before", 2.0),
    Goal("squeezenet @8: REST JSON / MLServer's route today (boundary off, httptools)",
         "squeezenet", 8, "npu-rest", "npu-rest-mlserver", None),
    Goal("resnet50 @8: mlserver-npu gRPC / raw onnxruntime", "resnet50", 8, "npu-grpc", "raw",
         0.95),
    Goal("1.2 M floats @1: REST binary / gRPC (>= 1/1.2)", "large", 1, "npu-rest-binary",
         "npu-grpc", 1 / 1.2),
    Goal("1.2 M floats @1: REST JSON / gRPC (>= 1/3)", "large", 1, "npu-rest", "npu-grpc",
         1 / 3),
    Goal("1.2 M floats @1: REST JSON / MLServer's route today (boundary off, httptools)",
         "large", 1, "npu-rest", "npu-rest-mlserver", None),
    Goal("batching gain, squeezenet @16 gRPC", "squeezenet", 16,
         "npu-batch-grpc", "npu-grpc", None),
    Goal("batching gain, squeezenet @16 REST", "squeezenet", 16,
         "npu-batch-rest", "npu-rest", None),
    Goal("simulated NPU @64 gRPC, our batcher: fraction of device capacity", "npu-sim", 64,
         "npu-batcher-grpc", "capacity", 0.85),
    Goal("simulated NPU @64 REST, our batcher: fraction of device capacity", "npu-sim", 64,
         "npu-batcher-rest", "capacity", None),
    Goal("simulated NPU @64 gRPC, MLServer's batching: fraction of device capacity", "npu-sim",
         64, "npu-batch-grpc", "capacity", None),
]


def plan(workloads: List[str], targets: List[str]) -> List[Tuple[Workload, Target]]:
    """Every (workload, target) pair to measure, in a stable order."""
    pairs = [(WORKLOADS[w], TARGETS[t]) for w in workloads for t in targets]
    return [(workload, target) for workload, target in pairs if target.serves(workload)]
