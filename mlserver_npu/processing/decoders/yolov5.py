"""Anchor-based YOLO with objectness (YOLOv5, YOLOv7, YOLOv3 exports with their grid decode
in the graph): one output [B, N, 5+C] (or [B, 5+C, N]): box cx, cy, w, h, the objectness,
then C class scores; a candidate's score is objectness x class score, as Ultralytics' YOLOv5
`non_max_suppression` computes it."""
from typing import Literal, Tuple

import numpy as np
from pydantic import Field

from .base import as_float, logit, select, sigmoid
from .yolov8 import YOLOv8Decoder, YOLOv8Settings


class YOLOv5Settings(YOLOv8Settings):
    """`"decoder": {"type": "yolov5", ...}` (also `yolov7`); the keys of `yolov8`, with the
    layout's default the other way round in Ultralytics' YOLOv5 exports: [B, N, 5+C]."""

    type: Literal["yolov5", "yolov7"]  # type: ignore[assignment]
    keypoints: int = Field(0, ge=0, le=0, description="not in this layout")


class YOLOv5Decoder(YOLOv8Decoder):
    Settings = YOLOv5Settings
    head = 5  # the box, then the objectness

    def _candidates(
        self, row: np.ndarray, classes: int, confidence: float
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        # class scores are at most 1, so objectness x class > confidence needs objectness > it
        objectness = row[4]
        logits = self.settings.scores == "logits"
        kept = np.flatnonzero(objectness > (logit(confidence) if logits else confidence))
        objectness = as_float(objectness[kept])
        scores = as_float(row[5 : 5 + classes, kept])
        if logits:
            objectness, scores = sigmoid(objectness), sigmoid(scores)
        anchors, kept_classes, values = select(
            scores * objectness, confidence, self.settings.multi_label
        )
        return kept[anchors], kept_classes, values.astype(np.float32, copy=False)
