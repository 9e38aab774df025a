"""SSD heads with anchors: box regressors [B, N, coords] and class scores [B, N, C] against N
anchors from MediaPipe's `SsdAnchorsCalculator` options (BlazeFace, BlazePose, palm; and the
TF Object Detection API's multiple grid anchors of classic SSDs, which that calculator
reproduces), decoded as MediaPipe's `TensorsToDetectionsCalculator` does; its defaults here
are the TF box coder's (y, x, h, w order, scales 10, 10, 5, 5, exponential sizes).

The keys keep MediaPipe's option names, so a graph's .pbtxt options can be copied as they are.
"""
import math
from typing import Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...backends import TensorSpec
from ...errors import ConfigurationError
from .base import (
    Candidates,
    Decoder,
    Size,
    as_float,
    empty_candidates,
    input_scale,
    is_float,
    named_output,
    outputs_text,
    real,
    select,
    shape_error,
    shape_text,
    sigmoid,
    softmax,
)


class AnchorOptions(BaseModel):
    """MediaPipe's `SsdAnchorsCalculatorOptions` (the single-scale generator)."""

    model_config = ConfigDict(extra="forbid")

    num_layers: Optional[int] = Field(None, ge=1, description="default: len(strides)")
    min_scale: float = Field(gt=0)
    max_scale: float = Field(gt=0)
    input_size_height: Optional[int] = Field(None, ge=1, description="default: the model's")
    input_size_width: Optional[int] = Field(None, ge=1, description="default: the model's")
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    strides: List[int] = Field(min_length=1)
    feature_map_height: Optional[List[int]] = None
    feature_map_width: Optional[List[int]] = None
    aspect_ratios: List[float] = Field(default_factory=lambda: [1.0], min_length=1)
    reduce_boxes_in_lowest_layer: bool = False
    interpolated_scale_aspect_ratio: float = 1.0
    fixed_anchor_size: bool = False

    @model_validator(mode="after")
    def _layers(self) -> "AnchorOptions":
        layers = self.num_layers or len(self.strides)
        if len(self.strides) < layers:
            raise ValueError(f"strides has {len(self.strides)} values for {layers} layers")
        for key in ("feature_map_height", "feature_map_width"):
            sizes = getattr(self, key)
            if sizes is not None and len(sizes) < layers:
                raise ValueError(f"{key} has {len(sizes)} values for {layers} layers")
        return self


def _scale(minimum: float, maximum: float, index: int, count: int) -> float:
    if count == 1:
        return (minimum + maximum) * 0.5
    return minimum + (maximum - minimum) * index / (count - 1.0)


def generate_anchors(options: AnchorOptions, input_size: Size) -> np.ndarray:
    """[N, 4] float32 anchors (y_center, x_center, h, w), normalized, in the order of
    MediaPipe's `SsdAnchorsCalculator`: layer, row, column, then the anchors of a cell."""
    height = options.input_size_height or input_size[0]
    width = options.input_size_width or input_size[1]
    layers = options.num_layers or len(options.strides)
    strides = options.strides
    anchors: List[Tuple[float, float, float, float]] = []
    layer = 0
    while layer < layers:
        ratios: List[float] = []
        scales: List[float] = []
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            scale = _scale(options.min_scale, options.max_scale, last, len(strides))
            if last == 0 and options.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                ratios += options.aspect_ratios
                scales += [scale] * len(options.aspect_ratios)
                if options.interpolated_scale_aspect_ratio > 0.0:
                    following = (
                        1.0
                        if last == len(strides) - 1
                        else _scale(options.min_scale, options.max_scale, last + 1, len(strides))
                    )
                    scales.append(math.sqrt(scale * following))
                    ratios.append(options.interpolated_scale_aspect_ratio)
            last += 1
        sizes = [(s / math.sqrt(r), s * math.sqrt(r)) for s, r in zip(scales, ratios)]  # h, w
        if options.feature_map_height is not None and options.feature_map_width is not None:
            rows, columns = options.feature_map_height[layer], options.feature_map_width[layer]
        else:
            rows = math.ceil(height / strides[layer])
            columns = math.ceil(width / strides[layer])
        for y in range(rows):
            y_center = (y + options.anchor_offset_y) / rows
            for x in range(columns):
                x_center = (x + options.anchor_offset_x) / columns
                for anchor_h, anchor_w in sizes:
                    if options.fixed_anchor_size:
                        anchor_h = anchor_w = 1.0
                    anchors.append((y_center, x_center, anchor_h, anchor_w))
        layer = last
    return np.array(anchors, np.float32).reshape(-1, 4)


class SSDSettings(BaseModel):
    """`"decoder": {"type": "ssd", ...}`: MediaPipe's `TensorsToDetectionsCalculatorOptions`
    names; the defaults are the TF box coder's."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["ssd"]
    boxes: Optional[str] = Field(None, description="the regressors [B, N, coords]; by shape")
    scores: Optional[str] = Field(None, description="the class scores [B, N, C]; by shape")
    anchors: AnchorOptions
    reverse_output_order: bool = Field(
        False, description="boxes are x, y, w, h (and keypoints x, y); false: y, x, h, w"
    )
    x_scale: float = Field(10.0, gt=0)
    y_scale: float = Field(10.0, gt=0)
    w_scale: float = Field(5.0, gt=0)
    h_scale: float = Field(5.0, gt=0)
    apply_exponential_on_box_size: bool = True
    box_coord_offset: int = Field(0, ge=0)
    num_keypoints: int = Field(0, ge=0)
    keypoint_coord_offset: int = Field(4, ge=0)
    num_values_per_keypoint: int = Field(2, ge=2)
    sigmoid_score: bool = Field(True, description="false: the scores are probabilities")
    softmax_score: bool = Field(False, description="a softmax over each anchor's classes")
    score_clipping_thresh: Optional[float] = Field(None, gt=0, description="clip logits first")
    ignore_classes: List[int] = Field(
        default_factory=list, description="score columns never detected, e.g. [0]: background"
    )
    multi_label: bool = False


def _rows_of(spec: TensorSpec) -> bool:
    """[B, N, K], or TF's [B, N, 1, 4] box encodings."""
    return len(spec.shape) == 3 or len(spec.shape) == 4 and spec.shape[2] == 1


class SSDDecoder(Decoder):
    Settings = SSDSettings
    nms_done = False

    def __init__(
        self, settings: SSDSettings, outputs: Sequence[TensorSpec], input_size: Optional[Size]
    ):
        super().__init__(settings, outputs, input_size)
        keypoint_end = settings.keypoint_coord_offset + (
            settings.num_keypoints * settings.num_values_per_keypoint
        )
        self.coords = settings.box_coord_offset + 4
        if settings.num_keypoints:
            self.coords = max(self.coords, keypoint_end)
        self.box_spec, self.score_spec = self._match(outputs)
        self.sources = [self.box_spec.name, self.score_spec.name]
        self.keypoints = settings.num_keypoints
        columns = self.score_spec.shape[-1]
        self.classes = None if columns is None else columns
        self._anchors: Dict[Size, np.ndarray] = {}
        size = self._anchor_size(input_size)
        if size is not None:
            count = len(self.anchors(size))
            for spec in (self.box_spec, self.score_spec):
                if spec.shape[1] not in (None, count):
                    expected = [spec.shape[0], count] + list(spec.shape[2:])
                    raise shape_error(
                        spec,
                        shape_text(expected),
                        f"the anchor options give {count} anchors",
                    )

    def _anchor_size(self, input_size: Optional[Size]) -> Optional[Size]:
        options = self.settings.anchors
        if options.input_size_height and options.input_size_width:
            return options.input_size_height, options.input_size_width
        return input_size

    def anchors(self, input_size: Size) -> np.ndarray:
        size = self._anchor_size(input_size) or input_size
        if size not in self._anchors:
            self._anchors[size] = generate_anchors(self.settings.anchors, size)
        return self._anchors[size]

    def _match(self, outputs: Sequence[TensorSpec]) -> Tuple[TensorSpec, TensorSpec]:
        by_name = {spec.name: spec for spec in outputs}
        for key in ("boxes", "scores"):
            name = getattr(self.settings, key)
            if name is not None:
                named_output(outputs, name, key)
        expected = f"[batch, anchors, {self.coords}] boxes and [batch, anchors, classes] scores"
        usable = [s for s in outputs if is_float(s) and _rows_of(s)]
        boxes = by_name.get(self.settings.boxes) if self.settings.boxes else None
        scores = by_name.get(self.settings.scores) if self.settings.scores else None
        if boxes is None:
            others = [s for s in usable if s is not scores]
            fitting = [s for s in others if s.shape[-1] == self.coords] or [
                s for s in others if s.shape[-1] is not None and s.shape[-1] > self.coords
            ]
            if len(fitting) > 1:
                words = ("box", "regress", "loc")
                named = [s for s in fitting if any(w in s.name.lower() for w in words)]
                fitting = named if len(named) == 1 else fitting
            if len(fitting) != 1:
                raise self._not_found(outputs, expected, "boxes")
            boxes = fitting[0]
        if scores is None:
            fitting = [s for s in usable if s is not boxes and s.shape[1] in (boxes.shape[1], None)]
            if len(fitting) != 1:
                raise self._not_found(outputs, expected, "scores")
            scores = fitting[0]
        if boxes.shape[-1] is not None and boxes.shape[-1] < self.coords:
            raise shape_error(boxes, f"[batch, anchors, {self.coords}]")
        if len(scores.shape) != 3:
            raise shape_error(scores, "[batch, anchors, classes]")
        return boxes, scores

    @staticmethod
    def _not_found(outputs: Sequence[TensorSpec], expected: str, key: str) -> ConfigurationError:
        found = outputs_text(outputs)
        return ConfigurationError(
            f"cannot find the {key} output among {found}: expected {expected}; name it in the "
            f"decoder's '{key}'"
        )

    def __call__(
        self, outputs: Mapping[str, np.ndarray], input_size: Size, confidence_threshold: float
    ) -> List[Candidates]:
        settings = self.settings
        anchors = self.anchors(input_size)
        regressors = real(outputs, self.box_spec)
        regressors = regressors.reshape(regressors.shape[0], regressors.shape[1], -1)
        scores = as_float(real(outputs, self.score_spec))
        if regressors.shape[1] != len(anchors) or scores.shape[1] != len(anchors):
            raise ValueError(
                f"the model gave {regressors.shape[1]} boxes for {len(anchors)} anchors"
            )
        height, width = input_size
        keypoints = settings.num_keypoints or None
        results = []
        for row_boxes, row_scores in zip(regressors, scores):
            probabilities = self._probabilities(row_scores)  # [N, C]
            if settings.ignore_classes:
                probabilities = probabilities.copy()
                ignored = [c for c in settings.ignore_classes if c < probabilities.shape[1]]
                probabilities[:, ignored] = 0
            picked, classes, values = select(
                probabilities.T, confidence_threshold, settings.multi_label
            )
            if picked.size == 0:
                results.append(empty_candidates(keypoints))
                continue
            raw = as_float(row_boxes[picked])
            anchor = anchors[picked]
            offset = settings.box_coord_offset
            first, second, third, fourth = (raw[:, offset + i] for i in range(4))
            if settings.reverse_output_order:
                x, y, w, h = first, second, third, fourth
            else:
                y, x, h, w = first, second, third, fourth
            x_center = x / settings.x_scale * anchor[:, 3] + anchor[:, 1]
            y_center = y / settings.y_scale * anchor[:, 2] + anchor[:, 0]
            if settings.apply_exponential_on_box_size:
                h = np.exp(h / settings.h_scale) * anchor[:, 2]
                w = np.exp(w / settings.w_scale) * anchor[:, 3]
            else:
                h = h / settings.h_scale * anchor[:, 2]
                w = w / settings.w_scale * anchor[:, 3]
            boxes = np.stack(
                [x_center - w / 2, y_center - h / 2, x_center + w / 2, y_center + h / 2], axis=1
            ) * input_scale((height, width))
            points = None
            if keypoints:
                start = settings.keypoint_coord_offset
                step = settings.num_values_per_keypoint
                values_xy = raw[:, start : start + keypoints * step].reshape(-1, keypoints, step)
                if settings.reverse_output_order:
                    px, py = values_xy[:, :, 0], values_xy[:, :, 1]
                else:
                    py, px = values_xy[:, :, 0], values_xy[:, :, 1]
                px = px / settings.x_scale * anchor[:, 3:4] + anchor[:, 1:2]
                py = py / settings.y_scale * anchor[:, 2:3] + anchor[:, 0:1]
                points = np.stack([px * width, py * height], axis=2).astype(np.float32)
            results.append(
                Candidates(boxes.astype(np.float32), as_float(values), classes, points)
            )
        return results

    def _probabilities(self, scores: np.ndarray) -> np.ndarray:
        settings = self.settings
        if settings.score_clipping_thresh is not None:
            limit = settings.score_clipping_thresh
            scores = np.clip(scores, -limit, limit)
        if settings.softmax_score:
            return softmax(scores)
        if settings.sigmoid_score:
            with np.errstate(over="ignore"):
                return sigmoid(scores)
        return scores
