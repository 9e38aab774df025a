"""Request inputs -> model feeds: encoded images go through the image codec and the
preprocessing into the tensor of the model input they name; other tensors are decoded as
they are (tensors.py). The geometry of every image row and the decoded images travel on with
the feeds, for the postprocessing (boxes back to the client's pixels, drawn results, crops)."""
import asyncio
import functools
from dataclasses import dataclass, field
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mlserver.errors import InferenceError
from PIL import Image
from mlserver.types import MetadataTensor, Parameters, RequestInput

from ..backends import TensorSpec
from ..codecs.budget import PixelBudget, Reserve
from ..codecs.image import CONTENT_TYPE as IMAGE, decode_images, original_size
from ..errors import ConfigurationError, shorten
from ..metrics import stage
from ..tensors import content_type_of, decode_input, decode_inputs, metadata_of
from .geometry import Geometry
from .preprocess import PreprocessError, Preprocessor


@dataclass
class Decoded:
    """One request's model feeds, and what the postprocessing needs to know of its images.

    tiles: how many consecutive rows (tiles) each request image gave when images are cut into
    tiles, else None. geometry: for each model input fed with images, the Geometry of each of
    its rows (row i of the feed came from geometry[name][i]). images: for each such input, the
    decoded upright images, one per request image (a JPEG may be decoded at a reduced scale:
    their Geometry.original is the size the client sent)."""

    feeds: Dict[str, np.ndarray]
    tiles: Optional[List[int]] = None
    geometry: Dict[str, List[Geometry]] = field(default_factory=dict)
    images: Dict[str, List[Image.Image]] = field(default_factory=dict)
    keep_images: bool = True


class InputDecoder:
    def __init__(
        self,
        specs: Sequence[TensorSpec],
        preprocess: Optional[Sequence[Any]],
        max_pixels: int,
        declared: Optional[Sequence[MetadataTensor]] = None,
        budget: Optional[PixelBudget] = None,
    ):
        """Compile the preprocessing for every model input that can take images.

        Without `preprocess`, images still work, with the defaults (mode, size, layout and
        dtype from the model). With it, at least one input must fit it, else the load fails.
        """
        self.specs = list(specs)
        self.max_pixels = max_pixels
        self._budget = budget
        self._preprocessors: Dict[str, Union[Preprocessor, ConfigurationError]] = {}
        for spec in self.specs:
            try:
                self._preprocessors[spec.name] = Preprocessor(preprocess or [], spec, max_pixels)
            except ConfigurationError as error:
                self._preprocessors[spec.name] = error
        fitting = [n for n, p in self._preprocessors.items() if isinstance(p, Preprocessor)]
        if preprocess is not None and self.specs and not fitting:
            raise next(iter(self._preprocessors.values()))
        declared_images = {
            m.name for m in declared or () if content_type_of(m.parameters) == IMAGE
        }
        # Inputs where a BYTES tensor without a content type is taken as images.
        self._images = declared_images or (set(fitting) if preprocess is not None else set())

    @property
    def tiled(self) -> bool:
        """Whether images are cut into tiles, so that one image gives several batch rows."""
        return any(
            isinstance(p, Preprocessor) and p.tiles is not None
            for name, p in self._preprocessors.items()
            if name in self._images
        )

    def metadata(self) -> List[MetadataTensor]:
        """Image inputs appear as BYTES [N] with content type `image`, what clients send."""
        return [
            MetadataTensor(
                name=spec.name,
                datatype="BYTES",
                shape=spec.v2_shape[:1],
                parameters=Parameters(content_type=IMAGE),
            )
            if spec.name in self._images
            else metadata_of(spec)
            for spec in self.specs
        ]

    def _is_image(self, request_input: RequestInput, spec: TensorSpec) -> bool:
        content_type = content_type_of(request_input.parameters)
        if content_type is not None:
            return content_type == IMAGE
        return request_input.datatype == "BYTES" and spec.name in self._images

    @property
    def image_inputs(self) -> List[str]:
        """The model inputs that take images (from their preprocessing or declaration)."""
        return [spec.name for spec in self.specs if spec.name in self._images]

    @functools.cached_property
    def image_input(self) -> Optional[str]:
        """The model input whose images' geometry the postprocessing maps back through: the
        first declared or preprocessed image input, else the model's only input that can
        take images."""
        if self.image_inputs:
            return self.image_inputs[0]
        able = [n for n, p in self._preprocessors.items() if isinstance(p, Preprocessor)]
        return able[0] if len(able) == 1 else None

    def preprocessor(self, name: str) -> Union[Preprocessor, ConfigurationError]:
        """The preprocessing compiled for input `name`, or why it does not fit that input."""
        return self._preprocessors[name]

    def warm_up_shape(
        self, name: str, fallback: Optional[Tuple[int, int]] = None
    ) -> Optional[List[int]]:
        """A feed shape for input `name` of batch 1 whose height and width are what the
        preprocessing gives (else `fallback`), when it is an image input."""
        preprocessor = self._preprocessors.get(name)
        if not isinstance(preprocessor, Preprocessor) or preprocessor.reshape is not None:
            return None
        size = preprocessor.warm_up_size() or fallback
        if size is None:
            return None
        channels = 1 if preprocessor.mode == "L" else 3
        if preprocessor.layout == "NCHW":
            return [1, channels, *size]
        return [1, *size, channels]

    def input_size(self, name: str) -> Optional[Tuple[int, int]]:
        """(height, width) the preprocessing gives input `name`'s images, when it is fixed."""
        preprocessor = self._preprocessors.get(name)
        return preprocessor.size if isinstance(preprocessor, Preprocessor) else None

    def _decode(self, request_input: RequestInput, spec: TensorSpec, decoded: Decoded
                ) -> np.ndarray:
        if not self._is_image(request_input, spec):
            return decode_input(request_input, spec)
        # decoded pixels count against the model's budget until preprocessed (budget.py)
        with self._budget.holding() if self._budget else nullcontext() as reserve:
            return self._decode_images(request_input, spec, decoded, reserve)

    def _decode_images(
        self, request_input: RequestInput, spec: TensorSpec, decoded: Decoded,
        reserve: Optional[Reserve],
    ) -> np.ndarray:
        preprocessor = self._preprocessors[spec.name]
        if isinstance(preprocessor, ConfigurationError):
            raise InferenceError(
                f"input {shorten(request_input.name)} cannot take images: {preprocessor}"
            )
        images = decode_images(request_input, self.max_pixels, preprocessor.draft_size, reserve)
        geometries = []
        for image in images:
            width, height = original_size(image)
            geometries.append(Geometry.of(height, width).resized(image.height, image.width))
        if decoded.keep_images:
            decoded.images[spec.name] = images
        try:
            with stage("preprocess"):
                if preprocessor.tiles is not None:
                    rows, geometries, decoded.tiles = preprocessor.cut(images, geometries)
                else:
                    rows = images
                feed, decoded.geometry[spec.name] = preprocessor(rows, geometries)
                return feed
        except PreprocessError as error:
            where = "" if error.index is None else f", batch index {error.index}"
            raise InferenceError(f"input {shorten(request_input.name)}{where}: {error}") from None

    async def decode(
        self, request_inputs: Sequence[RequestInput], keep_images: bool = True
    ) -> Decoded:
        """The model's feeds, with the tiles, geometry and images of the image inputs (the
        decoded images only with `keep_images`: they outlive the pixel budget's hold, so a
        request that draws nothing on them lets them go once preprocessed)."""
        decoded = Decoded({}, keep_images=keep_images)
        tiles: Dict[str, List[int]] = {}

        def decode(request_input: RequestInput, spec: TensorSpec) -> np.ndarray:
            decoded.tiles = None
            feed = self._decode(request_input, spec, decoded)
            if decoded.tiles is not None:
                tiles[spec.name] = decoded.tiles
            return feed

        # Decoding images is CPU work that releases the GIL: keep it off the event loop.
        if any(request_input.datatype == "BYTES" for request_input in request_inputs):
            decoded.feeds = await asyncio.to_thread(
                decode_inputs, request_inputs, self.specs, decode
            )
        else:
            decoded.feeds = decode_inputs(request_inputs, self.specs, decode)
        counts = list(tiles.values())
        if any(c != counts[0] for c in counts):
            raise InferenceError(
                "image inputs give different tiles: "
                + ", ".join(f"'{name}' {c}" for name, c in tiles.items())
            )
        decoded.tiles = counts[0] if counts else None
        return decoded
