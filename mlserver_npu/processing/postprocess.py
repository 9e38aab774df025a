"""Postprocess types: `parameters.extra.postprocess` turns model outputs into what clients want
(classification strings, boxes, masks, text), one module per type behind one interface.

Each type is a `Postprocess` subclass with a pydantic `Settings` (`type: Literal[...]`,
extra keys refused), in the shape of OpenVINO model_api's model wrappers. At load it is built
against the model's output specs (`build`), checks that they fit, and describes the outputs it
adds (`metadata`); per request it plans the outputs asked for (a bad request fails before the
run: `plan`, `options`) and encodes them from the results, the geometry of each image row and
the decoded images (`encode`). `postprocess` takes one object or a list, so a model can have
e.g. a detection and a segmentation output.

To add a type: a module with its subclass, and one line in `registry()`.
"""
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Type,
)

import numpy as np
from mlserver.errors import InferenceError
from mlserver.types import MetadataTensor, Parameters, RequestOutput, ResponseOutput
from PIL import Image
from pydantic import BaseModel

from ..backends import TensorSpec
from ..errors import ConfigurationError, shorten
from .geometry import Geometry


@dataclass(frozen=True)
class BuildContext:
    """What a postprocess may use at load, besides its settings and the model's outputs.

    resolve: a path named in the settings (labels, palettes) -> the file, relative to the model
    folder (stages.path_resolver, the one place that decides where such files may be).
    metadata: the model file's own metadata map (ONNX custom metadata: Ultralytics' `names`,
    `imgsz`, `task`; PaddleOCR's `character`), {} when it has none.
    input_size: (height, width) of the model's image input when it is fixed (by the model or
    the preprocessing), else None. image_input: the model input fed with images, if any.
    tiled: images are cut into tiles (one request image gives several rows).
    """

    resolve: Callable[[str], Path]
    metadata: Mapping[str, str] = field(default_factory=dict)
    input_size: Optional[Tuple[int, int]] = None
    image_input: Optional[str] = None
    tiled: bool = False


@dataclass
class RequestContext:
    """One request, as its postprocessing sees it.

    geometry: the Geometry of each model row fed from images (BuildContext.image_input), None
    when the client sent a tensor instead of images (results then stay in model-input
    pixels). images: the decoded upright images, one per request image, None without images.
    tiles: rows per request image when images are cut into tiles. as_arrays: numeric outputs
    may stay numpy arrays (tensors.encode_output)."""

    geometry: Optional[List[Geometry]] = None
    images: Optional[List[Image.Image]] = None
    tiles: Optional[List[int]] = None
    as_arrays: bool = False


@dataclass(frozen=True)
class Planned:
    """One requested output: `name` in the response, from the model output `source` (raw, or
    Triton classification strings when `top_k` is set), or made by the postprocess `post`
    (with the per-output choices `option` it planned)."""

    name: str
    source: Optional[str] = None
    top_k: Optional[int] = None
    image: bool = False
    join: Optional[str] = None
    post: Optional["Postprocess"] = field(default=None, compare=False)
    option: Any = None


class Postprocess:
    """One configured postprocess of a model (or a pipeline)."""

    Settings: ClassVar[Type[BaseModel]]

    sources: List[str]  # the model outputs it reads
    replaces: List[str]  # model outputs left out of a response that names no outputs

    @classmethod
    def build(
        cls, settings: Any, outputs: Sequence[TensorSpec], context: BuildContext
    ) -> "Postprocess":
        """Check `settings` against the model's `outputs`: a ConfigurationError says what
        does not fit (the output, the shape found and the shape expected)."""
        raise NotImplementedError

    def metadata(self) -> List[MetadataTensor]:
        """The outputs it can add, in order (`default_names`: those a request that names no
        outputs gets)."""
        raise NotImplementedError

    @functools.cached_property
    def names(self) -> List[str]:
        """The names of `metadata()`, fixed once built (read per request by pipelines)."""
        return [tensor.name for tensor in self.metadata()]

    @property
    def type_name(self) -> str:
        """The `type` of its settings."""
        return self.Settings.model_fields["type"].annotation.__args__[0]

    def describe(self) -> Dict[str, Any]:
        """What `inspect` shows of it."""
        return {"type": self.type_name, "reads": list(self.sources), "outputs": self.names}

    @property
    def default_names(self) -> List[str]:
        """The outputs a request that names none gets (`names` but those only for people,
        e.g. an overlay image)."""
        return self.names

    def plan(self, name: str, request_output: Optional[RequestOutput]) -> Planned:
        """The output `name` (one of `names`) as `request_output` asks for it (None: as
        configured); an InferenceError for a request it cannot honour."""
        return Planned(name, post=self)

    def options(self, parameters: Optional[Parameters]) -> Any:
        """This request's choices from the request `parameters` (per-request overrides),
        validated: an InferenceError naming the parameter."""
        return None

    def encode(
        self,
        items: Sequence[Planned],
        results: Mapping[str, np.ndarray],
        request: RequestContext,
        options: Any,
    ) -> Dict[str, ResponseOutput]:
        """The planned outputs, by name, from the model's results of one request."""
        raise NotImplementedError


@functools.lru_cache(maxsize=None)
def registry() -> Dict[str, Type[Postprocess]]:
    """Postprocess types by their `type` name."""
    from .classification import Classification
    from .ctc import CTC
    from .detection import Detection
    from .segmentation import Segmentation
    from .text_detection import TextDetection

    types = (Classification, Detection, Segmentation, TextDetection, CTC)
    return {cls.Settings.model_fields["type"].annotation.__args__[0]: cls for cls in types}


def settings_type() -> Any:
    """The type of `postprocess` in model-settings: one object or a list of them, each
    validated by the Settings of its `type`."""
    from typing import Annotated, List as ListOf, Union

    from pydantic import BeforeValidator, Field

    item = Annotated[
        Union[tuple(cls.Settings for cls in registry().values())],  # type: ignore[misc]
        Field(discriminator="type"),
    ]
    return Annotated[
        ListOf[item],  # type: ignore[valid-type]
        BeforeValidator(lambda value: value if isinstance(value, list) else [value]),
    ]


def error_location(loc: Sequence[Any], raw: Any) -> Tuple[Any, ...]:
    """A pydantic error location under `postprocess` as the user wrote it: without the
    type tag pydantic inserts, and without the list index when `raw` (the user's
    `postprocess` value) is one object."""
    loc = list(loc)
    if len(loc) > 1 and loc[0] == "postprocess" and isinstance(loc[1], int):
        if len(loc) > 2 and loc[2] in registry():
            del loc[2]
        if not isinstance(raw, list):
            del loc[1]
    return tuple(loc)


def build_all(
    configs: Optional[Sequence[Any]], outputs: Sequence[TensorSpec], context: BuildContext
) -> List[Postprocess]:
    """Every configured postprocess, built; their output names must not collide."""
    built: List[Postprocess] = []
    model_outputs = {spec.name for spec in outputs}
    taken: Dict[str, str] = {}
    for config in configs or ():
        post = registry()[config.type].build(config, outputs, context)
        for name in post.names:
            if name in taken:
                raise ConfigurationError(
                    f"postprocess '{config.type}' and '{taken[name]}' both output '{name}': "
                    "rename one (its output names are settings)"
                )
            if name in model_outputs and name not in post.replaces:
                raise ConfigurationError(
                    f"postprocess '{config.type}' output '{name}' is already a model output"
                )
            taken[name] = config.type
        built.append(post)
    return built


def check_output_names(names: BaseModel, outputs: Sequence[TensorSpec]) -> None:
    """An `output_names` entry set to a model output's name would hide that output: a load
    error naming both. Defaults may equal the model's own (a TF detector's detection_boxes,
    which the postprocess replaces on purpose): only names the settings give are checked."""
    model_outputs = {spec.name for spec in outputs}
    for key in sorted(names.model_fields_set):
        name = getattr(names, key)
        if name in model_outputs:
            raise ConfigurationError(
                f"postprocess.output_names.{key} '{name}' is the name of a model output, "
                "which it would hide: choose another name"
            )


def check_parameter(name: str, value: Any, kind: type, low: float, high: float) -> Any:
    """A per-request override from the request `parameters`: a number of `kind` (int or
    float) within [low, high], else a 400 naming the parameter. A string holding a number is
    taken too: MLServer's gRPC parameters have no floating-point field (tritonclient's
    double_param never arrives), so gRPC clients send "0.5"."""
    wanted = "an integer" if kind is int else "a number"
    if isinstance(value, str):
        try:
            value = float(value.strip()) if value.strip() else None
        except ValueError:
            value = None
        if value is None or not math.isfinite(value):
            raise InferenceError(
                f"parameter '{name}' must be {wanted} from {low:g} to {high:g}, got a string "
                "that is no number"
            )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        kind is int and not float(value).is_integer()
    ):
        raise InferenceError(
            f"parameter '{name}' must be {wanted} from {low:g} to {high:g}, got {shorten(value)}"
        )
    if not low <= value <= high:
        raise InferenceError(
            f"parameter '{name}' must be from {low:g} to {high:g}, got {shorten(value)}"
        )
    return kind(value)


def request_parameter(
    parameters: Optional[Parameters], name: str, kind: type, low: float, high: float
) -> Any:
    """The request parameter `name` checked by check_parameter, or None when the request has
    none (MLServer keeps parameters it does not know as extras)."""
    if parameters is None:
        return None
    extras = parameters.model_extra or {}
    if name in extras and extras[name] is None:
        wanted = "an integer" if kind is int else "a number"
        # REST's null and gRPC's double_param (MLServer's protocol has none) both arrive so
        raise InferenceError(
            f"parameter '{name}' must be {wanted} from {low:g} to {high:g}, got null; over "
            f"gRPC, where a double_param arrives empty, send the number as a string, e.g. "
            f"'{name}': '0.5'"
        )
    value = extras.get(name, getattr(parameters, name, None))
    return None if value is None else check_parameter(name, value, kind, low, high)


def chosen_output(
    configured: Optional[str], outputs: Sequence[TensorSpec], what: str
) -> TensorSpec:
    """The model output a postprocess reads: `postprocess.output` when set, else the model's
    only output; `what` says what it holds, for the error."""
    names = [spec.name for spec in outputs]
    if configured is not None:
        if configured not in names:
            raise ConfigurationError(
                f"postprocess.output '{configured}' is not a model output; the model's outputs "
                f"are: {', '.join(names)}"
            )
        return outputs[names.index(configured)]
    if len(outputs) != 1:
        raise ConfigurationError(
            f"cannot tell which output holds {what} among {', '.join(names)}: set "
            "postprocess.output"
        )
    return outputs[0]


def per_image(name: str, array: np.ndarray, tiles: Optional[Sequence[int]]) -> np.ndarray:
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
