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
