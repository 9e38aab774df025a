"""Request inputs -> model feeds: encoded images go through the image codec and the
preprocessing into the tensor of the model input they name; other tensors are decoded as
they are (tensors.py)."""
import asyncio
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mlserver.errors import InferenceError
from mlserver.types import MetadataTensor, Parameters, RequestInput

from ..backends import TensorSpec
from ..codecs.budget import PixelBudget, Reserve
from ..codecs.image import CONTENT_TYPE as IMAGE, decode_images
from ..errors import ConfigurationError, shorten
from ..metrics import stage
from ..tensors import content_type_of, decode_input, decode_inputs, metadata_of
from .preprocess import PreprocessError, Preprocessor


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
        self._max_pixels = max_pixels
        self._budget = budget
        self._preprocessors: Dict[str, Union[Preprocessor, ConfigurationError]] = {}
        for spec in self.specs:
            try:
                self._preprocessors[spec.name] = Preprocessor(preprocess or [], spec)
            except ConfigurationError as error:
                self._preprocessors[spec.name] = error
        fitting = [n for n, p in self._preprocessors.items() if isinstance(p, Preprocessor)]
        if preprocess is not None and not fitting:
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

    def _decode(
        self, request_input: RequestInput, spec: TensorSpec, tiles: Dict[str, List[int]],
        reserve: Optional[Reserve] = None,
    ) -> np.ndarray:
        if not self._is_image(request_input, spec):
            return decode_input(request_input, spec)
        preprocessor = self._preprocessors[spec.name]
        if isinstance(preprocessor, ConfigurationError):
            raise InferenceError(
                f"input {shorten(request_input.name)} cannot take images: {preprocessor}"
            )
        images = decode_images(request_input, self._max_pixels, preprocessor.draft_size, reserve)
        try:
            with stage("preprocess"):
                if preprocessor.tiles is not None:
                    images, tiles[spec.name] = preprocessor.cut(images)
                return preprocessor(images)
        except PreprocessError as error:
            where = "" if error.index is None else f", batch index {error.index}"
            raise InferenceError(f"input {shorten(request_input.name)}{where}: {error}") from None

    async def decode(
        self, request_inputs: Sequence[RequestInput]
    ) -> Tuple[Dict[str, np.ndarray], Optional[List[int]]]:
        """The model's feeds, and the number of tiles of each image when images are cut into
        tiles (their rows are consecutive in the feeds), else None."""
        tiles: Dict[str, List[int]] = {}

        def decode(request_input: RequestInput, spec: TensorSpec) -> np.ndarray:
            # decoded pixels count against the model's budget until preprocessed (budget.py)
            with self._budget.holding() if self._budget else nullcontext() as reserve:
                return self._decode(request_input, spec, tiles, reserve)

        # Decoding images is CPU work that releases the GIL: keep it off the event loop.
        if any(request_input.datatype == "BYTES" for request_input in request_inputs):
            feeds = await asyncio.to_thread(decode_inputs, request_inputs, self.specs, decode)
        else:
            feeds = decode_inputs(request_inputs, self.specs, decode)
        counts = list(tiles.values())
        if any(c != counts[0] for c in counts):
            raise InferenceError(
                "image inputs give different tiles: "
                + ", ".join(f"'{name}' {c}" for name, c in tiles.items())
            )
        return feeds, (counts[0] if counts else None)
