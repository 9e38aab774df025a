"""Model results -> response outputs: plain tensors, classification strings, PNG images, or
what the configured postprocesses make (postprocess.py).

What each requested output becomes is planned before the run (so a bad request fails early):
Triton's `parameters.classification: K` asks for the top K classes of any output, a
configured postprocess makes its own outputs (and replaces the model outputs it consumes in a
response that names no outputs), and `content_type: image` (in the request or the
model-settings outputs) encodes images.

When the preprocessing cuts images into tiles, the model's rows are tiles: outputs are
regrouped per request image ([images, tiles, ...]), and a classification with `join` gives one
string per image.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from mlserver.errors import InferenceError
from mlserver.types import MetadataTensor, Parameters, RequestOutput, ResponseOutput

from ..backends import TensorSpec
from ..codecs.image import CONTENT_TYPE as IMAGE, ImageCodec
from ..errors import shorten
from ..metrics import stage
from ..tensors import content_type_of, encode_output, metadata_of, requested_outputs
from .classification import Classification, class_count, classify_output
from .postprocess import Planned, Postprocess, RequestContext, per_image


@dataclass
class Plan:
    """A request's outputs, in order, and each postprocess's options for this request."""

    items: List[Planned]
    options: Dict[int, Any] = field(default_factory=dict)  # by id() of the postprocess


class OutputEncoder:
    def __init__(
        self,
        specs: Sequence[TensorSpec],
        postprocesses: Sequence[Postprocess] = (),
        declared: Optional[Sequence[MetadataTensor]] = None,
        tiled: bool = False,
    ):
        """`tiled`: the model's rows are tiles of the request's images (InputDecoder.tiled)."""
        self.specs = list(specs)
        self.postprocesses = list(postprocesses)
        self.tiled = tiled
        self._images = {m.name for m in declared or () if content_type_of(m.parameters) == IMAGE}
        self._made_by = {name: post for post in self.postprocesses for name in post.names}
        # the names postprocesses add to the model's own outputs
        self._added = [name for name in self._made_by if name not in {s.name for s in self.specs}]
        self._default: Optional[List[Planned]] = None  # the plan of a request that names none

    def _classification_of(self, source: str) -> Optional[Classification]:
        """The configured classification of the model output `source`, if any."""
        return next(
            (
                post for post in self.postprocesses
                if isinstance(post, Classification) and post.classifier.source == source
            ),
            None,
        )

    def _metadata(self, item: Planned) -> MetadataTensor:
        spec = next(spec for spec in self.specs if spec.name == item.source)
        tensor = metadata_of(spec)
        if self.tiled and not item.image:
            tensor.shape = [-1, *tensor.shape]  # [images, tiles, ...]
        return tensor

    def metadata(self) -> List[MetadataTensor]:
        """The model's outputs as clients see them: what a request without `outputs` gets,
        then the postprocesses' outputs given only when asked for (e.g. overlay images)."""
        made = {
            tensor.name: tensor for post in self.postprocesses for tensor in post.metadata()
        }
        plan = self._default_plan()
        listed = [
            made[item.name] if item.post is not None else self._metadata(item) for item in plan
        ]
        planned = {item.name for item in plan}
        return listed + [tensor for name, tensor in made.items() if name not in planned]

    def _default_plan(self) -> List[Planned]:
        """Each model output not replaced, in the model's order; each postprocess's outputs
        after the first model output it reads."""
        replaced = {name for post in self.postprocesses for name in post.replaces}
        placed = set()
        plan = []
        for spec in self.specs:
            if spec.name not in replaced:
                plan.append(Planned(spec.name, spec.name, image=spec.name in self._images))
            for post in self.postprocesses:
                if id(post) not in placed and spec.name in post.sources:
                    placed.add(id(post))
                    plan.extend(post.plan(name, None) for name in post.default_names)
        for post in self.postprocesses:  # ones that read no model output by name
            if id(post) not in placed:
                plan.extend(post.plan(name, None) for name in post.default_names)
        return plan

    def plan(
        self,
        request_outputs: Optional[Sequence[RequestOutput]],
        parameters: Optional[Parameters] = None,
    ) -> Plan:
        """The outputs `request_outputs` ask for (all by default), checked; `parameters`: the
        request's, for the postprocesses' per-request overrides."""
        if not request_outputs:
            if self._default is None:
                self._default = self._default_plan()
            items = self._default
        else:
            names = requested_outputs(request_outputs, self.specs, also=self._added)
            by_name: Dict[str, RequestOutput] = {o.name: o for o in request_outputs}
            items = [self._plan_one(name, by_name[name]) for name in names]
        plan = Plan(items)
        for item in items:
            if item.post is not None and id(item.post) not in plan.options:
                plan.options[id(item.post)] = item.post.options(parameters)
        return plan

    def _plan_one(self, name: str, request_output: RequestOutput) -> Planned:
        content_type = content_type_of(request_output.parameters)
        image = content_type == IMAGE or (content_type is None and name in self._images)
        post = self._made_by.get(name)
        item = post.plan(name, request_output) if post is not None else None
        if item is None or item.post is None:
            if item is not None:  # raw, e.g. classification 0
                name, source, count = item.name, item.source, None
            else:
                source, count = name, class_count(request_output)
            item = Planned(name, source, count or None, image)
        if item.top_k and image:
            raise InferenceError(
                f"output {shorten(name)}: cannot be both classification strings and images"
            )
        return item

    def encode(
        self,
        plan: Plan,
        results: Dict[str, np.ndarray],
        request: Optional[RequestContext] = None,
    ) -> List[ResponseOutput]:
        """The planned outputs of one request's `results`."""
        request = request or RequestContext()
        tiles = request.tiles
        made: Dict[str, ResponseOutput] = {}
        for post in self.postprocesses:
            items = [item for item in plan.items if item.post is post]
            if items:
                with stage("postprocess"):
                    made.update(post.encode(items, results, request, plan.options[id(post)]))
        outputs = []
        for item in plan.items:
            if item.post is not None:
                outputs.append(made[item.name])
                continue
            array = results[item.source]
            if item.top_k:  # Triton's classification extension on a model output
                configured = self._classification_of(item.source)
                with stage("postprocess"):
                    outputs.append(classify_output(
                        item, array, tiles, configured.classifier if configured else None
                    ))
            elif item.image:
                try:
                    outputs.append(ImageCodec.encode_output(item.name, array))
                except ValueError as error:
                    raise InferenceError(f"output '{item.name}': {error}") from None
            else:
                outputs.append(
                    encode_output(item.name, per_image(item.name, array, tiles), request.as_arrays)
                )
        return outputs
