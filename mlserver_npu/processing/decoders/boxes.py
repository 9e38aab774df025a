"""Already decoded boxes and scores, before NMS: RT-DETR-style heads cut before their top-k,
Qualcomm AI Hub's split YOLO exports (boxes [B, N, 4], scores [B, N], class indices [B, N]),
any graph that decodes its anchors itself. Boxes [B, N, 4] (or [B, N, 1, 4]); scores
[B, N, C] per class, or [B, N] with the classes in a third output [B, N]."""
from typing import List, Literal, Mapping, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ...backends import TensorSpec
from ...errors import ConfigurationError
from .base import (
    BoxFormat,
    Candidates,
    Decoder,
    Size,
    as_float,
    empty_candidates,
    input_scale,
    is_float,
    logit,
    looks_normalized,
    named_output,
    outputs_text,
    real,
    select,
    shape_error,
    sigmoid,
    to_corners,
)


class BoxesSettings(BaseModel):
    """`"decoder": {"type": "boxes", ...}`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["boxes"]
    boxes: Optional[str] = Field(None, description="[B, N, 4]; default: the one that fits")
    scores: Optional[str] = Field(None, description="[B, N, C] or [B, N]; default: by shape")
    classes: Optional[str] = Field(None, description="[B, N] class indices with [B, N] scores")
    box_format: BoxFormat = "xyxy"
    normalized: Optional[bool] = Field(None, description="default: detected from the values")
    activation: Literal["none", "sigmoid"] = "none"
    multi_label: bool = False


def _dims(spec: TensorSpec) -> int:
    return len(spec.shape)


class BoxesDecoder(Decoder):
    Settings = BoxesSettings
    nms_done = False

    def __init__(
        self, settings: BoxesSettings, outputs: Sequence[TensorSpec], input_size: Optional[Size]
    ):
        super().__init__(settings, outputs, input_size)
        found = outputs_text(outputs)

        def box_shaped(s: TensorSpec) -> bool:
            return s.shape[-1] == 4 and (_dims(s) == 3 or _dims(s) == 4 and s.shape[2] == 1)

        boxes = named_output(outputs, settings.boxes, "boxes") if settings.boxes else None
        if boxes is None:
            fitting = [s for s in outputs if box_shaped(s)]
            if len(fitting) != 1:
                raise ConfigurationError(
                    f"cannot tell the boxes output [batch, boxes, 4] among {found}; name it in "
                    "the decoder's 'boxes'"
                )
            boxes = fitting[0]
        if not box_shaped(boxes):
            raise shape_error(boxes, "[batch, boxes, 4]")
        scores = named_output(outputs, settings.scores, "scores") if settings.scores else None
        classes = named_output(outputs, settings.classes, "classes") if settings.classes else None
        rest = [s for s in outputs if s is not boxes and s is not classes]
        if scores is None:
            fitting = [s for s in rest if is_float(s) and _dims(s) in (2, 3)]
            if len(fitting) > 1:
                fitting = [s for s in fitting if "score" in s.name.lower()]
            if len(fitting) != 1:
                raise ConfigurationError(
                    f"cannot tell the scores output [batch, boxes, classes] or [batch, boxes] "
                    f"among {found}; name it in the decoder's 'scores'"
                )
            scores = fitting[0]
        count = boxes.shape[1]
        if _dims(scores) not in (2, 3) or None not in (count, scores.shape[1]) and scores.shape[
            1
        ] != count:
            rows = count or "boxes"
            raise shape_error(scores, f"[batch, {rows}, classes] or [batch, {rows}]")
        if _dims(scores) == 2 and classes is None:
            fitting = [s for s in rest if s is not scores and _dims(s) == 2]
            if len(fitting) == 1:
                classes = fitting[0]
        self.boxes, self.scores, self.class_spec = boxes, scores, classes
        self.sources = [s.name for s in (boxes, scores, classes) if s is not None]
        self.classes = scores.shape[2] if _dims(scores) == 3 else None

    def __call__(
        self, outputs: Mapping[str, np.ndarray], input_size: Size, confidence_threshold: float
    ) -> List[Candidates]:
        settings = self.settings
        boxes = real(outputs, self.boxes)
        boxes = boxes.reshape(boxes.shape[0], -1, 4)
        scores = real(outputs, self.scores)
        classes = None if self.class_spec is None else np.asarray(outputs[self.class_spec.name])
        logits = settings.activation == "sigmoid"
        threshold = logit(confidence_threshold) if logits else confidence_threshold
        results = []
        for row in range(len(boxes)):
            if scores.ndim == 3:
                picked, kept_classes, values = select(
                    scores[row].T, threshold, settings.multi_label
                )
            else:
                picked = np.flatnonzero(scores[row] > threshold)
                values = scores[row][picked]
                kept_classes = (
                    np.zeros(len(picked), np.int64)
                    if classes is None
                    else classes[row].reshape(-1)[picked].astype(np.int64)
                )
            if picked.size == 0:
                results.append(empty_candidates())
                continue
            values = as_float(values)
            if logits:
                values = sigmoid(values).astype(np.float32)
            corners = to_corners(boxes[row][picked], settings.box_format)
            normalized = settings.normalized
            if normalized is None:
                normalized = looks_normalized(boxes[row])
            if normalized:
                corners = corners * input_scale(input_size)
            results.append(Candidates(corners.astype(np.float32), values, kept_classes))
        return results
