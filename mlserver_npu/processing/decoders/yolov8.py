"""Anchor-free YOLO (Ultralytics YOLOv8, YOLO11 and later; YOLOv8-pose): one output
[B, 4+C(+K*D), N], or transposed [B, N, 4+C(+K*D)]; box cx, cy, w, h (or x1, y1, x2, y2) in
input pixels or normalized to [0, 1], then C class scores, no objectness, then K keypoints of
D values (x, y[, visibility]). Channels past those (a segmentation model's mask coefficients)
are ignored."""
from typing import List, Literal, Mapping, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ...backends import TensorSpec
from .base import (
    Candidates,
    Decoder,
    Size,
    as_float,
    empty_candidates,
    is_float,
    logit,
    pick_output,
    shape_error,
    sigmoid,
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
    keypoints: int = Field(0, ge=0, description="keypoints per box after the class scores (pose)")
    keypoint_dims: Literal[2, 3] = Field(3, description="values per keypoint: x, y[, visibility]")


class YOLOv8Decoder(Decoder):
    Settings = YOLOv8Settings
    nms_done = False

    def __init__(
        self, settings: YOLOv8Settings, outputs: Sequence[TensorSpec], input_size: Optional[Size]
    ):
        super().__init__(settings, outputs, input_size)
        expected = "[batch, 4+classes, anchors] or [batch, anchors, 4+classes]"
        spec = pick_output(
            outputs, settings.output, lambda s: len(s.shape) == 3 and is_float(s), expected
        )
        if len(spec.shape) != 3:
            raise shape_error(spec, expected)
        self.spec = spec
        self.sources = [spec.name]
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
        fixed = 4 + self.settings.classes + self.extra if self.settings.classes else None
        if fixed is not None and fixed in (first, second) and first != second:
            return first == fixed
        if first is not None and second is not None:
            return first <= second
        if first is None and second is None:
            return None  # decided on each run's array
        return second is None

    def _classes(self, channels: int, spec: TensorSpec) -> int:
        wanted = self.settings.classes
        have = channels - 4 - self.extra
        if have < (wanted or 1):
            layout = f"4+{wanted or 'classes'}" + (f"+{self.extra}" if self.extra else "")
            expected = f"[batch, {layout}, anchors]"
            if not self.channels_first:
                expected = f"[batch, anchors, {layout}]"
            raise shape_error(spec, expected, f"{channels} channels leave no room for the classes")
        return wanted if wanted is not None else have

    def __call__(
        self, outputs: Mapping[str, np.ndarray], input_size: Size, confidence_threshold: float
    ) -> List[Candidates]:
        array = np.asarray(outputs[self.spec.name])
        channels_first = self.channels_first
        if channels_first is None:
            channels_first = array.shape[1] <= array.shape[2]
        if not channels_first:
            array = array.transpose(0, 2, 1)  # a view: rows are channels from here on
        classes = self.classes or self._classes(array.shape[1], self.spec)
        threshold = confidence_threshold
        logits = self.settings.scores == "logits"
        if logits:
            threshold = logit(confidence_threshold)
        results = []
        for row in array:
            scores = row[4 : 4 + classes]
            best = scores.max(axis=0)
            keep = np.flatnonzero(best > threshold)
            if keep.size == 0:
                results.append(empty_candidates(self.settings.keypoints or None))
                continue
            kept_scores = as_float(best[keep])
            if logits:
                kept_scores = sigmoid(kept_scores).astype(np.float32)
            boxes = as_float(row[:4, keep].T)
            if self.settings.box_format == "cxcywh":
                half = boxes[:, 2:] / 2
                boxes = np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)
            scale = self._scale(row, input_size)
            if scale is not None:
                boxes = boxes * np.tile(scale, 2)
            keypoints = None
            if self.settings.keypoints:
                start = 4 + classes
                points = as_float(row[start : start + self.extra, keep].T)
                points = points.reshape(len(keep), self.settings.keypoints, -1)
                keypoints = np.ascontiguousarray(points[:, :, :2])
                if scale is not None:
                    keypoints = keypoints * scale
            results.append(
                Candidates(
                    boxes=np.ascontiguousarray(boxes, dtype=np.float32),
                    scores=kept_scores,
                    classes=scores[:, keep].argmax(axis=0).astype(np.int64),
                    keypoints=None if keypoints is None else keypoints.astype(np.float32),
                )
            )
        return results

    def _scale(self, row: np.ndarray, input_size: Size) -> Optional[np.ndarray]:
        """(width, height) multipliers of normalized boxes, or None for pixel boxes. Detected
        from the box centres of every anchor: in pixels they span the input, normalized they
        stay within [0, 1] (a little past it at the border)."""
        normalized = self.settings.normalized
        if normalized is None:
            normalized = bool(np.abs(row[:2]).max() <= 1.5) if row.shape[1] else False
        if not normalized:
            return None
        height, width = input_size
        return np.array([width, height], np.float32)
