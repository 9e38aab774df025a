"""rapidocr-onnxruntime as the tests' reference for OCR, and rendered text images.

rapidocr-onnxruntime declares `opencv-python`, which would replace the headless `cv2` of this
environment: its wheel is fetched with `pip download --no-deps` into a cache folder, unpacked,
and imported from there (its other dependencies, pyclipper, shapely, pyyaml and six, are in
the `test` extra).
"""
import functools
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
CACHE = Path(
    os.environ.get("MLSERVER_NPU_TEST_CACHE", Path.home() / ".cache" / "mlserver-npu-tests")
)


def rapidocr_package() -> Path:
    """The unpacked rapidocr-onnxruntime wheel (fetched once into the cache)."""
    target = CACHE / RAPIDOCR.replace("==", "-")
    if not (target / "rapidocr_onnxruntime" / "main.py").is_file():
        wheels = CACHE / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", RAPIDOCR,
             "-d", str(wheels)],
            check=True,
        )
        wheel = next(wheels.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    return target


@functools.lru_cache(maxsize=None)
def rapidocr():
    """A RapidOCR engine (import from the unpacked wheel)."""
    path = str(rapidocr_package())
    if path not in sys.path:
        sys.path.insert(0, path)
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR()


def read(engine, data: bytes, **options) -> Tuple[List[str], np.ndarray, List[float]]:
    """rapidocr's lines of an encoded image: texts, quadrilaterals [K, 4, 2], scores
    (`options`: RapidOCR's per-call ones, e.g. text_score)."""
    # RapidOCR keeps per-call options as its own settings: put them back afterwards
    det = engine.text_det.postprocess_op
    saved = engine.text_score, det.box_thresh, det.unclip_ratio
    try:
        result, _ = engine(data, **options)
    finally:
        engine.text_score, det.box_thresh, det.unclip_ratio = saved
    if not result:
        return [], np.zeros((0, 4, 2), np.float32), []
    return (
        [line[1] for line in result],
        np.array([line[0] for line in result], np.float32),
        [float(line[2]) for line in result],
    )


FONTS = Path(__import__("matplotlib").__file__).parent / "mpl-data" / "fonts" / "ttf"


def render(
    lines: Sequence[Tuple[str, str, int]],
    size: Tuple[int, int],
    angle: float = 0,
    origin: Tuple[int, int] = (30, 30),
    spacing: float = 1.9,
) -> Image.Image:
    """Dark text lines (text, DejaVu font file, pixel size) on a light page of `size`
    (width, height), rotated by `angle` degrees around the centre."""
    page = Image.new("RGB", size, (246, 244, 238))
    draw = ImageDraw.Draw(page)
    x, y = origin
    for text, font, pixels in lines:
        draw.text((x, y), text, font=ImageFont.truetype(str(FONTS / font), pixels),
                  fill=(20, 22, 30))
        y += int(pixels * spacing)
    if angle:
        page = page.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(246, 244, 238))
    return page


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two quadrilaterals [4, 2] (shapely)."""
    from shapely.geometry import Polygon

    first, second = Polygon(a), Polygon(b)
    union = first.union(second).area
    return first.intersection(second).area / union if union else 0.0


def match_lines(
    texts: Sequence[str], quads: np.ndarray, ref_texts: Sequence[str], ref_quads: np.ndarray,
    min_iou: float = 0.9,
) -> Optional[str]:
    """None when both give the same lines in the same order with boxes of IoU >= min_iou,
    else what differs."""
    if list(texts) != list(ref_texts):
        return f"texts differ: {list(texts)} != {list(ref_texts)}"
    for index, (quad, ref) in enumerate(zip(quads, ref_quads)):
        overlap = iou(quad, ref)
        if overlap < min_iou:
            return f"line {index} ({texts[index]!r}): IoU {overlap:.3f} < {min_iou}"
    return None
