"""The `image` content type: a BYTES tensor of shape [N] (or [N, 1], as Triton clients send)
holding one encoded image per batch element (JPEG, PNG, BMP, WebP, GIF, ...).

What arrives differs by protocol: REST JSON cannot carry raw bytes, so clients send base64
strings (MLServer hands them over still encoded, or as a bare string for `"data": "..."`);
gRPC carries the file bytes as they are. Image outputs are PNG files, base64-encoded as
MLServer's `base64` codec does, so REST JSON can carry them.
"""
import base64
import binascii
import io
import math
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
from mlserver.codecs import InputCodec, register_input_codec
from mlserver.errors import InferenceError
from mlserver.types import Parameters, RequestInput, ResponseOutput
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..errors import shorten
from ..tensors import flatten

CONTENT_TYPE = "image"
ORIGINAL_SIZE = "mlserver_npu.original_size"  # key in a decoded image's `info`

# (width, height) of the upright image -> the smallest (width, height) the preprocessing
# needs, or None when it needs the full resolution.
DraftSize = Callable[[Tuple[int, int]], Optional[Tuple[int, int]]]

# EXIF orientations 5..8 store the image transposed (width and height swapped).
_TRANSPOSED = {5, 6, 7, 8}

# Deflate compresses at most 1032:1 and a PNG pixel takes at least one bit, so a PNG shorter
# than width * height / 8 / 1032 bytes cannot be what its header says: it is refused before
# Pillow allocates the claimed size (which it would fill with zeros past the data's end).
_DEFLATE_MAX_RATIO = 1032


class ImageError(ValueError):
    """One payload is not a usable image; the message says why, without naming the input."""


def _payloads(data: Any, rank: int) -> List[Any]:
    """The request's data as a flat list: a bare `"data": "..."` is one image."""
    if isinstance(data, (str, bytes)):
        return [data]
    return flatten(data, rank)


def _b64decode(text: Union[str, bytes]) -> bytes:
    """Strict base64, tolerating line breaks (`base64` wraps at 76) and a `data:` URL prefix."""
    if isinstance(text, str):
        if text.startswith("data:") and ";base64," in text[:100]:
            text = text.split(",", 1)[1]
        text = text.encode("ascii", errors="strict")
    return base64.b64decode(b"".join(text.split()), validate=True)


def payload_bytes(payload: Any) -> bytes:
    """A str is base64 (REST JSON); bytes are the file itself (gRPC)."""
    if isinstance(payload, str):
        try:
            return _b64decode(payload)
        except (binascii.Error, UnicodeEncodeError, ValueError) as error:
            raise ImageError(f"not valid base64 ({error})") from None
    if isinstance(payload, bytes):
        return payload
    raise ImageError(f"expected a base64 string or bytes, got {type(payload).__name__}")


def _open(data: bytes) -> Image.Image:
    """Pillow's lazy open: the header is read, no pixel yet."""
    if not data:
        raise ImageError("empty payload")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageError(str(error)) from None
    except Exception as error:  # Pillow raises several kinds for unknown bytes
        reason = "unknown format" if isinstance(error, UnidentifiedImageError) else error
        raise ImageError(
            f"not a decodable image ({reason}; {len(data)} bytes starting {data[:8]!r})"
        ) from None


def open_image(data: bytes, max_pixels: int, draft_size: Optional[DraftSize] = None) -> Image.Image:
    """Decode one encoded image, upright (EXIF orientation applied), first frame only.

    The pixel count is checked from the header, before any pixel is decoded. A JPEG is
    decoded at 1/2, 1/4 or 1/8 scale when `draft_size` says that is still large enough.
    """
    try:
        image = _open(data)
    except ImageError as error:
        try:  # bytes that are base64 text, as MLServer's own base64 codec sends them (once)
            data = _b64decode(data)
        except (binascii.Error, ValueError):
            raise error from None
        image = _open(data)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"{width}x{height} image has {width * height} pixels, over the limit of "
            f"{max_pixels} (parameters.extra.max_image_pixels, by default "
            "MLSERVER_NPU_MAX_IMAGE_PIXELS)"
        )
    if image.format == "PNG" and len(data) * _DEFLATE_MAX_RATIO * 8 < width * height:
        raise ImageError(
            f"{len(data)} bytes of PNG data cannot hold the {width}x{height} pixels its header "
            "claims"
        )
    upright = None  # the upright size the client sent, when a draft decode shrinks it
    if draft_size is not None and image.format == "JPEG":
        transposed = image.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSED
        upright = (height, width) if transposed else (width, height)
        wanted = draft_size(upright)
        if wanted is not None:
            image.draft(None, wanted[::-1] if transposed else wanted)
    try:
        image.load()
    except Exception as error:  # truncated or corrupt pixel data
        raise ImageError(f"cannot decode the {image.format} data ({error})") from None
    ImageOps.exif_transpose(image, in_place=True)
    image.info[ORIGINAL_SIZE] = upright or image.size  # for geometry.py
    return image


def original_size(image: Image.Image) -> Tuple[int, int]:
    """(width, height) of the upright image as the client sent it, before a draft decode."""
    return image.info.get(ORIGINAL_SIZE, image.size)


def decode_images(
    request_input: RequestInput, max_pixels: int, draft_size: Optional[DraftSize] = None
) -> List[Image.Image]:
    """All images of one request input; a bad one is a 400 naming the input and its index."""
    name = shorten(request_input.name)
    if request_input.datatype != "BYTES":
        raise InferenceError(
            f"input {name}: content type '{CONTENT_TYPE}' needs datatype BYTES "
            f"(encoded image files), got {request_input.datatype}"
        )
    shape = list(request_input.shape)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InferenceError(
            f"input {name}: images go in a tensor of shape [N] or [N, 1] (one encoded image "
            f"per batch element), got shape {shorten(shape)}"
        )
    try:
        payloads = _payloads(request_input.data.root, len(shape))
    except ValueError as error:
        raise InferenceError(f"input {name}: {error}") from None
    if math.prod(shape) != len(payloads):
        raise InferenceError(
            f"input {name}: shape {shape} needs {math.prod(shape)} images, got {len(payloads)}"
        )
    if not payloads:
        raise InferenceError(f"input {name}: no images")
    images = []
    for index, payload in enumerate(payloads):
        try:
            images.append(open_image(payload_bytes(payload), max_pixels, draft_size))
        except ImageError as error:
            raise InferenceError(f"input {name}, batch index {index}: {error}") from None
    return images


def to_pil(array: np.ndarray) -> Image.Image:
    """One image array, HW, HWC or CHW (C = 1, 3 or 4), as a Pillow image.

    Values outside uint8 are rounded and clipped to 0..255.
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"cannot read an array of shape {list(array.shape)} as an image")
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def to_png(image: Union[Image.Image, np.ndarray]) -> bytes:
    if not isinstance(image, Image.Image):
        image = to_pil(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _tensor(kind: type, name: str, data: List[Any]) -> Any:
    """A RequestInput or ResponseOutput of shape [N] tagged with the image content type."""
    parameters = Parameters(content_type=CONTENT_TYPE)
    return kind(name=name, datatype="BYTES", shape=[len(data)], data=data, parameters=parameters)


def _encoded(payload: Sequence[Any]) -> List[bytes]:
    return [item if isinstance(item, bytes) else to_png(item) for item in payload]


@register_input_codec
class ImageCodec(InputCodec):
    """MLServer codec for `content_type: image`, usable by clients and other runtimes too."""

    ContentType = CONTENT_TYPE
    TypeHint = List[Image.Image]

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        return isinstance(payload, list) and all(isinstance(p, Image.Image) for p in payload)

    @classmethod
    def encode_output(cls, name: str, payload: Any, **kwargs: Any) -> ResponseOutput:
        """Images (Pillow images, or arrays with the batch on axis 0) as base64 PNG files."""
        encoded = [base64.b64encode(png) for png in _encoded(list(payload))]
        return _tensor(ResponseOutput, name, encoded)

    @classmethod
    def decode_output(cls, response_output: ResponseOutput) -> List[Image.Image]:
        max_pixels = _max_pixels()
        payloads = _payloads(response_output.data.root, len(response_output.shape))
        return [open_image(payload_bytes(p), max_pixels) for p in payloads]

    @classmethod
    def encode_input(
        cls, name: str, payload: Sequence[Any], use_bytes: bool = True, **kwargs: Any
    ) -> RequestInput:
        """Files (bytes), Pillow images or arrays; raw bytes for gRPC, base64 for REST."""
        files = _encoded(list(payload))
        data = files if use_bytes else [base64.b64encode(f).decode("ascii") for f in files]
        return _tensor(RequestInput, name, data)

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> List[Image.Image]:
        return decode_images(request_input, _max_pixels())


def _max_pixels() -> int:
    from ..settings import NPUEnvironment  # settings imports the processing package

    return NPUEnvironment.from_env().max_image_pixels
