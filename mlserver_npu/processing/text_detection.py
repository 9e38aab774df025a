"""Text detection postprocessing for DB-style (Differentiable Binarization) probability maps, as
PaddleOCR's `DBPostProcess` does it: binarize, dilate, one minimum-area rectangle per contour,
score = mean probability inside it, expand ("unclip") by a ratio, map back to the image, and
sort the quadrilaterals in reading order.

The numeric steps follow PaddleOCR (and rapidocr-onnxruntime, which the tests compare with) so
that the same model gives the same boxes: contours and rectangles from OpenCV, the unclip
offset from pyclipper, corner points rounded to whole pixels of the original image.
"""
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import pyclipper
from mlserver.errors import InferenceError
from mlserver.types import MetadataTensor, Parameters, RequestOutput, ResponseOutput
from pydantic import BaseModel, ConfigDict, Field
from shapely.geometry import Polygon

from ..backends import TensorSpec
from ..codecs.image import CONTENT_TYPE as IMAGE
from ..errors import ConfigurationError, shorten
from ..tensors import content_type_of, encode_output
from .postprocess import (
    BuildContext, Planned, Postprocess, RequestContext, chosen_output, request_parameter,
)
from .detection import best
from .regions import draw_output

_DILATION = np.ones((2, 2), np.uint8)


class TextDetectionSettings(BaseModel):
    """`parameters.extra.postprocess` with `"type": "text_detection"` (PaddleOCR's names in
    the descriptions; defaults are PP-OCRv4's as rapidocr-onnxruntime ships them)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text_detection"]
    output: Optional[str] = Field(
        None, description="the probability map output; default: the model's only output"
    )
    threshold: float = Field(0.3, gt=0, lt=1, description="binarization (PaddleOCR `thresh`)")
    box_threshold: float = Field(
        0.5, ge=0, le=1, description="least mean probability inside a box (`box_thresh`)"
    )
    unclip_ratio: float = Field(1.6, gt=0, description="box expansion: area * ratio / perimeter")
    dilation: bool = Field(True, description="dilate the binary map with a 2x2 kernel")
    max_candidates: int = Field(1000, ge=1, description="contours considered per image")
    min_size: float = Field(3, ge=0, description="shortest side of a box, in map pixels")
    line_tolerance: float = Field(
        10, ge=0, description="pixels of vertical offset within which boxes share a line"
    )
    max_texts: int = Field(
        100, ge=1, description="boxes kept per image (the best scored), at most"
    )
    boxes_output: str = Field("text_boxes", description="FP32 [images, K, 4, 2] corners")
    scores_output: str = Field("text_scores", description="FP32 [images, K] box scores")
    count_output: str = Field("num_texts", description="INT32 [images] boxes per image")


def order_corners(quad: np.ndarray) -> np.ndarray:
    """Four points as top-left, top-right, bottom-right, bottom-left (imutils' rule, which
    PaddleOCR applies to the detected boxes)."""
    by_x = quad[np.argsort(quad[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.array([left[0], right[0], right[1], left[1]], np.float32)


def _mini_box(points: np.ndarray) -> Tuple[np.ndarray, float]:
    """The minimum-area rectangle of `points` as 4 corners, and its shorter side."""
    rect = cv2.minAreaRect(points)
    corners = sorted(list(cv2.boxPoints(rect)), key=lambda p: p[0])
    first, fourth = (0, 1) if corners[1][1] > corners[0][1] else (1, 0)
    second, third = (2, 3) if corners[3][1] > corners[2][1] else (3, 2)
    box = np.array([corners[first], corners[second], corners[third], corners[fourth]])
    return box, min(rect[1])


def _box_score(probability: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside the box (PaddleOCR's `fast` score mode)."""
    height, width = probability.shape
    x0 = int(np.clip(np.floor(box[:, 0].min()), 0, width - 1))
    x1 = int(np.clip(np.ceil(box[:, 0].max()), 0, width - 1))
    y0 = int(np.clip(np.floor(box[:, 1].min()), 0, height - 1))
    y1 = int(np.clip(np.ceil(box[:, 1].max()), 0, height - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    shifted = (box - np.array([x0, y0], box.dtype)).astype(np.int32)
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2), 1)
    return cv2.mean(probability[y0 : y1 + 1, x0 : x1 + 1], mask)[0]


def _unclip(box: np.ndarray, ratio: float) -> np.ndarray:
    """The box grown by area * ratio / perimeter on every side, rounded joins (pyclipper;
    the area and perimeter from shapely, as PaddleOCR computes them)."""
    polygon = Polygon(box)
    area, perimeter = polygon.area, polygon.length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    paths = offset.Execute(area * ratio / perimeter) if perimeter else []
    return np.array(paths[0] if len(paths) == 1 else sum(paths, []), np.float32).reshape(-1, 2)


def db_boxes(
    probability: np.ndarray, settings: TextDetectionSettings
) -> Tuple[np.ndarray, np.ndarray]:
    """One [H, W] probability map -> quadrilaterals [K, 4, 2] in map pixels (float, unclipped)
    and their scores [K], in contour order."""
    probability = np.asarray(probability, np.float32)
    bitmap = (probability > settings.threshold).astype(np.uint8)
    if settings.dilation:
        bitmap = cv2.dilate(bitmap, _DILATION)
    contours, _ = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    quads, scores = [], []
    for contour in contours[: settings.max_candidates]:
        box, side = _mini_box(contour)
        if side < settings.min_size:
            continue
        score = _box_score(probability, box.reshape(-1, 2))
        if score < settings.box_threshold:
            continue
        expanded = _unclip(box, settings.unclip_ratio)
        if len(expanded) < 3:
            continue
        box, side = _mini_box(expanded.reshape(-1, 1, 2))
        if side < settings.min_size + 2:
            continue
        quads.append(box)
        scores.append(score)
    return np.array(quads, np.float32).reshape(-1, 4, 2), np.array(scores, np.float32)


def finish_quads(
    quads: np.ndarray, scores: np.ndarray, size: Tuple[int, int]
) -> Tuple[np.ndarray, np.ndarray]:
    """Quadrilaterals already in original-image pixels -> whole pixels inside the image of
    `size` (width, height), corners ordered, boxes narrower than 4 pixels dropped (as
    PaddleOCR: round and clip to the image, order the corners, clip to the last pixel)."""
    width, height = size
    kept, kept_scores = [], []
    for quad, score in zip(quads, scores):
        quad = np.round(quad)
        quad[:, 0] = np.clip(quad[:, 0], 0, width)
        quad[:, 1] = np.clip(quad[:, 1], 0, height)
        quad = order_corners(quad.astype(np.int32).astype(np.float32))
        quad[:, 0] = np.clip(quad[:, 0], 0, width - 1)
        quad[:, 1] = np.clip(quad[:, 1], 0, height - 1)
        if (
            int(np.linalg.norm(quad[0] - quad[1])) <= 3
            or int(np.linalg.norm(quad[0] - quad[3])) <= 3
        ):
            continue
        kept.append(quad)
        kept_scores.append(score)
    return np.array(kept, np.float32).reshape(-1, 4, 2), np.array(kept_scores, np.float32)


def reading_order(quads: np.ndarray, tolerance: float) -> List[int]:
    """Indices of the quadrilaterals top to bottom, left to right: sorted by their top-left
    corner's (y, x), then a box moves before the ones on its line (top-left y within
    `tolerance`) that start to its right (PaddleOCR's `sorted_boxes`)."""
    order = sorted(range(len(quads)), key=lambda i: (quads[i][0][1], quads[i][0][0]))
    for i in range(len(order) - 1):
        for j in range(i, -1, -1):
            a, b = quads[order[j]][0], quads[order[j + 1]][0]
            if abs(b[1] - a[1]) < tolerance and b[0] < a[0]:
                order[j], order[j + 1] = order[j + 1], order[j]
            else:
                break
    return order


def pad_rows(rows: Sequence[np.ndarray], width: int, fill=0) -> np.ndarray:
    """Per-image arrays of different lengths -> one [images, width, ...] array, padded."""
    first = next((r for r in rows if len(r)), rows[0] if rows else np.zeros(0))
    out = np.full((len(rows), width, *first.shape[1:]), fill, dtype=first.dtype)
    for index, row in enumerate(rows):
        out[index, : len(row)] = row
    return out


def _map_shape(spec: TensorSpec) -> Optional[str]:
    """Why `spec` is not a DB probability map ([N, 1, H, W] or [N, H, W]), or None."""
    shape = list(spec.shape)
    if np.dtype(spec.dtype).kind != "f":
        return f"is {np.dtype(spec.dtype).name}, not floating point"
    if len(shape) == 4 and shape[1] in (1, None) or len(shape) == 3:
        return None
    return f"has shape {spec.v2_shape}, expected [N, 1, H, W] or [N, H, W]"


class TextDetection(Postprocess):
    """`"type": "text_detection"`: text quadrilaterals in the pixels of the client's images."""

    Settings = TextDetectionSettings

    def __init__(self, settings: TextDetectionSettings, source: str):
        self.settings = settings
        self.sources = [source]
        self.replaces = [source]

    @classmethod
    def build(
        cls, settings: TextDetectionSettings, outputs: Sequence[TensorSpec], context: BuildContext
    ) -> "TextDetection":
        spec = chosen_output(settings.output, outputs, "the probability map")
        problem = _map_shape(spec)
        if problem:
            raise ConfigurationError(
                f"text_detection: output '{spec.name}' {problem} (a DB probability map)"
            )
        return cls(settings, spec.name)

    def metadata(self) -> List[MetadataTensor]:
        s = self.settings
        return [
            MetadataTensor(name=s.boxes_output, datatype="FP32", shape=[-1, -1, 4, 2]),
            MetadataTensor(name=s.scores_output, datatype="FP32", shape=[-1, -1]),
            MetadataTensor(name=s.count_output, datatype="INT32", shape=[-1]),
        ]

    def plan(self, name: str, request_output: Optional[RequestOutput]) -> Planned:
        image = request_output is not None and content_type_of(request_output.parameters) == IMAGE
        if image and name != self.settings.boxes_output:
            raise InferenceError(
                f"output {shorten(name)}: only '{self.settings.boxes_output}' can be drawn "
                "(content_type image)"
            )
        return Planned(name, post=self, image=image)

    def options(self, parameters: Optional[Parameters]) -> TextDetectionSettings:
        updates = {}
        for key, kind, low, high in (
            ("box_threshold", float, 0, 1), ("max_texts", int, 1, 10_000)
        ):
            value = request_parameter(parameters, key, kind, low, high)
            if value is not None:
                updates[key] = value
        return self.settings.model_copy(update=updates) if updates else self.settings

    def arrays(
        self, results: Mapping[str, np.ndarray], request: RequestContext,
        options: Optional[TextDetectionSettings] = None,
    ) -> Dict[str, np.ndarray]:
        """The boxes, scores and counts of every row, as arrays."""
        settings = options or self.settings
        maps = np.asarray(results[self.sources[0]])
        maps = maps[:, 0] if maps.ndim == 4 else maps
        quads, scores = [], []
        geometries = request.geometry or []
        if geometries:
            # images of different sizes are padded to the largest (bottom, right): an image's
            # map is the top-left part of its row, at the map's scale of the input
            padded = [max(g.input_size[axis] for g in geometries) for axis in (0, 1)]
            ratio = (maps.shape[1] / padded[0], maps.shape[2] / padded[1])
        for row, probability in enumerate(maps):
            geometry = geometries[row] if geometries else None
            if geometry is not None:
                probability = probability[
                    : round(geometry.input_size[0] * ratio[0]),
                    : round(geometry.input_size[1] * ratio[1]),
                ]
            found, score = db_boxes(probability, settings)
            if geometry is not None:
                height, width = probability.shape
                scale = np.float32(geometry.input_size[::-1]) / np.float32([width, height])
                found = geometry.to_original(found * scale)
                size = geometry.original[::-1]
            else:
                size = probability.shape[::-1]
            found, score = finish_quads(found, score, size)
            kept = best(score, settings.max_texts)
            if kept is not None:
                found, score = found[kept], score[kept]
            order = reading_order(found, settings.line_tolerance)
            quads.append(found[order])
            scores.append(score[order])
        count = np.array([len(q) for q in quads], np.int32)
        width = int(count.max(initial=0))
        return {
            settings.boxes_output: (
                pad_rows(quads, width) if quads else np.zeros((0, 0, 4, 2), np.float32)
            ),
            settings.scores_output: (
                pad_rows(scores, width) if scores else np.zeros((0, 0), np.float32)
            ),
            settings.count_output: count,
        }

    def encode(
        self, items: Sequence[Planned], results: Mapping[str, np.ndarray],
        request: RequestContext, options: Any,
    ) -> Dict[str, ResponseOutput]:
        arrays = self.arrays(results, request, options)
        encoded = {}
        for item in items:
            if item.image:
                encoded[item.name] = draw_output(
                    item.name, request.images, arrays[self.settings.boxes_output],
                    arrays[self.settings.count_output],
                )
            else:
                encoded[item.name] = encode_output(item.name, arrays[item.name], request.as_arrays)
        return encoded
