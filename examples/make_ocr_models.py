"""Write the OCR example under ``model-repository/``: PaddleOCR's PP-OCRv4 text detector, text
recognizer and the PP-OCR text direction classifier, and a pipeline that reads an image.

Run as ``python examples/make_ocr_models.py``. The three ONNX models are taken, unchanged, from
the wheel of ``rapidocr-onnxruntime==1.4.4`` (PyPI; ``pip download --no-deps``, checked against
its sha256 below). They are PaddleOCR's models (https://github.com/PaddlePaddle/PaddleOCR)
converted to ONNX by RapidOCR (https://github.com/RapidAI/RapidOCR); both projects, and the
wheel, are under the Apache License 2.0, which allows redistribution: the models are committed
so that ``mlserver start model-repository`` serves them offline.

* ``ocr-det``: ``ch_PP-OCRv4_det_infer.onnx``, an image in, text quadrilaterals out
  (``text_detection`` postprocess).
* ``ocr-rec``: ``ch_PP-OCRv4_rec_infer.onnx``, a text line image in, its text out (``ctc``
  postprocess; the 6623-character dictionary is in the model's own metadata).
* ``ocr-cls``: ``ch_ppocr_mobile_v2.0_cls_infer.onnx``, a text line in, ``0`` or ``180``
  (degrees) out.
* ``ocr``: the pipeline: detect, crop every line, orient, recognize, in one request.

It also renders ``examples/images/ocr-page.png`` (ten lines of text in DejaVu fonts, which
matplotlib's wheel ships), and writes ``digits-crops``, the same region step in a "detect, then
classify each object" pipeline: ``digits-detector`` (examples/make_detection_models.py) finds
the digits on a canvas, ``digits-image`` classifies each crop. Running it twice gives
identical files.
"""
import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "model-repository"
IMAGES = ROOT / "examples" / "images"
WHEEL = "rapidocr-onnxruntime==1.4.4"
WHEEL_SHA256 = "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
MODELS = {
    "ocr-det": "ch_PP-OCRv4_det_infer.onnx",
    "ocr-rec": "ch_PP-OCRv4_rec_infer.onnx",
    "ocr-cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}
FONTS = Path(__import__("matplotlib").__file__).parent / "mpl-data" / "fonts" / "ttf"

# PaddleOCR's preprocessing as rapidocr-onnxruntime runs it: BGR, OpenCV's bilinear resize,
# (value / 255 - 0.5) / 0.5.
NORMALIZE = [
    {"op": "scale", "divisor": 255},
    {"op": "normalize", "mean": 0.5, "std": 0.5},
]
THREADS = {"intra_op_threads": 1}
# two sessions of one thread each on the two heavy models: concurrent requests (and the
# groups of one request's lines) use two cores
TWO_SESSIONS = {"options": THREADS, "sessions": 2}

SETTINGS = {
    "ocr-det": {
        **TWO_SESSIONS,
        # PaddleOCR's DetResizeForTest as rapidocr runs it: the shorter side up to 736 (never
        # down), both sides rounded to a multiple of 32
        "preprocess": [
            {"op": "convert", "mode": "BGR"},
            {"op": "resize_to_multiple", "multiple": 32, "limit_side_len": 736,
             "limit_type": "min"},
            *NORMALIZE,
        ],
        "postprocess": {"type": "text_detection"},
    },
    "ocr-rec": {
        **TWO_SESSIONS,
        # served alone: one text line image, 48 pixels high, its width following
        "preprocess": [
            {"op": "convert", "mode": "BGR"},
            {"op": "resize", "shorter_side": 48, "resample": "cv2_linear"},
            *NORMALIZE,
        ],
        "postprocess": {"type": "ctc"},
    },
    "ocr-cls": {
        "options": THREADS,
        "preprocess": [
            {"op": "convert", "mode": "BGR"},
            {"op": "resize", "size": [48, 192], "resample": "cv2_linear"},
            *NORMALIZE,
        ],
        "postprocess": {"type": "classification", "top_k": 2, "labels": "labels.txt"},
    },
}

PIPELINE = {
    "steps": [
        {"name": "detect", "model": "../ocr-det", "inputs": {"x": "inputs.image"}},
        {"name": "orient", "model": "../ocr-cls",
         "regions": {"image": "inputs.image", "boxes": "detect.outputs.text_boxes",
                     "count": "detect.outputs.num_texts", "height": 48, "width": 192}},
        {"name": "recognize", "model": "../ocr-rec",
         "regions": {"image": "inputs.image", "boxes": "detect.outputs.text_boxes",
                     "count": "detect.outputs.num_texts", "height": 48, "min_width": 320,
                     "group_size": 6,
                     "rotate": {"scores": "orient.outputs.save_infer_model/scale_0.tmp_1",
                                "class": 1, "threshold": 0.9},
                     "keep": {"output": "text_scores", "threshold": 0.5},
                     "join": {"output": "text", "separator": "\n", "as": "full_text"}}},
    ],
    "outputs": {
        "text": "recognize.outputs.text",
        "text_scores": "recognize.outputs.text_scores",
        "text_boxes": "recognize.outputs.text_boxes",
        "num_texts": "recognize.outputs.num_texts",
        "full_text": "recognize.outputs.full_text",
    },
}

DIGITS_CROPS = {
    "steps": [
        {"name": "detect", "model": "../digits-detector", "inputs": {"images": "inputs.image"}},
        {"name": "classify", "model": "../digits-image",
         "regions": {"image": "inputs.image", "boxes": "detect.outputs.detection_boxes",
                     "count": "detect.outputs.num_detections", "height": 8, "width": 8,
                     "resample": "cv2_area", "upright_ratio": None}},
    ],
    "outputs": {
        "digits": "classify.outputs.label",
        "probabilities": "classify.outputs.probabilities",
        "boxes": "classify.outputs.detection_boxes",
        "count": "classify.outputs.num_detections",
    },
}

PAGE = [
    ("Quarterly report, third edition", "DejaVuSerif-Bold.ttf", 34),
    ("Prepared for the board on 14 March 2026", "DejaVuSans.ttf", 24),
    ("Revenue grew 12% to 4.8 million euros", "DejaVuSans.ttf", 24),
    ("Operating costs fell by 310,000 euros", "DejaVuSerif.ttf", 24),
    ("New offices opened in Porto and Lyon", "DejaVuSans.ttf", 24),
    ("Headcount: 128 people in 6 countries", "DejaVuSansMono.ttf", 22),
    ("Customer satisfaction reached 91 points", "DejaVuSerif.ttf", 24),
    ("Next review is planned for June", "DejaVuSans-Bold.ttf", 24),
    ("Questions: finance@example.com", "DejaVuSansMono.ttf", 22),
    ("Page 1 of 12", "DejaVuSans.ttf", 20),
]


def fetch_models(work: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(work)],
        check=True,
    )
    wheel = next(work.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel.name}: sha256 {digest}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(work / "wheel")
    return work / "wheel" / "rapidocr_onnxruntime" / "models"


def write_settings(folder: Path, name: str, implementation: str, extra: dict, uri=None) -> None:
    parameters = {"version": "1", "extra": extra}
    if uri:
        parameters = {"uri": uri, **parameters}
    settings = {"name": name, "implementation": implementation, "parameters": parameters}
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")


README = """# {name}

{what}

The ONNX model is `{file}` from the wheel of `rapidocr-onnxruntime==1.4.4` (PyPI), unchanged
(sha256 `{sha}`): PaddleOCR's model (https://github.com/PaddlePaddle/PaddleOCR) converted to
ONNX by RapidOCR (https://github.com/RapidAI/RapidOCR). Licence: Apache License 2.0 (PaddleOCR,
RapidOCR and the wheel). Written by `python examples/make_ocr_models.py`; see docs/ocr.md.
"""
WHAT = {
    "ocr-det": "PP-OCRv4 text detector (DB): an image in, text quadrilaterals out "
    "(`text_boxes`, `text_scores`, `num_texts`).",
    "ocr-rec": "PP-OCRv4 text recognizer (CTC, 6623 characters: Chinese, Latin, digits, "
    "punctuation): a text line image in, `text` and `text_scores` out.",
    "ocr-cls": "PP-OCR text direction classifier: a text line in, `0` or `180` (degrees) out.",
}


def page() -> Image.Image:
    image = Image.new("RGB", (760, 560), (250, 249, 245))
    draw = ImageDraw.Draw(image)
    y = 28
    for text, font, size in PAGE:
        draw.text((40, y), text, font=ImageFont.truetype(str(FONTS / font), size),
                  fill=(25, 25, 35))
        y += int(size * 2.05)
    return image


def main() -> None:
    global REPO, IMAGES
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="write under this folder")
    root = parser.parse_args().root.resolve()
    REPO, IMAGES = root / "model-repository", root / "examples" / "images"
    with tempfile.TemporaryDirectory() as work:
        models = fetch_models(Path(work))
        for name, file in MODELS.items():
            folder = REPO / name
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(models / file, folder / "model.onnx")
            sha = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
            write_settings(folder, name, "mlserver_npu.NPURuntime", SETTINGS[name], "./model.onnx")
            (folder / "README.md").write_text(
                README.format(name=name, what=WHAT[name], file=file, sha=sha)
            )
    (REPO / "ocr-cls" / "labels.txt").write_text("0\n180\n")
    pipeline = REPO / "ocr"
    pipeline.mkdir(parents=True, exist_ok=True)
    write_settings(pipeline, "ocr", "mlserver_npu.Pipeline", PIPELINE)
    (pipeline / "README.md").write_text(
        "# ocr\n\nReads the text of an image in one request: `detect` (../ocr-det) finds the "
        "text lines, `orient` (../ocr-cls) tells upside-down lines, `recognize` (../ocr-rec) "
        "reads every line of every image of the request as one batch. See docs/ocr.md.\n"
        "Models: PaddleOCR PP-OCRv4 via rapidocr-onnxruntime 1.4.4, Apache License 2.0.\n"
    )
    crops = REPO / "digits-crops"
    crops.mkdir(parents=True, exist_ok=True)
    write_settings(crops, "digits-crops", "mlserver_npu.Pipeline", DIGITS_CROPS)
    (crops / "README.md").write_text(
        "# digits-crops\n\nDetect, then classify each object: `detect` (../digits-detector) "
        "finds the handwritten digits on a canvas, `classify` (../digits-image) reads every "
        "digit it found, cut from the client's image, all crops of all images of the request "
        "as one batch; the outputs come back per image (`digits` [images, K], `boxes` [images, "
        "K, 4], `count` [images]). Made by `python examples/make_ocr_models.py`; see "
        "docs/ocr.md.\n"
    )
    IMAGES.mkdir(parents=True, exist_ok=True)
    page().save(IMAGES / "ocr-page.png", optimize=True)


if __name__ == "__main__":
    main()
