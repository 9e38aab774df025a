"""Segmentation postprocessing: a per-pixel output -> class maps at the client's image size.

The mask output (per-pixel class scores NCHW or NHWC, an arg-maxed class map, or one channel
of probability cut at a threshold: masks.py) loses the letterbox padding, is resized to each
image's original size and becomes `class_map` INT32 [images, H, W]; requested with
`content_type: image` it is one palette PNG per image (its pixels are the class numbers).
Optionally `class_fractions` FP32 [images, classes], the share of each class's pixels, and,
when asked for, `segmentation_overlay`: the client's image with the classes blended in (PNG).
"""
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from mlserver.errors import InferenceError
from mlserver.types import MetadataTensor, Parameters, RequestOutput, ResponseOutput
from pydantic import BaseModel, ConfigDict, Field

from ..backends import TensorSpec
from ..codecs.image import CONTENT_TYPE as IMAGE, ImageCodec
from ..errors import ConfigurationError, shorten
from ..tensors import content_type_of, encode_output
from . import masks
from .classification import read_labels
from .detection import metadata_labels
from .draw import at_size
from .geometry import Geometry
from .postprocess import (
    BuildContext, Planned, Postprocess, RequestContext, check_output_names, chosen_output,
)

Colour = Tuple[int, int, int]


class SegmentationOutputs(BaseModel):
    """`output_names`: the name of each output in the response."""

    model_config = ConfigDict(extra="forbid")

    class_map: str = "class_map"
    fractions: str = "class_fractions"
    overlay: str = "segmentation_overlay"


class SegmentationSettings(BaseModel):
    """`parameters.extra.postprocess` with `"type": "segmentation"`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["segmentation"]
    output: Optional[str] = Field(None, description="the mask output; default: the only output")
    layout: masks.Layout = Field(
        "auto", description="nchw, nhwc (class scores), map (class numbers); auto: from the shape"
    )
    threshold: float = Field(
        0.5, ge=0, le=1, description="one-channel probability: foreground above it"
    )
    resample: masks.Resample = Field(
        "nearest", description="nearest: resize the class map; linear: the scores, then classes"
    )
    classes: Optional[int] = Field(
        None, ge=1, le=256, description="number of classes, when the output does not say"
    )
    labels: Union[str, List[str], None] = None
    palette: Optional[List[Tuple[int, int, int]]] = Field(
        None, description="[r, g, b] per class; default: PASCAL VOC's"
    )
    fractions: bool = Field(False, description="also return the share of each class's pixels")
    overlay_alpha: float = Field(0.5, ge=0, le=1)
    output_names: SegmentationOutputs = Field(default_factory=SegmentationOutputs)


def _check_image_shaped(
    spec: TensorSpec, kind: str, input_size: Optional[Tuple[int, int]]
) -> None:
    """Masks are a picture of the model input, often at a stride: a static height and width
    whose aspect ratio is more than twice off the input's (a [1, 14, 14641] output: 14 rows
    of a flattened 121x121 map) is no such picture, and class maps of it would be noise."""
    shape = spec.shape
    if input_size is None:
        return
    if kind in ("map", "probability_map") and len(shape) == 4:
        height, width = (shape[2], shape[3]) if shape[1] == 1 else (shape[1], shape[2])
    elif kind in ("map", "probability_map"):
        height, width = shape[1], shape[2]
    elif kind.endswith("nchw"):
        height, width = shape[2], shape[3]
    else:
        height, width = shape[1], shape[2]
    if height is None or width is None:
        return
    ratio = (height / width) / (input_size[0] / input_size[1])
    if not 0.5 <= ratio <= 2:
        raise ConfigurationError(
            f"postprocess 'segmentation': output '{spec.name}' {spec.v2_shape} is not a map of "
            f"the {input_size[0]}x{input_size[1]} model input: read as {kind}, it is "
            f"{height}x{width} (height x width); expected a map of about the input's aspect "
            "ratio, e.g. [batch, classes, height, width], [batch, height, width, classes] "
            "or [batch, height, width] (postprocess.layout)"
        )


class Segmentation(Postprocess):
    """`"type": "segmentation"`."""

    Settings = SegmentationSettings

    def __init__(
        self, settings: SegmentationSettings, spec: TensorSpec, kind: str,
        classes: Optional[int], labels: Optional[List[str]], input_size: Optional[Tuple[int, int]],
    ):
        self.settings = settings
        self.spec = spec
        self.kind = kind
        self.classes = classes
        self.labels = labels
        self.input_size = input_size
        self.sources = [spec.name]
        self.replaces = [spec.name]
        palette = masks.default_palette()
        if settings.palette:
            palette = palette.copy()
            palette[: len(settings.palette)] = np.asarray(settings.palette[:256], np.uint8)
        self.palette = palette

    @classmethod
    def build(
        cls, settings: SegmentationSettings, outputs: Sequence[TensorSpec],
        context: BuildContext,
    ) -> "Segmentation":
        if context.tiled:
            raise ConfigurationError(
                "postprocess 'segmentation' maps masks back to whole images: it does not take "
                "images cut into tiles"
            )
        check_output_names(settings.output_names, outputs)
        spec = chosen_output(settings.output, outputs, "the masks")
        try:
            kind = masks.mask_kind(spec.shape, np.dtype(spec.dtype), settings.layout)
        except ConfigurationError as error:
            raise ConfigurationError(
                f"postprocess 'segmentation': output '{spec.name}' {spec.v2_shape}: {error}"
            ) from None
        _check_image_shaped(spec, kind, context.input_size)
        classes = settings.classes
        if classes is None and kind.startswith("scores"):
            classes = spec.shape[1] if kind.endswith("nchw") else spec.shape[3]
        if classes is None and kind.startswith("probability"):
            classes = 2
        labels = cls._labels(settings, context)
        if classes is None and labels is not None:
            classes = len(labels)
        if settings.fractions and classes is None:
            raise ConfigurationError(
                "postprocess.fractions needs the number of classes: output "
                f"'{spec.name}' {spec.v2_shape} holds class numbers; set postprocess.classes"
            )
        return cls(settings, spec, kind, classes, labels, context.input_size)

    @staticmethod
    def _labels(settings: SegmentationSettings, context: BuildContext) -> Optional[List[str]]:
        if isinstance(settings.labels, list):
            return list(settings.labels)
        if isinstance(settings.labels, str):
            return read_labels(context.resolve(settings.labels))
        return metadata_labels(context.metadata)

    def metadata(self) -> List[MetadataTensor]:
        names = self.settings.output_names
        tensors = [MetadataTensor(name=names.class_map, datatype="INT32", shape=[-1, -1, -1])]
        if self.settings.fractions:
            tensors.append(MetadataTensor(
                name=names.fractions, datatype="FP32", shape=[-1, self.classes]
            ))
        tensors.append(MetadataTensor(
            name=names.overlay, datatype="BYTES", shape=[-1],
            parameters=Parameters(content_type=IMAGE),
        ))
        return tensors

    @property
    def default_names(self) -> List[str]:
        """The overlay is for people: only when asked for."""
        return [name for name in self.names if name != self.settings.output_names.overlay]

    def plan(self, name: str, request_output: Optional[RequestOutput]) -> Planned:
        names = self.settings.output_names
        key = {names.class_map: "class_map", names.fractions: "fractions",
               names.overlay: "overlay"}[name]
        image = key == "overlay" or (
            request_output is not None and content_type_of(request_output.parameters) == IMAGE
        )
        return Planned(name, post=self, image=image, option=key)

    def _maps(
        self, results: Mapping[str, np.ndarray], request: RequestContext
    ) -> List[np.ndarray]:
        output = results[self.spec.name]
        geometry = request.geometry
        if geometry:
            regions = [_content_box(g) for g in geometry]
            sizes = [g.original for g in geometry]
            input_size = geometry[0].input_size
        else:  # a tensor was sent: maps at the model input's size (else the mask's own)
            rows = len(output)
            size = self.input_size or tuple(masks._hwc(output[:1], self.kind).shape[1:3])
            regions = [(0.0, 0.0, float(size[1]), float(size[0]))] * rows
            sizes = [size] * rows
            input_size = size
        return masks.class_maps(
            output, self.kind, regions, input_size, sizes, self.settings.threshold,
            self.settings.resample,
        )

    def encode(
        self,
        items: Sequence[Planned],
        results: Mapping[str, np.ndarray],
        request: RequestContext,
        options: Any,
    ) -> Dict[str, ResponseOutput]:
        maps = self._maps(results, request)
        encoded = {}
        for item in items:
            if item.option == "fractions":
                fractions = np.stack([masks.class_fractions(m, self.classes) for m in maps])
                encoded[item.name] = encode_output(item.name, fractions, request.as_arrays)
            elif item.option == "overlay":
                encoded[item.name] = self._overlay(item.name, maps, request)
            elif item.image:
                try:
                    pngs = [masks.palette_png(m, self.palette) for m in maps]
                except ValueError as error:
                    raise InferenceError(f"output {shorten(item.name)}: {error}") from None
                encoded[item.name] = ImageCodec.encode_output(item.name, pngs)
            else:
                if len({m.shape for m in maps}) > 1:
                    raise InferenceError(
                        f"output {shorten(item.name)}: the images differ in size, so their "
                        "class maps cannot make one tensor; ask for it as images "
                        "(content_type image: one palette PNG per image), or send such "
                        "images in separate requests"
                    )
                encoded[item.name] = encode_output(item.name, np.stack(maps), request.as_arrays)
        return encoded

    def _overlay(
        self, name: str, maps: List[np.ndarray], request: RequestContext
    ) -> ResponseOutput:
        if not request.images:
            raise InferenceError(
                f"output {shorten(name)}: an overlay needs the request to send images"
            )
        pictures = []
        for image, class_map in zip(request.images, maps):
            # the maps are at the client's size; an image decoded smaller is enlarged to it
            rgb = np.asarray(at_size(image, class_map.shape).convert("RGB"))
            pictures.append(masks.overlay(
                rgb, np.clip(class_map, 0, 255), self.palette, self.settings.overlay_alpha
            ))
        return ImageCodec.encode_output(name, pictures)


def _content_box(geometry: Geometry) -> Tuple[float, float, float, float]:
    """x1, y1, x2, y2 in model-input pixels of the part of the input that shows the image."""
    x1, y1 = geometry.to_input(np.float32([0, 0])).tolist()
    x2, y2 = geometry.to_input(np.float32(geometry.original[::-1])).tolist()
    height, width = geometry.input_size
    return (
        min(max(x1, 0.0), width), min(max(y1, 0.0), height),
        min(max(x2, 0.0), width), min(max(y2, 0.0), height),
    )
