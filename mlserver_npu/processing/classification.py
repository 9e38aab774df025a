"""Classification postprocessing: class scores -> Triton's classification extension strings.

Each batch row becomes its top K classes as `"score:index:label"` (`"score:index"` without a
labels file), best first, in a BYTES tensor of shape [N, K]; or, with `join`, the top-1 labels
of an image's rows (its tiles) joined into one string per image.
"""
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence

import numpy as np
from mlserver.errors import InferenceError
from mlserver.types import MetadataTensor, RequestOutput, ResponseOutput
from pydantic import BaseModel, ConfigDict, Field

from ..backends import TensorSpec
from ..errors import ConfigurationError, shorten
from ..tensors import encode_output
from .decoders.base import softmax as _softmax
from .postprocess import (
    BuildContext, Planned, Postprocess, RequestContext, chosen_output, per_image,
)

logger = logging.getLogger("mlserver.npu")


class ClassificationSettings(BaseModel):
    """`parameters.extra.postprocess` with `"type": "classification"`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["classification"]
    top_k: int = Field(5, ge=1, description="classes per batch row (at most all of them)")
    labels: Optional[str] = Field(None, description="one label per line, relative path")
    softmax: bool = Field(False, description="apply softmax to the scores first")
    output: Optional[str] = Field(
        None, description="the scores output; default: the model's only float output"
    )
    output_name: Optional[str] = Field(
        None, description="name of the strings output; default: replaces the scores output"
    )
    join: Optional[str] = Field(
        None, description="one string per image: the top-1 labels of its tiles, joined by this"
    )


def read_labels(path: Path) -> List[str]:
    """The labels of the file `parameters.extra.postprocess.labels` names, one a line."""
    if not path.is_file():
        raise ConfigurationError(
            f"labels file '{path}' ('parameters.extra.postprocess.labels') does not exist"
        )
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def classify(
    scores: np.ndarray, top_k: int, labels: Optional[Sequence[str]] = None, softmax: bool = False
) -> np.ndarray:
    """[N, ...] scores -> [N, K] `score:index[:label]` bytes; the non-batch axes are the classes."""
    scores = np.asarray(scores)
    if scores.dtype.kind not in "fiu":
        raise ValueError(f"classification needs numeric scores, not {scores.dtype.name}")
    flat = scores.reshape(len(scores), -1)
    if softmax:
        flat = _softmax(flat.astype(np.float64)).astype(np.float32)
    top_k = min(top_k, flat.shape[1])
    # stable, so equal scores keep the lower class index first
    order = np.argsort(-flat.astype(np.float64), axis=1, kind="stable")[:, :top_k]
    labels = labels or ()
    strings = np.empty(order.shape, dtype=object)
    for row, indices in enumerate(order):
        for column, index in enumerate(indices):
            value = flat[row, index]
            # C++ std::to_string, as Triton formats it: 6 decimals for floats
            text = f"{value:f}:{index}" if flat.dtype.kind == "f" else f"{value}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            strings[row, column] = text.encode()
    return strings


def join_top_labels(
    scores: np.ndarray, groups: Sequence[int], separator: str, labels: Optional[Sequence[str]]
) -> np.ndarray:
    """[rows, ...] scores -> [len(groups)] bytes: the top-1 label (the index without labels)
    of each row, the rows of each group joined by `separator`."""
    flat = np.asarray(scores).reshape(len(scores), -1)
    if flat.dtype.kind not in "fiu":
        raise ValueError(f"classification needs numeric scores, not {flat.dtype.name}")
    best = np.argmax(flat, axis=1)  # the first of equal scores, as in classify()
    names = [labels[i] if labels and i < len(labels) else str(i) for i in best.tolist()]
    joined = np.empty(len(groups), dtype=object)
    start = 0
    for index, count in enumerate(groups):
        joined[index] = separator.join(names[start : start + count]).encode()
        start += count
    return joined


@dataclass(frozen=True)
class Classifier:
    """A configured classification: which output, how many classes, which labels."""

    source: str  # the model output holding the scores
    name: str  # the response output holding the strings
    top_k: int
    labels: Optional[List[str]]
    softmax: bool
    classes: Optional[int]  # None when the output's class axes are dynamic
    join: Optional[str] = None

    @property
    def width(self) -> Optional[int]:
        """K of the [N, K] strings output, when the number of classes is known."""
        return None if self.classes is None else min(self.top_k, self.classes)

    @classmethod
    def build(
        cls,
        config: ClassificationSettings,
        outputs: Sequence[TensorSpec],
        resolve: Callable[[str], Path],
    ) -> "Classifier":
        """Check the configuration against the model's outputs; `resolve` finds the labels."""
        names = [spec.name for spec in outputs]
        if config.output is not None:
            source = chosen_output(config.output, outputs, "the class scores")
        else:
            floats = [spec for spec in outputs if np.dtype(spec.dtype).kind == "f"]
            candidates = outputs if len(outputs) == 1 else floats
            if len(candidates) != 1:
                raise ConfigurationError(
                    "cannot tell which output holds the class scores among "
                    f"{', '.join(names)}: set postprocess.output"
                )
            source = candidates[0]
        if np.dtype(source.dtype).kind not in "fiu":
            raise ConfigurationError(f"output '{source.name}' is not numeric: no class scores")
        name = config.output_name or source.name
        if name != source.name and name in names:
            raise ConfigurationError(
                f"postprocess.output_name '{name}' is already a model output"
            )

        dims = list(source.shape[1:])
        classes = math.prod(dims) if None not in dims else None
        labels = None
        if config.labels is not None:
            path = resolve(config.labels)
            labels = read_labels(path)
            if classes is not None and len(labels) < classes:
                raise ConfigurationError(
                    f"labels file '{path}' has {len(labels)} labels, but output "
                    f"'{source.name}' has {classes} classes"
                )
            if classes is not None and len(labels) > classes:
                logger.warning(
                    "labels file '%s' has %d labels for %d classes of output '%s': "
                    "the extra ones are never used", path, len(labels), classes, source.name,
                )
        return cls(
            source.name, name, config.top_k, labels, config.softmax, classes, config.join
        )


def class_count(request_output: Optional[RequestOutput]) -> Optional[int]:
    """Triton's classification extension: `parameters.classification` = K, 0 = raw scores."""
    if request_output is None:
        return None
    value = getattr(request_output.parameters, "classification", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InferenceError(
            f"output {shorten(request_output.name)}: parameters.classification must be a "
            f"non-negative integer (the number of classes), got {shorten(value)}"
        )
    return value


class Classification(Postprocess):
    """`"type": "classification"`: the top K classes of a scores output as strings."""

    Settings = ClassificationSettings

    def __init__(self, classifier: Classifier, batch: int, tiled: bool):
        self.classifier = classifier
        self.sources = [classifier.source]
        self.replaces = [classifier.source] if classifier.name == classifier.source else []
        self._batch = batch  # axis 0 of the scores output in the metadata (-1: any)
        self._tiled = tiled

    @classmethod
    def build(
        cls, settings: ClassificationSettings, outputs: Sequence[TensorSpec],
        context: BuildContext,
    ) -> "Classification":
        classifier = Classifier.build(settings, outputs, context.resolve)
        spec = next(spec for spec in outputs if spec.name == classifier.source)
        return cls(classifier, spec.v2_shape[0], context.tiled)

    def metadata(self) -> List[MetadataTensor]:
        classifier = self.classifier
        if classifier.join is not None:
            return [MetadataTensor(name=classifier.name, datatype="BYTES", shape=[-1])]
        width = classifier.width
        shape = [self._batch, -1 if width is None else width]
        if self._tiled:
            shape = [-1, *shape]  # [images, tiles, K]
        return [MetadataTensor(name=classifier.name, datatype="BYTES", shape=shape)]

    def plan(self, name: str, request_output: Optional[RequestOutput]) -> Planned:
        classifier = self.classifier
        count, join = class_count(request_output), None
        if count is None:
            count, join = classifier.top_k, classifier.join
        if not count:  # `classification: 0`: the raw scores under this name
            return Planned(name, classifier.source)
        return Planned(name, classifier.source, count, join=join, post=self)

    def encode(
        self,
        items: Sequence[Planned],
        results: Mapping[str, np.ndarray],
        request: RequestContext,
        options: Any,
    ) -> Dict[str, ResponseOutput]:
        encoded = {}
        for item in items:
            encoded[item.name] = classify_output(
                item, results[item.source], request.tiles, self.classifier
            )
        return encoded


def classify_output(
    item: Planned,
    scores: np.ndarray,
    tiles: Optional[Sequence[int]],
    classifier: Optional[Classifier] = None,
) -> ResponseOutput:
    """The strings output `item` (top_k, join) of `scores`, with the labels and softmax of
    `classifier` (the configured classification of these scores, if any)."""
    labels = classifier.labels if classifier else None
    softmax = classifier.softmax if classifier else False
    try:
        if item.join is not None:
            groups = tiles if tiles is not None else [1] * len(scores)
            strings = join_top_labels(scores, groups, item.join, labels)
        else:
            strings = classify(scores, item.top_k, labels, softmax)
            strings = per_image(item.name, strings, tiles)
    except ValueError as error:
        raise InferenceError(f"output '{item.name}': {error}") from None
    return encode_output(item.name, strings)
