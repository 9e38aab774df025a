"""The interface between a detector's output tensors and the detection postprocess.

A decoder turns the raw outputs of one model run into `Candidates` per batch row: boxes in
model-input pixels, scores and classes, before NMS (or after it, when the graph applied it:
`nms_done`). Thresholds beyond the confidence one, NMS, mapping back to the client's image,
labels and output tensors belong to the detection postprocess, so one decoder serves every
way of returning results.

Sizes are `(height, width)` in pixels of the model input, as numpy orders them.
"""
from dataclasses import dataclass
from typing import Callable, ClassVar, List, Literal, Mapping, Optional, Sequence, Tuple, Type

import numpy as np
from pydantic import BaseModel

from ...backends import TensorSpec
from ...errors import ConfigurationError

Size = Tuple[int, int]  # (height, width)


@dataclass
class Candidates:
    """One batch row's detections before NMS (or after, if the decoder's `nms_done`)."""

    boxes: np.ndarray  # [n, 4] float32 x1, y1, x2, y2 in model-input pixels
    scores: np.ndarray  # [n] float32
    classes: np.ndarray  # [n] int64
    keypoints: Optional[np.ndarray] = None  # [n, P, 2] float32 x, y in model-input pixels

    def __len__(self) -> int:
        return len(self.scores)


class Decoder:
    """One output layout. Subclasses set `Settings` (pydantic, extra="forbid", with a
    `type: Literal[...]`) and `nms_done`; `__init__` checks the model's outputs fit the layout
    and raises `ConfigurationError` naming the output, the shape found and the one expected."""

    Settings: ClassVar[Type[BaseModel]]
    nms_done: ClassVar[bool] = False

    sources: List[str]  # the model outputs it reads
    classes: Optional[int] = None  # number of classes when known
    keypoints: int = 0  # points per box in Candidates.keypoints (0: none)

    def __init__(
        self, settings: BaseModel, outputs: Sequence[TensorSpec], input_size: Optional[Size]
    ):
        self.settings = settings
        self.input_size = input_size

    def __call__(
        self, outputs: Mapping[str, np.ndarray], input_size: Size, confidence_threshold: float
    ) -> List[Candidates]:
        raise NotImplementedError


def empty_candidates(keypoints: Optional[int] = None) -> Candidates:
    return Candidates(
        boxes=np.zeros((0, 4), np.float32),
        scores=np.zeros(0, np.float32),
        classes=np.zeros(0, np.int64),
        keypoints=None if keypoints is None else np.zeros((0, keypoints, 2), np.float32),
    )


def shape_text(shape: Sequence[Optional[int]]) -> str:
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"


def shape_error(spec: TensorSpec, expected: str, why: str = "") -> ConfigurationError:
    """The load error of an output that does not fit a layout."""
    reason = f": {why}" if why else ""
    return ConfigurationError(
        f"output '{spec.name}' has shape {shape_text(spec.shape)}, expected {expected}{reason}"
    )


def named_output(outputs: Sequence[TensorSpec], name: str, key: str) -> TensorSpec:
    """The output called `name`, which the decoder's setting `key` names."""
    for spec in outputs:
        if spec.name == name:
            return spec
    known = ", ".join(f"'{spec.name}'" for spec in outputs)
    raise ConfigurationError(f"decoder {key} '{name}' is not an output of the model ({known})")


def outputs_text(outputs: Sequence[TensorSpec]) -> str:
    """The outputs as errors list them: 'name' [shape], ..."""
    return ", ".join(f"'{spec.name}' {shape_text(spec.shape)}" for spec in outputs)


def pick_output(
    outputs: Sequence[TensorSpec],
    name: Optional[str],
    fits: Callable[[TensorSpec], bool],
    expected: str,
    key: str = "output",
) -> TensorSpec:
    """The output called `name`, else the only one that `fits` the layout."""
    if name is not None:
        return named_output(outputs, name, key)
    fitting = [spec for spec in outputs if fits(spec)]
    if len(fitting) == 1:
        return fitting[0]
    found = outputs_text(outputs)
    if not fitting:
        raise ConfigurationError(f"no model output has the shape {expected}; outputs: {found}")
    raise ConfigurationError(
        f"several outputs have the shape {expected} ({found}); name one in the decoder's '{key}'"
    )


def is_float(spec: TensorSpec) -> bool:
    return np.dtype(spec.dtype).kind == "f" or spec.quantization is not None


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def softmax(values: np.ndarray) -> np.ndarray:
    """Softmax over axis 1."""
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def logit(probability: float) -> float:
    """The raw score above which sigmoid(score) > probability: thresholds on logits first, so
    only candidates pay for the exponential."""
    if probability <= 0.0:
        return -np.inf
    if probability >= 1.0:
        return np.inf
    return float(np.log(probability / (1.0 - probability)))


def real(outputs: Mapping[str, np.ndarray], spec: TensorSpec) -> np.ndarray:
    """Output `spec`'s array, in real values: a quantized integer output (an NPU's int8 head,
    a backend not asked to dequantize) through its scale and zero point."""
    array = np.asarray(outputs[spec.name])
    if spec.quantization is not None and array.dtype.kind in "iu":
        return spec.quantization.dequantize(array)
    return array


def as_float(array: np.ndarray) -> np.ndarray:
    return array if array.dtype == np.float32 else array.astype(np.float32)


BoxFormat = Literal["xyxy", "cxcywh", "yxyx", "xywh"]


def to_corners(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """[n, 4] boxes in `box_format` -> float32 x1, y1, x2, y2. `xywh` is the top-left corner
    and the size (COCO's), `cxcywh` the centre and the size, `yxyx` TensorFlow's corners."""
    boxes = as_float(boxes)
    if box_format == "xyxy":
        return np.ascontiguousarray(boxes)
    if box_format == "yxyx":
        return np.ascontiguousarray(boxes[:, [1, 0, 3, 2]])
    if box_format == "xywh":
        return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    half = boxes[:, 2:] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def looks_normalized(coordinates: np.ndarray) -> bool:
    """Whether box coordinates are fractions of the input: over all of a row's boxes (not only
    the candidates), pixel coordinates span the input; normalized ones stay within [0, 1],
    a little past it at the border."""
    return bool(coordinates.size == 0 or np.abs(coordinates).max() <= 1.5)


def input_scale(input_size: Size) -> np.ndarray:
    """x, y, x, y multipliers from normalized to input pixels."""
    height, width = input_size
    return np.array([width, height, width, height], np.float32)


def select(
    scores: np.ndarray, threshold: float, multi_label: bool = False
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of class scores [C, N] above `threshold`: (anchor indices, classes, scores).
    One per anchor, its best class (Ultralytics' predict), or with `multi_label` one per
    class above the threshold (Ultralytics' val, PaddleDetection's multiclass NMS)."""
    if multi_label:
        classes, anchors = np.nonzero(scores > threshold)
        return anchors, classes.astype(np.int64), scores[classes, anchors]
    best = scores.max(axis=0)
    anchors = np.flatnonzero(best > threshold)
    classes = scores[:, anchors].argmax(axis=0).astype(np.int64)
    return anchors, classes, best[anchors]
