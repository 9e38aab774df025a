"""Detection postprocessing: a detector's raw outputs -> boxes in the client's pixels.

A decoder (decoders/, one per output layout) turns the outputs of a run into candidate boxes
per image in model-input pixels; here they go through NMS, are mapped back through each
image's Geometry (letterbox, resize, crop) to the pixels of the image the client sent, and
become the tensors TF Object Detection API and TensorRT EfficientNMS users parse:
`num_detections` INT32 [images], `detection_boxes` FP32 [images, K, 4] (x1, y1, x2, y2),
`detection_scores` FP32 [images, K], `detection_classes` INT64 [images, K],
`detection_labels` BYTES [images, K] (when labels are known), `detection_keypoints` FP32
[images, K, P, 2] (when the decoder gives keypoints). K is the largest count of the request:
rows past an image's count are zeros / empty strings. Any of them requested with
`content_type: image` is the client's image with the detections drawn, as PNG.
"""
import ast
import json
import logging
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Union

import numpy as np
from mlserver.errors import InferenceError
from mlserver.types import MetadataTensor, Parameters, RequestOutput, ResponseOutput
from pydantic import BaseModel, ConfigDict, Field

from ..backends import TensorSpec
from ..codecs.image import CONTENT_TYPE as IMAGE, ImageCodec
from ..errors import ConfigurationError, shorten
from ..tensors import content_type_of, encode_output
from .classification import read_labels
from .decoders import Candidates, Decoder, create_decoder
from .decoders.base import shape_text
from .decoders.yolov8 import YOLOv8Decoder
from .decoders.weighted import weighted_nms
from .geometry import Geometry
from .postprocess import (
    BuildContext, Planned, Postprocess, RequestContext, check_output_names,
    request_parameter,
)

logger = logging.getLogger("mlserver.npu")

MAX_DETECTIONS = 10_000  # the most a request may ask for
# OpenCV's NMS compares each candidate with every box kept so far: quadratic when few overlap.
# Measured here (python -m bench.nms_cost, 2 cores loaded ~4x by other work; 80 classes, boxes
# all over 640x640): NMSBoxesBatched 0.8 ms at 500 candidates, 3.5 ms at 1,000, 15 ms at 2,000,
# 310 ms at 8,400, 5.1 s at 30,000. A request may lower confidence_threshold to 0 (mAP
# evaluation does), where a detector gives every anchor (x every class with multi_label:
# 100k for picodet); so only the best 1,000 of an image enter NMS whatever the threshold, as
# PaddleDetection's MultiClassNMS (nms_top_k) and MMDetection (nms_pre) default to.
PRE_NMS_TOP_K = 1000


class DetectionOutputs(BaseModel):
    """`output_names`: the name of each output in the response."""

    model_config = ConfigDict(extra="forbid")

    num_detections: str = "num_detections"
    boxes: str = "detection_boxes"
    scores: str = "detection_scores"
    classes: str = "detection_classes"
    labels: str = "detection_labels"
    keypoints: str = "detection_keypoints"


class DetectionSettings(BaseModel):
    """`parameters.extra.postprocess` with `"type": "detection"`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["detection"]
    decoder: Union[str, Dict[str, Any]] = Field(
        description="the output layout: a decoder name (\"yolov8\") or {\"type\": ..., its keys}"
    )
    confidence_threshold: float = Field(0.25, ge=0, le=1, description="scores above it are kept")
    iou_threshold: float = Field(
        0.7, ge=0, le=1, description="NMS: a box overlapping a better one by more is dropped"
    )
    class_agnostic: bool = Field(False, description="NMS across classes instead of per class")
    nms: Literal["hard", "weighted"] = Field(
        "hard", description="hard: OpenCV's NMS; weighted: MediaPipe's (boxes and keypoints "
        "averaged over the overlapping candidates, class-agnostic), as BlazeFace is tuned with"
    )
    max_detections: int = Field(300, ge=1, le=MAX_DETECTIONS, description="per image, after NMS")
    pre_nms_top_k: int = Field(
        PRE_NMS_TOP_K, ge=1, description="only the best this many candidates of an image enter "
        "NMS (its cost grows with their square): what bounds a request's cost at any threshold"
    )
    labels: Union[str, List[str], None] = Field(
        None, description="a labels file (one per line, relative path) or a list; default: the "
        "model's own metadata `names` when it has them"
    )
    output_names: DetectionOutputs = Field(default_factory=DetectionOutputs)
    clip: bool = Field(True, description="clip boxes and keypoints to the image")


def metadata_labels(metadata: Mapping[str, str]) -> Optional[List[str]]:
    """Labels from a model's own metadata: Ultralytics' `names` ("{0: 'person', ...}" in ONNX,
    JSON in TFLite), or `labels`: a list, or words separated by spaces (its OpenVINO IR)."""
    for key in ("names", "labels", "classes"):
        text = metadata.get(key)
        if not text:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                # Ultralytics' OpenVINO rt_info: labels separated by spaces (theirs by "_")
                value = text.split() if key == "labels" else None
        if value is None:
            continue
        if isinstance(value, dict):
            try:
                ordered = sorted((int(k), str(v)) for k, v in value.items())
            except (TypeError, ValueError):
                continue
            names = [""] * (ordered[-1][0] + 1) if ordered else []
            for index, name in ordered:
                if index >= 0:
                    names[index] = name
            return names
        if isinstance(value, list):
            return [str(v) for v in value]
    return None


class Options(BaseModel):
    """One request's thresholds (the settings', or the request parameters' overrides)."""

    confidence_threshold: float
    iou_threshold: float
    max_detections: int


def best(scores: np.ndarray, top_k: int) -> Optional[np.ndarray]:
    """Indices, in order, of the `top_k` best scores (None when there are no more): the ones
    a stable sort by score would put first (of equal scores at the cut, the first ones), in
    O(n) (np.partition) rather than the O(n log n) of sorting 100k candidates."""
    if len(scores) <= top_k:
        return None
    kth = np.partition(scores, len(scores) - top_k)[len(scores) - top_k]
    above = np.flatnonzero(scores > kth)
    ties = np.flatnonzero(scores == kth)[: top_k - len(above)]
    return np.sort(np.concatenate([above, ties]))


def top_candidates(row: Candidates, top_k: int) -> Candidates:
    """The best `top_k` candidates of an image, in their order."""
    kept = best(row.scores, top_k)
    if kept is None:
        return row
    keypoints = None if row.keypoints is None else row.keypoints[kept]
    return Candidates(row.boxes[kept], row.scores[kept], row.classes[kept], keypoints)


def nms(candidates: Candidates, iou_threshold: float, class_agnostic: bool) -> np.ndarray:
    """Indices of the candidates NMS keeps, best score first.

    OpenCV's cv2.dnn.NMSBoxes / NMSBoxesBatched: candidates sorted by score (stable: equal
    scores keep their order), a box is dropped when
    its IoU with a kept one (of its class, unless class-agnostic) is greater than
    `iou_threshold`; IoU of continuous boxes (no +1 pixel), as torchvision.ops.nms and
    Ultralytics' NMS (which offsets boxes per class as NMSBoxesBatched does). Scores of 0
    are dropped (OpenCV keeps scores > its score threshold, which must be >= 0)."""
    import cv2

    if len(candidates) == 0:
        return np.zeros(0, np.int64)
    boxes = candidates.boxes.astype(np.float64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    scores = candidates.scores.astype(np.float32)
    # The decoder applied the confidence threshold; OpenCV's own (score > it) only drops 0s.
    floor = 0.0
    if class_agnostic:
        kept = cv2.dnn.NMSBoxes(xywh, scores, floor, iou_threshold)
    else:
        kept = cv2.dnn.NMSBoxesBatched(
            xywh, scores, candidates.classes.astype(np.int32), floor, iou_threshold
        )
    return np.asarray(kept, np.int64).reshape(-1)


class Detections:
    """One request's detections, per image, in the client's pixels (padded tensors)."""

    def __init__(self, rows: List[Candidates], keypoints: Optional[int]):
        self.count = np.array([len(row) for row in rows], np.int32)
        k = int(self.count.max()) if len(rows) else 0
        n = len(rows)
        self.boxes = np.zeros((n, k, 4), np.float32)
        self.scores = np.zeros((n, k), np.float32)
        self.classes = np.zeros((n, k), np.int64)
        self.keypoints = None if keypoints is None else np.zeros((n, k, keypoints, 2), np.float32)
        for index, row in enumerate(rows):
            found = len(row)
            self.boxes[index, :found] = row.boxes
            self.scores[index, :found] = row.scores
            self.classes[index, :found] = row.classes
            if self.keypoints is not None and row.keypoints is not None:
                self.keypoints[index, :found] = row.keypoints

    def labels(self, labels: Sequence[str]) -> np.ndarray:
        strings = np.full(self.classes.shape, b"", dtype=object)
        for index, found in enumerate(self.count):
            for j in range(found):
                cls = int(self.classes[index, j])
                strings[index, j] = (labels[cls] if 0 <= cls < len(labels) else str(cls)).encode()
        return strings


def _check_metadata_classes(
    count: int, decoder: Decoder, outputs: Sequence[TensorSpec]
) -> None:
    """A YOLO output whose channels, read with the configured layout, give another number of
    classes than the model's metadata names (Ultralytics writes them exactly) is another
    layout: a YOLOv8 head (4+classes) read as YOLOv5 (5+classes) loaded and found nothing."""
    if not isinstance(decoder, YOLOv8Decoder) or decoder.settings.classes is not None:
        return
    if decoder.classes is None or decoder.classes == count:
        return
    spec = decoder.spec
    layout = f"{decoder.head}+{count}" + (f"+{decoder.extra}" if decoder.extra else "")
    channels = decoder.head + count + decoder.extra
    expected = f"[batch, {layout} = {channels}, anchors] or [batch, anchors, {channels}]"
    raise ConfigurationError(
        f"output '{spec.name}' has shape {shape_text(spec.shape)}, expected {expected}: the "
        f"model's metadata names {count} classes, but as '{decoder.settings.type}' "
        f"({decoder.head}+classes) its channels give {decoder.classes}; set the decoder that "
        "matches the model's export"
    )


class Detection(Postprocess):
    """`"type": "detection"`."""

    Settings = DetectionSettings

    def __init__(
        self, settings: DetectionSettings, decoder: Decoder, labels: Optional[List[str]],
        keypoints: Optional[int], input_size: Optional[tuple],
    ):
        self.settings = settings
        self.decoder = decoder
        self.labels = labels
        self.keypoints = keypoints  # points per box, None when the decoder gives none
        self.input_size = input_size
        self.sources = list(decoder.sources)
        self.replaces = list(decoder.sources)

    @classmethod
    def build(
        cls, settings: DetectionSettings, outputs: Sequence[TensorSpec], context: BuildContext
    ) -> "Detection":
        if context.tiled:
            raise ConfigurationError(
                "postprocess 'detection' maps boxes back to whole images: it does not take "
                "images cut into tiles"
            )
        check_output_names(settings.output_names, outputs)
        try:
            decoder = create_decoder(settings.decoder, outputs, context.input_size)
        except ConfigurationError as error:
            raise ConfigurationError(f"postprocess 'detection': {error}") from None
        labels = cls._labels(settings, context, decoder)
        if settings.labels is None and labels is not None:
            _check_metadata_classes(len(labels), decoder, outputs)
        return cls(settings, decoder, labels, decoder.keypoints or None, context.input_size)

    @staticmethod
    def _labels(
        settings: DetectionSettings, context: BuildContext, decoder: Decoder
    ) -> Optional[List[str]]:
        if isinstance(settings.labels, list):
            labels, where = list(settings.labels), "postprocess.labels"
        elif isinstance(settings.labels, str):
            path = context.resolve(settings.labels)
            labels, where = read_labels(path), f"labels file '{path}'"
        else:
            labels, where = metadata_labels(context.metadata), "the model's metadata 'names'"
        classes = decoder.classes
        if labels is not None and classes is not None and len(labels) < classes:
            raise ConfigurationError(
                f"{where} has {len(labels)} labels, but the detector has {classes} classes"
            )
        return labels

    def describe(self) -> Dict[str, Any]:
        described = super().describe()
        described["decoder"] = self.decoder.settings.type  # type: ignore[attr-defined]
        described["labels"] = len(self.labels) if self.labels is not None else None
        return described

    @property
    def _outputs(self) -> List[tuple]:
        """(key, name, datatype, shape) of each output, in order."""
        names = self.settings.output_names
        items = [
            ("num_detections", names.num_detections, "INT32", [-1]),
            ("boxes", names.boxes, "FP32", [-1, -1, 4]),
            ("scores", names.scores, "FP32", [-1, -1]),
            ("classes", names.classes, "INT64", [-1, -1]),
        ]
        if self.labels is not None:
            items.append(("labels", names.labels, "BYTES", [-1, -1]))
        if self.keypoints:
            items.append(("keypoints", names.keypoints, "FP32", [-1, -1, self.keypoints, 2]))
        return items

    def metadata(self) -> List[MetadataTensor]:
        return [
            MetadataTensor(name=name, datatype=datatype, shape=shape)
            for _, name, datatype, shape in self._outputs
        ]

    def plan(self, name: str, request_output: Optional[RequestOutput]) -> Planned:
        image = request_output is not None and content_type_of(request_output.parameters) == IMAGE
        key = next(key for key, known, _, _ in self._outputs if known == name)
        return Planned(name, post=self, image=image, option=key)

    def options(self, parameters: Optional[Parameters]) -> Options:
        """A confidence_threshold down to 0 is accepted, not refused: pre_nms_top_k bounds
        its cost, and evaluation (mAP) needs the low-scoring candidates."""
        settings = self.settings
        values = {
            "confidence_threshold": (settings.confidence_threshold, float, 0.0, 1.0),
            "iou_threshold": (settings.iou_threshold, float, 0.0, 1.0),
            "max_detections": (settings.max_detections, int, 1, MAX_DETECTIONS),
        }
        chosen = {}
        for name, (default, kind, low, high) in values.items():
            given = request_parameter(parameters, name, kind, low, high)
            chosen[name] = default if given is None else given
        return Options(**chosen)

    def detect(
        self, results: Mapping[str, np.ndarray], request: RequestContext, options: Options
    ) -> List[Candidates]:
        """Each image's detections after NMS, in the client's pixels (model-input pixels
        when the request sent a tensor rather than images)."""
        geometry = request.geometry
        size = geometry[0].input_size if geometry else self.input_size
        if size is None:
            raise InferenceError(
                "detection needs the model input's size: send images, or give the model a "
                "fixed input size"
            )
        rows = self.decoder(
            {name: results[name] for name in self.sources}, size, options.confidence_threshold
        )
        if geometry and len(geometry) != len(rows):
            raise InferenceError(
                f"detection: the model gave {len(rows)} rows of detections for "
                f"{len(geometry)} images"
            )
        found = []
        for index, row in enumerate(rows):
            if self.decoder.nms_done:
                kept = np.argsort(-row.scores, kind="stable")
            elif self.settings.nms == "weighted":
                row = top_candidates(row, self.settings.pre_nms_top_k)
                row = weighted_nms(row, options.iou_threshold, options.max_detections)
                kept = np.arange(len(row))
            else:
                row = top_candidates(row, self.settings.pre_nms_top_k)
                kept = nms(row, options.iou_threshold, self.settings.class_agnostic)
            kept = kept[: options.max_detections]
            row = Candidates(
                boxes=row.boxes[kept].reshape(-1, 4).astype(np.float32),
                scores=row.scores[kept].astype(np.float32),
                classes=row.classes[kept].astype(np.int64),
                keypoints=None if row.keypoints is None else row.keypoints[kept],
            )
            if geometry:
                row = self._to_original(row, geometry[index])
            found.append(row)
        return found

    def _to_original(self, row: Candidates, geometry: Geometry) -> Candidates:
        boxes = geometry.boxes_to_original(row.boxes)
        keypoints = None if row.keypoints is None else geometry.to_original(row.keypoints)
        if self.settings.clip:
            boxes = geometry.clip_boxes(boxes)
            if keypoints is not None:
                keypoints = geometry.clip_points(keypoints)
        return Candidates(boxes, row.scores, row.classes, keypoints)

    def encode(
        self,
        items: Sequence[Planned],
        results: Mapping[str, np.ndarray],
        request: RequestContext,
        options: Options,
    ) -> Dict[str, ResponseOutput]:
        rows = self.detect(results, request, options)
        detections = Detections(rows, self.keypoints)
        encoded = {}
        for item in items:
            if item.image:
                encoded[item.name] = self._drawn(item.name, rows, request)
                continue
            array = {
                "num_detections": lambda: detections.count,
                "boxes": lambda: detections.boxes,
                "scores": lambda: detections.scores,
                "classes": lambda: detections.classes,
                "labels": lambda: detections.labels(self.labels or ()),
                "keypoints": lambda: detections.keypoints,
            }[item.option]()
            encoded[item.name] = encode_output(item.name, array, request.as_arrays)
        return encoded

    def _drawn(self, name: str, rows: List[Candidates], request: RequestContext) -> ResponseOutput:
        from .draw import draw_detections

        if not request.images or not request.geometry:
            raise InferenceError(
                f"output {shorten(name)}: a drawn image (content_type image) needs the "
                "request to send images"
            )
        drawn = [
            draw_detections(image, geometry.original, row, self.labels)
            for image, geometry, row in zip(request.images, request.geometry, rows)
        ]
        return ImageCodec.encode_output(name, drawn)
