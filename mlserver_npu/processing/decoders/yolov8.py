"""Anchor-free YOLO (Ultralytics YOLOv8, YOLO11 and later; YOLOv8-pose): one output
[B, 4+C(+K*D), N], or transposed [B, N, 4+C(+K*D)]; box cx, cy, w, h (or x1, y1, x2, y2) in
input pixels or normalized to [0, 1], then C class scores, no objectness, then K keypoints of
D values (x, y[, visibility]). Channels past those (a segmentation model's mask coefficients)
are ignored."""
from typing import ClassVar, List, Literal, Mapping, Optional, Sequence, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ...backends import TensorSpec
from .base import (
    Candidates,
    Decoder,
    Size,
    as_float,
    empty_candidates,
    input_scale,
    is_float,
    logit,
    looks_normalized,
    pick_output,
    real,
    select,
    shape_error,
    sigmoid,
    to_corners,
)


class YOLOv8Settings(BaseModel):
    """`"decoder": {"type": "yolov8", ...}` (also `yolo11`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["yolov8", "yolo11", "yolov11"]
    output: Optional[str] = Field(None, description="the output; default: the only [B, ?, ?] one")
    layout: Literal["auto", "channels_first", "channels_last"] = Field(
        "auto",
        description="channels_first [B, 4+C, N] (Ultralytics ONNX), channels_last [B, N, 4+C]; "
        "auto: the smaller (or the static) of the last two dimensions is the channels",
    )
    classes: Optional[int] = Field(None, ge=1, description="default: what the channels leave")
    box_format: Literal["cxcywh", "xyxy"] = "cxcywh"
    normalized: Optional[bool] = Field(
        None,
        description="boxes in [0, 1] of the input size (Ultralytics TFLite exports); "
        "default: detected per batch row from the box centres",
    )
    scores: Literal["probabilities", "logits"] = Field(
        "probabilities", description="logits: the graph was cut before its sigmoid"
    )
    multi_label: bool = Field(
        False, description="a candidate per class above the threshold, not only the best class"
    )
    keypoints: int = Field(0, ge=0, description="keypoints per box after the class scores (pose)")
    keypoint_dims: Literal[2, 3] = Field(3, description="values per keypoint: x, y[, visibility]")


class YOLOv8Decoder(Decoder):
    Settings = YOLOv8Settings
    nms_done = False
    head: ClassVar[int] = 4  # channels before the class scores: the box

    def __init__(
        self, settings: YOLOv8Settings, outputs: Sequence[TensorSpec], input_size: Optional[Size]
    ):
        super().__init__(settings, outputs, input_size)
        channels = f"{self.head}+classes"
        expected = f"[batch, {channels}, anchors] or [batch, anchors, {channels}]"
        spec = pick_output(
            outputs, settings.output, lambda s: len(s.shape) == 3 and is_float(s), expected
        )
        if len(spec.shape) != 3:
            raise shape_error(spec, expected)
        self.spec = spec
        self.sources = [spec.name]
        self.keypoints = settings.keypoints
        self.extra = settings.keypoints * settings.keypoint_dims
        first, second = spec.shape[1], spec.shape[2]
        self.channels_first: Optional[bool] = {"channels_first": True, "channels_last": False}.get(
            settings.layout
        )
        if self.channels_first is None:
            self.channels_first = self._guess_layout(first, second)
        channels = None
        if self.channels_first is not None:
            channels = first if self.channels_first else second
        if channels is not None:
            self.classes = self._classes(channels, spec)
        else:
            self.classes = settings.classes

    def _guess_layout(self, first: Optional[int], second: Optional[int]) -> Optional[bool]:
        fixed = self.head + self.settings.classes + self.extra if self.settings.classes else None
        if fixed is not None and fixed in (first, second) and first != second:
            return first == fixed
        if first is not None and second is not None:
            return first <= second
        if first is None and second is None:
            return None  # decided on each run's array
        return second is None

    def _classes(self, channels: int, spec: TensorSpec) -> int:
        wanted = self.settings.classes
        have = channels - self.head - self.extra
        if have < (wanted or 1):
            layout = f"{self.head}+{wanted or 'classes'}" + (f"+{self.extra}" if self.extra else "")
            expected = f"[batch, {layout}, anchors]"
            if not self.channels_first:
                expected = f"[batch, anchors, {layout}]"
            raise shape_error(spec, expected, f"{channels} channels leave no room for the classes")
        return wanted if wanted is not None else have

    def __call__(
        self, outputs: Mapping[str, np.ndarray], input_size: Size, confidence_threshold: float
    ) -> List[Candidates]:
        array = real(outputs, self.spec)
        channels_first = self.channels_first
        if channels_first is None:
            channels_first = array.shape[1] <= array.shape[2]
        if not channels_first:
            array = array.transpose(0, 2, 1)  # a view: rows are channels from here on
        classes = self.classes or self._classes(array.shape[1], self.spec)
        results = []
        for row in array:
            anchors, kept_classes, kept_scores = self._candidates(
                row, classes, confidence_threshold
            )
            if anchors.size == 0:
                results.append(empty_candidates(self.settings.keypoints or None))
                continue
            boxes = to_corners(row[:4, anchors].T, self.settings.box_format)
            scale = self._scale(row, input_size)
            if scale is not None:
                boxes = boxes * scale
            keypoints = None
            if self.settings.keypoints:
                start = self.head + classes
                points = as_float(row[start : start + self.extra, anchors].T)
                keypoints = points.reshape(len(anchors), self.settings.keypoints, -1)[:, :, :2]
                if scale is not None:
                    keypoints = keypoints * scale[:2]
                keypoints = np.ascontiguousarray(keypoints, dtype=np.float32)
            results.append(
                Candidates(
                    boxes=boxes.astype(np.float32, copy=False),
                    scores=kept_scores,
                    classes=kept_classes,
                    keypoints=keypoints,
                )
            )
        return results

    def _candidates(
        self, row: np.ndarray, classes: int, confidence: float
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(anchors, classes, float32 probabilities) of the row's candidates."""
        scores = row[4 : 4 + classes]
        if self.settings.scores == "logits":  # compare logits, sigmoid the candidates only
            anchors, kept, values = select(scores, logit(confidence), self.settings.multi_label)
            return anchors, kept, sigmoid(as_float(values)).astype(np.float32)
        anchors, kept, values = select(scores, confidence, self.settings.multi_label)
        return anchors, kept, as_float(values)

    def _scale(self, row: np.ndarray, input_size: Size) -> Optional[np.ndarray]:
        """x, y, x, y multipliers of normalized boxes, or None for pixel boxes."""
        normalized = self.settings.normalized
        if normalized is None:
            normalized = looks_normalized(row[:2])
        return input_scale(input_size) if normalized else None
