"""What a hand-written server does with onnxruntime and Pillow: shared by the FastAPI app and
the raw onnxruntime case, so both run exactly the same session settings and preprocessing."""
import io
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import onnxruntime as ort
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def open_session(model_path: Path, threads: int) -> ort.InferenceSession:
    """The thread settings mlserver-npu uses: `threads` intra-op threads, no spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def imagenet_preprocess(jpeg: bytes, size: int = 224, resize: int = 256) -> np.ndarray:
    """RGB, shorter side to 256, center crop 224, /255, ImageNet mean/std, NCHW float32."""
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    scale = resize / min(image.size)
    width, height = round(image.width * scale), round(image.height * scale)
    image = image.resize((width, height), Image.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image, np.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)[np.newaxis].astype(np.float32)


def top_k(scores: np.ndarray, labels: Sequence[str], k: int = 5) -> List[Tuple[str, float]]:
    """The k best (label, score) pairs of one row of class scores."""
    flat = scores.reshape(-1)
    best = np.argsort(flat)[::-1][:k]
    return [(labels[i], float(flat[i])) for i in best]


# --- detection, as Ultralytics' ONNX Runtime example (examples/YOLOv8-ONNXRuntime) has
# users write it: cv2 decode, letterbox, one session run, transpose, best class per anchor,
# cv2.dnn.NMSBoxes, boxes back to the image ------------------------------------------------


def letterbox(jpeg: bytes, size: int = 640) -> Tuple[np.ndarray, float, Tuple[float, float]]:
    """The image resized into size x size keeping its aspect ratio, centred, padded with
    114; NCHW float32 RGB /255; the ratio and the (left, top) padding to map boxes back."""
    import cv2

    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    ratio = min(size / height, size / width)
    inner_w, inner_h = int(round(width * ratio)), int(round(height * ratio))
    left, top = (size - inner_w) / 2, (size - inner_h) / 2
    resized = cv2.resize(image, (inner_w, inner_h), interpolation=cv2.INTER_LINEAR)
    canvas = cv2.copyMakeBorder(
        resized, int(round(top - 0.1)), int(round(top + 0.1)), int(round(left - 0.1)),
        int(round(left + 0.1)), cv2.BORDER_CONSTANT, value=(114, 114, 114),
    )
    tensor = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None]
    offset = (int(round(left - 0.1)), int(round(top - 0.1)))
    return tensor.astype(np.float32) / 255.0, ratio, offset


def yolov8_detections(output: np.ndarray, ratio: float, pad: Tuple[float, float],
                      confidence: float = 0.25, iou: float = 0.45) -> List[dict]:
    """[1, 4+C, N] -> [{"box": [x1, y1, x2, y2], "score", "class"}] in image pixels."""
    import cv2

    rows = output[0].T  # [N, 4+C]
    scores = rows[:, 4:].max(axis=1)
    keep = scores > confidence
    rows, scores = rows[keep], scores[keep]
    classes = rows[:, 4:].argmax(axis=1)
    xywh = rows[:, :4].copy()
    xywh[:, 0] = (xywh[:, 0] - xywh[:, 2] / 2 - pad[0]) / ratio
    xywh[:, 1] = (xywh[:, 1] - xywh[:, 3] / 2 - pad[1]) / ratio
    xywh[:, 2:] /= ratio
    kept = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(), scores.tolist(), classes.tolist(), confidence, iou
    )
    return [
        {"box": [float(x), float(y), float(x + w), float(y + h)], "score": float(scores[i]),
         "class": int(classes[i])}
        for i in np.asarray(kept, int).reshape(-1)
        for x, y, w, h in [xywh[i]]
    ]
