"""Model results -> response outputs: plain tensors, classification strings or PNG images.

What each requested output becomes is planned before the run (so a bad request fails early):
Triton's `parameters.classification: K` asks for the top K classes of any output, a
configured classification postprocess does it by default, and `content_type: image` (in the
request or the model-settings outputs) encodes images.
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
from .classification import Classifier, classify


@dataclass(frozen=True)
class Planned:
    name: str  # in the response
    source: str  # the model output it comes from
    top_k: Optional[int] = None  # classification strings when set
    image: bool = False


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
    ):
        self.specs = list(specs)
        self.classifier = classifier
        self._images = {m.name for m in declared or () if content_type_of(m.parameters) == IMAGE}

    def _strings_metadata(self, name: str, spec: TensorSpec) -> MetadataTensor:
        width = self.classifier.width
        return MetadataTensor(
            name=name, datatype="BYTES", shape=[spec.v2_shape[0], -1 if width is None else width]
        )

    def metadata(self) -> List[MetadataTensor]:
        """The model's outputs as clients see them: what a request without `outputs` gets."""
        specs = {spec.name: spec for spec in self.specs}
        return [
            self._strings_metadata(item.name, specs[item.source])
            if item.top_k
            else metadata_of(specs[item.source])
            for item in self._default_plan()
        ]

    def _default_plan(self) -> List[Planned]:
        plan = []
        for spec in self.specs:
            classifier = self.classifier
            if classifier is None or classifier.source != spec.name:
                plan.append(Planned(spec.name, spec.name, image=spec.name in self._images))
                continue
            if classifier.name != spec.name:
                plan.append(Planned(spec.name, spec.name))
            plan.append(Planned(classifier.name, spec.name, classifier.top_k))
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
            source = name
            if classifier is not None and name == classifier.name:
                source = classifier.source
                if count is None:
                    count = classifier.top_k
            content_type = content_type_of(request_output.parameters)
            image = content_type == IMAGE or (content_type is None and name in self._images)
            if image and count:
                raise InferenceError(
                    f"output {shorten(name)}: cannot be both classification strings and images"
                )
            plan.append(Planned(name, source, count or None, image))
        return plan

    def encode(
        self, plan: Sequence[Planned], results: Dict[str, np.ndarray], as_arrays: bool = False
    ) -> List[ResponseOutput]:
        """`as_arrays`: numeric tensors stay arrays (see tensors.encode_output)."""
        outputs = []
        for item in plan:
            array = results[item.source]
            if item.top_k:
                configured = self.classifier is not None and self.classifier.source == item.source
                labels = self.classifier.labels if configured else None
                softmax = self.classifier.softmax if configured else False
                try:
                    with stage("postprocess"):
                        strings = classify(array, item.top_k, labels, softmax)
                except ValueError as error:
                    raise InferenceError(f"output '{item.name}': {error}") from None
                outputs.append(encode_output(item.name, strings))
            elif item.image:
                try:
                    outputs.append(ImageCodec.encode_output(item.name, array))
                except ValueError as error:
                    raise InferenceError(f"output '{item.name}': {error}") from None
            else:
                outputs.append(encode_output(item.name, array, as_arrays))
        return outputs
