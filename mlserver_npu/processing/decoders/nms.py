"""Graphs that end with their own NMS: the decoder only thresholds and maps back.

`end2end`: rows of detections, [B, K, 6] of x1, y1, x2, y2, score, class by default (YOLOv10,
Ultralytics' `nms=True` exports), padded rows scoring 0; other column orders (YOLOv7's
--end2end [N, 7] with a batch index, PaddleDetection's multiclass_nms3 [N, 6] with a count
output) with `columns` and `count`.
`nms_tensors`: the four-tensor form with a count: num_detections [B] (or [B, 1]), boxes
[B, K, 4], scores [B, K], classes [B, K] (TF Object Detection API, TensorRT EfficientNMS,
TFLite_Detection_PostProcess).
"""
from typing import Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...backends import TensorSpec
from ...errors import ConfigurationError
from .base import (
    BoxFormat,
    Candidates,
    Decoder,
    Size,
    as_float,
    input_scale,
    is_float,
    looks_normalized,
    named_output,
    outputs_text,
    pick_output,
    real,
    shape_error,
    to_corners,
)


Column = Literal["box", "score", "class", "batch", "skip"]


class End2EndSettings(BaseModel):
    """`"decoder": {"type": "end2end", ...}` (also `yolov10`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["end2end", "yolov10"]
    output: Optional[str] = Field(None, description="default: the only fitting output")
    columns: List[Column] = Field(
        default_factory=lambda: ["box", "score", "class"],
        description="what each row holds, in order; `box` is 4 columns: Ultralytics/YOLOv10 "
        "[box, score, class]; YOLOv7 --end2end [batch, box, class, score]; PaddleDetection's "
        "multiclass_nms3 [class, score, box]",
    )
    count: Optional[str] = Field(
        None, description="rows [N, C] of all images: the output of each image's row count"
    )
    box_format: BoxFormat = "xyxy"
    normalized: Optional[bool] = Field(None, description="default: detected from the values")

    @model_validator(mode="after")
    def _one_of_each(self) -> "End2EndSettings":
        for needed in ("box", "score", "class"):
            if self.columns.count(needed) != 1:
                raise ValueError(f"columns must name '{needed}' once")
        if self.columns.count("batch") > 1:
            raise ValueError("columns may name 'batch' once")
        return self


class End2EndDecoder(Decoder):
    """Rows [B, K, C] per image, or [N, C] for all the images with a `count` output or a
    `batch` column (then images after the last one with a detection get no row: such exports,
    YOLOv7's, have a batch of 1), without either one image."""

    Settings = End2EndSettings
    nms_done = True

    def __init__(
        self, settings: End2EndSettings, outputs: Sequence[TensorSpec], input_size: Optional[Size]
    ):
        super().__init__(settings, outputs, input_size)
        offsets, at = {}, 0
        for column in settings.columns:
            offsets[column] = at
            at += 4 if column == "box" else 1
        self.offsets, self.width = offsets, at
        names = ", ".join(settings.columns)
        expected = f"[batch, detections, {at}] or [detections, {at}] ({names})"

        def fits(s: TensorSpec) -> bool:
            return len(s.shape) in (2, 3) and is_float(s) and s.shape[-1] in (None, at)

        self.spec = pick_output(
            [s for s in outputs if s.name != settings.count], settings.output, fits, expected
        )
        if not fits(self.spec):
            raise shape_error(self.spec, expected)
        self.count_spec = None
        if settings.count is not None:
            self.count_spec = pick_output(
                outputs, settings.count, lambda s: True, "[batch]", "count"
            )
        self.sources = [self.spec.name] + ([settings.count] if settings.count else [])

    def _images(self, rows: np.ndarray, outputs: Mapping[str, np.ndarray]) -> List[np.ndarray]:
        """The rows of each image."""
        if rows.ndim == 3:
            return list(rows)
        if self.count_spec is not None:
            counts = np.asarray(outputs[self.count_spec.name]).reshape(-1).astype(np.int64)
            return np.split(rows, np.cumsum(counts)[:-1]) if len(counts) else []
        if "batch" in self.offsets:
            index = np.rint(rows[:, self.offsets["batch"]]).astype(np.int64)
            images = int(index.max()) + 1 if len(index) else 1
            return [rows[index == image] for image in range(images)]
        return [rows]

    def __call__(
        self, outputs: Mapping[str, np.ndarray], input_size: Size, confidence_threshold: float
    ) -> List[Candidates]:
        box, score, cls = (self.offsets[key] for key in ("box", "score", "class"))
        results = []
        for rows in self._images(real(outputs, self.spec), outputs):
            rows = rows.reshape(-1, self.width)
            kept = rows[rows[:, score] > confidence_threshold]
            boxes = to_corners(kept[:, box : box + 4], self.settings.box_format)
            real_boxes = rows[:, box : box + 4][rows[:, score] > 0]
            if _normalized(self.settings.normalized, real_boxes):
                boxes = boxes * input_scale(input_size)
            results.append(
                Candidates(
                    boxes.astype(np.float32),
                    as_float(kept[:, score]),
                    np.rint(kept[:, cls]).astype(np.int64),
                )
            )
        return results


def _whole(values: np.ndarray) -> bool:
    return values.size > 0 and bool(np.all(values == np.rint(values)))


def _normalized(setting: Optional[bool], boxes: np.ndarray) -> bool:
    """End-to-end outputs pad with zero rows, and few boxes remain: normalized when all the
    real boxes are within [0, 1.5] (a detector in pixels is not all in its top-left pixel)."""
    return looks_normalized(boxes) if setting is None else setting


class NMSTensorsSettings(BaseModel):
    """`"decoder": {"type": "nms_tensors", ...}`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["nms_tensors"]
    num_detections: Optional[str] = Field(None, description="default: the [B] or [B, 1] output")
    boxes: Optional[str] = Field(None, description="default: the [B, K, 4] output")
    scores: Optional[str] = Field(None, description="default: by name, else TFLite's order")
    classes: Optional[str] = Field(None, description="default: by name, else TFLite's order")
    box_format: BoxFormat = Field(
        "yxyx", description="yxyx: TF and TFLite (normalized); xyxy: TensorRT EfficientNMS"
    )
    normalized: Optional[bool] = Field(None, description="default: detected from the values")
    class_offset: int = Field(
        0, description="added to the classes (e.g. -1 for the TF OD API's 1-based ids)"
    )


class NMSTensorsDecoder(Decoder):
    Settings = NMSTensorsSettings
    nms_done = True

    def __init__(
        self,
        settings: NMSTensorsSettings,
        outputs: Sequence[TensorSpec],
        input_size: Optional[Size],
    ):
        super().__init__(settings, outputs, input_size)
        chosen: Dict[str, TensorSpec] = {}
        for key in ("num_detections", "boxes", "scores", "classes"):
            name = getattr(settings, key)
            if name is not None:
                chosen[key] = named_output(outputs, name, key)
        rest = [s for s in outputs if s not in chosen.values()]
        found = outputs_text(outputs)
        if "boxes" not in chosen:
            boxes = [s for s in rest if len(s.shape) == 3 and s.shape[2] == 4]
            if len(boxes) != 1:
                raise ConfigurationError(
                    f"cannot tell the boxes output [batch, K, 4] among {found}; name it in the "
                    "decoder's 'boxes'"
                )
            chosen["boxes"] = boxes[0]
            rest.remove(boxes[0])
        if "num_detections" not in chosen:
            counts = [s for s in rest if len(s.shape) == 1 or len(s.shape) == 2 and s.shape[1] == 1]
            if len(counts) != 1:
                raise ConfigurationError(
                    f"cannot tell the num_detections output [batch] among {found}; name it in "
                    "the decoder's 'num_detections'"
                )
            chosen["num_detections"] = counts[0]
            rest.remove(counts[0])
        pairs = [s for s in rest if len(s.shape) == 2]
        for key, words in (("scores", ("score",)), ("classes", ("class", "label"))):
            if key not in chosen:
                named = [s for s in pairs if any(w in s.name.lower() for w in words)]
                if len(named) == 1:
                    chosen[key] = named[0]
                    pairs.remove(named[0])
        missing = [k for k in ("classes", "scores") if k not in chosen]  # TFLite's order
        # Two [batch, K] outputs under generic names (TFLite_Detection_PostProcess:1 and :2,
        # StatefulPartitionedCall:N, whose order varies between exporters): each run tells
        # them apart by their values, the classes being whole numbers
        self.by_values = len(missing) == 2 and len(pairs) == 2
        if len(missing) > len(pairs):
            raise ConfigurationError(
                f"cannot tell the {' and '.join(missing)} outputs [batch, K] among {found}; "
                "name them in the decoder"
            )
        for key, spec in zip(missing, pairs):
            chosen[key] = spec
        boxes = chosen["boxes"]
        if len(boxes.shape) != 3 or boxes.shape[2] != 4:
            raise shape_error(boxes, "[batch, K, 4]")
        for key in ("scores", "classes"):
            spec = chosen[key]
            rows = (spec.shape[1] if len(spec.shape) == 2 else None, boxes.shape[1])
            if len(spec.shape) != 2 or None not in rows and rows[0] != rows[1]:
                raise shape_error(spec, f"[batch, {boxes.shape[1] or 'K'}] like '{boxes.name}'")
        count = chosen["num_detections"]
        if len(count.shape) == 2 and count.shape[1] not in (1, None) or len(count.shape) > 2:
            raise shape_error(count, "[batch] or [batch, 1]")
        self.specs = chosen
        self.sources = [chosen[k].name for k in ("num_detections", "boxes", "scores", "classes")]

    def __call__(
        self, outputs: Mapping[str, np.ndarray], input_size: Size, confidence_threshold: float
    ) -> List[Candidates]:
        counts = np.asarray(outputs[self.specs["num_detections"].name]).reshape(-1)
        boxes = real(outputs, self.specs["boxes"])
        scores = real(outputs, self.specs["scores"])
        classes = np.asarray(outputs[self.specs["classes"].name])
        if self.by_values:
            scores, classes = self._by_values(scores, classes, counts)
        results = []
        for row in range(len(boxes)):
            count = int(min(max(counts[row], 0), boxes.shape[1]))
            row_scores = as_float(scores[row, :count])
            kept = np.flatnonzero(row_scores > confidence_threshold)
            corners = to_corners(boxes[row, kept], self.settings.box_format)
            if _normalized(self.settings.normalized, boxes[row, :count]):
                corners = corners * input_scale(input_size)
            results.append(
                Candidates(
                    corners.astype(np.float32),
                    row_scores[kept],
                    np.rint(classes[row, kept]).astype(np.int64) + self.settings.class_offset,
                )
            )
        return results

    def _by_values(
        self, scores: np.ndarray, classes: np.ndarray, counts: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        """(scores, classes) of two generically named outputs: the one whose detections all
        hold whole numbers (and the other not) is the classes; else the order as matched."""
        rows = [min(max(int(n), 0), scores.shape[1]) for n in counts]
        first = [scores[r, :n] for r, n in enumerate(rows)]
        second = [classes[r, :n] for r, n in enumerate(rows)]
        first_whole = _whole(np.concatenate(first)) if first else False
        second_whole = _whole(np.concatenate(second)) if second else False
        if first_whole and not second_whole:
            return classes.astype(np.float32), scores
        return scores, classes
