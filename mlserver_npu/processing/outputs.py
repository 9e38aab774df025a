"""Model results -> response outputs: plain tensors, classification strings or PNG images.

What each requested output becomes is planned before the run (so a bad request fails early):
Triton's `parameters.classification: K` asks for the top K classes of any output, a
configured classification postprocess does it by default, and `content_type: image` (in the
request or the model-settings outputs) encodes images.

When the preprocessing cuts images into tiles, the model's rows are tiles: outputs are
regrouped per request image ([images, tiles, ...]), and a classification with `join` gives one
string per image.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
from mlserver.errors import InferenceError
from mlserver.types import MetadataTensor, RequestOutput, ResponseOutput

from ..backends import TensorSpec
from ..codecs.image import CONTENT_TYPE as IMAGE, ImageCodec
from ..errors import shorten
from ..metrics import stage
from ..tensors import content_type_of, encode_output, metadata_of, requested_outputs
from .classification import Classifier, classify, join_top_labels


@dataclass(frozen=True)
class Planned:
    name: str  # in the response
    source: str  # the model output it comes from
    top_k: Optional[int] = None  # classification strings when set
    image: bool = False
    join: Optional[str] = None  # one string per image: its rows' top-1 labels, joined


def _class_count(request_output: RequestOutput) -> Optional[int]:
    """Triton's classification extension: `parameters.classification` = K, 0 = raw scores."""
    value = getattr(request_output.parameters, "classification", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InferenceError(
            f"output {shorten(request_output.name)}: parameters.classification must be a "
            f"non-negative integer (the number of classes), got {shorten(value)}"
        )
    return value


class OutputEncoder:
    def __init__(
        self,
        specs: Sequence[TensorSpec],
        classifier: Optional[Classifier] = None,
        declared: Optional[Sequence[MetadataTensor]] = None,
        tiled: bool = False,
    ):
        """`tiled`: the model's rows are tiles of the request's images (InputDecoder.tiled)."""
        self.specs = list(specs)
        self.classifier = classifier
        self.tiled = tiled
        self._images = {m.name for m in declared or () if content_type_of(m.parameters) == IMAGE}

    def _metadata(self, item: Planned, spec: TensorSpec) -> MetadataTensor:
        if item.join is not None:
            return MetadataTensor(name=item.name, datatype="BYTES", shape=[-1])
        if item.top_k:
            width = self.classifier.width
            tensor = MetadataTensor(
                name=item.name, datatype="BYTES",
                shape=[spec.v2_shape[0], -1 if width is None else width],
            )
        else:
            tensor = metadata_of(spec)
        if self.tiled and not item.image:
            tensor.shape = [-1, *tensor.shape]  # [images, tiles, ...]
        return tensor

    def metadata(self) -> List[MetadataTensor]:
        """The model's outputs as clients see them: what a request without `outputs` gets."""
        specs = {spec.name: spec for spec in self.specs}
        return [self._metadata(item, specs[item.source]) for item in self._default_plan()]

    def _default_plan(self) -> List[Planned]:
        plan = []
        for spec in self.specs:
            classifier = self.classifier
            if classifier is None or classifier.source != spec.name:
                plan.append(Planned(spec.name, spec.name, image=spec.name in self._images))
                continue
            if classifier.name != spec.name:
                plan.append(Planned(spec.name, spec.name))
            plan.append(Planned(classifier.name, spec.name, classifier.top_k, join=classifier.join))
        return plan

    def plan(self, request_outputs: Optional[Sequence[RequestOutput]]) -> List[Planned]:
        if not request_outputs:
            return self._default_plan()
        classifier = self.classifier
        alias = [classifier.name] if classifier and classifier.name != classifier.source else []
        names = requested_outputs(request_outputs, self.specs, also=alias)
        by_name: Dict[str, RequestOutput] = {o.name: o for o in request_outputs}
        plan = []
        for name in names:
            request_output = by_name[name]
            count = _class_count(request_output)
            source, join = name, None
            if classifier is not None and name == classifier.name:
                source = classifier.source
                if count is None:
                    count, join = classifier.top_k, classifier.join
            content_type = content_type_of(request_output.parameters)
            image = content_type == IMAGE or (content_type is None and name in self._images)
            if image and count:
                raise InferenceError(
                    f"output {shorten(name)}: cannot be both classification strings and images"
                )
            plan.append(Planned(name, source, count or None, image, join if count else None))
        return plan

    def encode(
        self,
        plan: Sequence[Planned],
        results: Dict[str, np.ndarray],
        tiles: Optional[Sequence[int]] = None,
        as_arrays: bool = False,
    ) -> List[ResponseOutput]:
        """`tiles`: how many consecutive rows (tiles) each request image gave, if it was cut;
        `as_arrays`: numeric tensors stay arrays (see tensors.encode_output)."""
        outputs = []
        for item in plan:
            array = results[item.source]
            if item.top_k:
                configured = self.classifier is not None and self.classifier.source == item.source
                labels = self.classifier.labels if configured else None
                softmax = self.classifier.softmax if configured else False
                try:
                    with stage("postprocess"):
                        if item.join is not None:
                            groups = tiles if tiles is not None else [1] * len(array)
                            strings = join_top_labels(array, groups, item.join, labels)
                        else:
                            strings = classify(array, item.top_k, labels, softmax)
                            strings = _per_image(item.name, strings, tiles)
                except ValueError as error:
                    raise InferenceError(f"output '{item.name}': {error}") from None
                outputs.append(encode_output(item.name, strings))
            elif item.image:
                try:
                    outputs.append(ImageCodec.encode_output(item.name, array))
                except ValueError as error:
                    raise InferenceError(f"output '{item.name}': {error}") from None
            else:
                outputs.append(
                    encode_output(item.name, _per_image(item.name, array, tiles), as_arrays)
                )
        return outputs


def _per_image(name: str, array: np.ndarray, tiles: Optional[Sequence[int]]) -> np.ndarray:
    """[rows, ...] -> [images, tiles, ...] when the rows are the tiles of the request's images."""
    if tiles is None:
        return array
    if len(set(tiles)) > 1:
        raise InferenceError(
            f"output '{name}': the images give different numbers of tiles ("
            + ", ".join(map(str, tiles))
            + "), which cannot make one tensor; ask for a joined classification output only, "
            "or send such images in separate requests"
        )
    return array.reshape(len(tiles), tiles[0], *array.shape[1:])
