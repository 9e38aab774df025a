"""The interface between a detector's output tensors and the detection postprocess.

A decoder turns the raw outputs of one model run into `Candidates` per batch row: boxes in
model-input pixels, scores and classes, before NMS (or after it, when the graph applied it:
`nms_done`). Thresholds beyond the confidence one, NMS, mapping back to the client's image,
labels and output tensors belong to the detection postprocess, so one decoder serves every
way of returning results.

Sizes are `(height, width)` in pixels of the model input, as numpy orders them.
"""
from dataclasses import dataclass
from typing import Callable, ClassVar, List, Mapping, Optional, Sequence, Tuple, Type

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


def pick_output(
    outputs: Sequence[TensorSpec],
    name: Optional[str],
    fits: Callable[[TensorSpec], bool],
    expected: str,
    key: str = "output",
) -> TensorSpec:
    """The output called `name`, else the only one that `fits` the layout."""
    if name is not None:
        for spec in outputs:
            if spec.name == name:
                return spec
        known = ", ".join(f"'{spec.name}'" for spec in outputs)
        raise ConfigurationError(f"decoder {key} '{name}' is not an output of the model ({known})")
    fitting = [spec for spec in outputs if fits(spec)]
    if len(fitting) == 1:
        return fitting[0]
    found = ", ".join(f"'{spec.name}' {shape_text(spec.shape)}" for spec in outputs)
    if not fitting:
        raise ConfigurationError(f"no model output has the shape {expected}; outputs: {found}")
    raise ConfigurationError(
        f"several outputs have the shape {expected} ({found}); name one in the decoder's '{key}'"
    )


def is_float(spec: TensorSpec) -> bool:
    return np.dtype(spec.dtype).kind == "f" or spec.quantization is not None


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def logit(probability: float) -> float:
    """The raw score above which sigmoid(score) > probability: thresholds on logits first, so
    only candidates pay for the exponential."""
    if probability <= 0.0:
        return -np.inf
    if probability >= 1.0:
        return np.inf
    return float(np.log(probability / (1.0 - probability)))


def as_float(array: np.ndarray) -> np.ndarray:
    return array if array.dtype == np.float32 else array.astype(np.float32)
