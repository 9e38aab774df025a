"""Real pretrained detectors and segmenters from PyPI wheels, their packages' own results, and
the test images (from packages installed here: matplotlib's photograph of Grace Hopper, and
documents drawn with OpenCV).

Each `*_reference` runs the package's own pipeline on encoded image bytes, in a child process
when the package patches global state (MediaPipe), and returns plain arrays.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import matplotlib.cbook
import numpy as np
from PIL import Image

from wheels import MEDIAPIPE, NUDENET, RAPID_LAYOUT, on_path, wheel


def encode(image: np.ndarray, fmt: str = ".png") -> bytes:
    """An RGB array as an encoded file."""
    ok, data = cv2.imencode(fmt, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def grace_hopper() -> np.ndarray:
    """RGB [600, 512, 3]: a portrait, one face."""
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return np.asarray(Image.open(path).convert("RGB"))


def face_images() -> List[bytes]:
    """Differently sized images of a face: portrait, landscape and small. Their longer sides
    are 640 and 320 and their other sides even, so that a 320x320 letterbox scales them by
    exactly 1/2 or 1: resizing then padding gives the very pixels of padding then resizing
    (what nudenet does), and the comparisons test the decode rather than resampling."""
    photo = grace_hopper()
    landscape = np.ascontiguousarray(photo[40:440, 0:512])
    return [
        encode(cv2.resize(photo, (560, 640), interpolation=cv2.INTER_AREA), ".jpg"),
        encode(cv2.resize(landscape, (640, 500), interpolation=cv2.INTER_AREA)),
        encode(cv2.resize(photo, (280, 320), interpolation=cv2.INTER_AREA)),
    ]


def document(width: int = 760, height: int = 1000, seed: int = 0) -> np.ndarray:
    """RGB page: a title, paragraphs of text and a ruled table, drawn with OpenCV."""
    rng = np.random.default_rng(seed)
    page = np.full((height, width, 3), 255, np.uint8)
    scale = width / 760
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(page, "A Title Of The Page", (int(60 * scale), int(90 * scale)), font,
                1.6 * scale, (0, 0, 0), max(1, int(3 * scale)))
    y = int(160 * scale)
    for line in range(14):
        words = " ".join("word" * int(rng.integers(1, 3)) for _ in range(6))
        origin = (int(60 * scale), y)
        cv2.putText(page, f"{words} {line}", origin, font, 0.7 * scale, (0, 0, 0), 1)
        y += int(30 * scale)
    top, left, right = int(650 * scale), int(80 * scale), int(680 * scale)
    bottom = min(int(900 * scale), height - 10)
    cv2.rectangle(page, (left, top), (right, bottom), (0, 0, 0), 2)
    for row in range(1, 5):
        y = top + row * (bottom - top) // 5
        cv2.line(page, (left, y), (right, y), (0, 0, 0), 1)
    for column in range(1, 4):
        x = left + column * (right - left) // 4
        cv2.line(page, (x, top), (x, bottom), (0, 0, 0), 1)
    return page


def document_images() -> List[bytes]:
    return [encode(document()), encode(document(600, 820, 1)), encode(document(900, 1180, 2))]


# --- the packages' own pipelines ------------------------------------------------------


def rapid_layout_reference(images: List[bytes]) -> List[Dict[str, np.ndarray]]:
    """rapid-layout 0.2.1's RapidLayout (PP-PicoDet CDLA layout model): boxes x1, y1, x2, y2
    in image pixels, scores, class names; its defaults but confidence 0.5, IoU 0.5."""
    root = wheel(RAPID_LAYOUT)
    with on_path(root):
        from rapid_layout import RapidLayout

        engine = RapidLayout(conf_thres=0.5, iou_thres=0.5)
        results = []
        for data in images:
            boxes, scores, names, _ = engine(data)
            results.append(
                {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
                 "scores": np.asarray(scores, np.float64), "labels": [str(n) for n in names]}
            )
    return results


def layout_model() -> Path:
    return wheel(RAPID_LAYOUT) / "rapid_layout" / "models" / "layout_cdla.onnx"


def nudenet_model() -> Path:
    return wheel(NUDENET) / "nudenet" / "320n.onnx"


def nudenet_reference(images: List[bytes]) -> List[Dict[str, np.ndarray]]:
    """nudenet 3.4.2's NudeDetector (a YOLOv8n at 320): its boxes are int x, y, w, h."""
    root = wheel(NUDENET)
    with on_path(root):
        from nudenet import NudeDetector

        detector = NudeDetector()
        results = []
        for data in images:
            found = detector.detect(data)
            boxes = np.array([d["box"] for d in found], np.float64).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            results.append(
                {"boxes": boxes, "scores": np.array([d["score"] for d in found]),
                 "labels": [d["class"] for d in found]}
            )
    return results


def mediapipe_root() -> Path:
    return wheel(MEDIAPIPE)


_MEDIAPIPE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from google.protobuf import message_factory, symbol_database
    # mediapipe 0.10 calls SymbolDatabase.GetPrototype, gone from protobuf 5+
    if not hasattr(symbol_database.SymbolDatabase, "GetPrototype"):
        symbol_database.SymbolDatabase.GetPrototype = (
            lambda self, descriptor: message_factory.GetMessageClass(descriptor))
    import cv2
    from mediapipe.python.solutions import face_detection, selfie_segmentation
    paths, masks_out = json.loads(sys.argv[1]), sys.argv[2]
    faces, masks = [], {}
    with face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as f, \\
            selfie_segmentation.SelfieSegmentation(model_selection=0) as s:
        for index, path in enumerate(paths):
            image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
            height, width = image.shape[:2]
            found = []
            for d in f.process(image).detections or []:
                box = d.location_data.relative_bounding_box
                points = [[p.x * width, p.y * height] for p in d.location_data.relative_keypoints]
                found.append({"score": d.score[0], "box": [box.xmin * width, box.ymin * height,
                              (box.xmin + box.width) * width, (box.ymin + box.height) * height],
                              "keypoints": points})
            faces.append(found)
            masks[str(index)] = s.process(image).segmentation_mask
    np.savez(masks_out, **masks)
    print(json.dumps(faces))
    """
)


def mediapipe_reference(images: List[bytes], work: Path) -> Tuple[list, List[np.ndarray]]:
    """MediaPipe 0.10.14's own solutions, BlazeFace short range (face_detection,
    model_selection=0) and selfie segmentation (general model), in a child process: faces as
    dicts (score, box in image pixels, 6 keypoints), float masks at each image's size."""
    root = mediapipe_root()
    paths = []
    for index, data in enumerate(images):
        path = work / f"mediapipe_{index}.img"
        path.write_bytes(data)
        paths.append(str(path))
    masks_path = work / "mediapipe_masks.npz"
    result = subprocess.run(
        [sys.executable, "-c", _MEDIAPIPE_SCRIPT, json.dumps(paths), str(masks_path)],
        capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "GLOG_minloglevel": "2"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"mediapipe failed: {result.stderr[-3000:]}")
    faces = json.loads(result.stdout.strip().splitlines()[-1])
    with np.load(masks_path) as stored:
        masks = [stored[str(i)] for i in range(len(images))]
    return faces, masks


def decode_rgb(data: bytes) -> np.ndarray:
    """As the MediaPipe reference reads it (OpenCV's decoder: JPEG decoders differ slightly)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
