"""Declarative image preprocessing: `parameters.extra.preprocess` is a preset name or a list of
ops, validated by pydantic at load and compiled against the model input the images feed.

Image ops (convert, resize, center_crop, letterbox, resize_to_multiple) run per image, with
Pillow or OpenCV as their `resample` says; numpy ops (scale, normalize) run on the stacked
batch; `layout` and `dtype` describe the result and default to the model's. `tiles` cuts each
image into a grid of tiles: the ops after it run on every tile, and the tiles become the batch
rows. Every op that moves pixels records it in the image's Geometry (geometry.py), so that
postprocessing can map results back to the image the client sent.
"""
import math
from typing import Annotated, Any, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from ..backends import TensorSpec
from ..errors import ConfigurationError
from .geometry import Geometry

# [height, width], or one number for a square
Size = Union[PositiveInt, Tuple[PositiveInt, PositiveInt]]
PerChannel = Union[float, List[float]]
Byte = Annotated[int, Field(ge=0, le=255)]

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# OpenCV's interpolations (cv2.INTER_*): what the detectors' own pipelines resize with
# (Ultralytics, PaddleOCR, MediaPipe); Pillow's bilinear antialiases when shrinking, OpenCV's
# INTER_LINEAR does not, which moves scores by 0.01-0.2.
CV2_RESAMPLE = {
    "cv2_nearest": "INTER_NEAREST",
    "cv2_linear": "INTER_LINEAR",
    "cv2_area": "INTER_AREA",
    "cv2_cubic": "INTER_CUBIC",
    "cv2_lanczos4": "INTER_LANCZOS4",
}
Resample = Literal[tuple(RESAMPLE) + tuple(CV2_RESAMPLE)]  # type: ignore[valid-type]
DTYPES = ("float32", "float16", "float64", "uint8", "int8", "int32", "int64")


class PreprocessError(ValueError):
    """The images of one request cannot become one tensor (e.g. they differ in size);
    `index` is the batch index of the image at fault, when there is one."""

    def __init__(self, message: str, index: Optional[int] = None):
        super().__init__(message)
        self.index = index


def _hw(size: Size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else (size[0], size[1])


def resize_image(image: Image.Image, height: int, width: int, resample: str) -> Image.Image:
    """`image` at (height, width), with Pillow's filter or OpenCV's interpolation `resample`."""
    if (height, width) == (image.height, image.width):
        return image
    if resample in CV2_RESAMPLE:
        import cv2  # only models configured for OpenCV's resampling pay its import

        array = cv2.resize(
            np.asarray(image), (width, height), interpolation=getattr(cv2, CV2_RESAMPLE[resample])
        )
        return Image.fromarray(array)  # uint8 [H, W] is mode L, [H, W, 3] RGB
    return image.resize((width, height), RESAMPLE[resample])


Step = Tuple[Image.Image, Geometry]


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Convert(_Op):
    """Colour mode: `RGB` (3 channels), `BGR` (3 channels in OpenCV's order, for models
    trained on cv2.imread images) or `L` (grayscale, 1 channel)."""

    op: Literal["convert"]
    mode: Literal["RGB", "BGR", "L"]


class Resize(_Op):
    """To an exact `size` [height, width], or so that the shorter side is `shorter_side`."""

    op: Literal["resize"]
    size: Optional[Size] = None
    shorter_side: Optional[PositiveInt] = None
    resample: Resample = "bilinear"

    @model_validator(mode="after")
    def _one_target(self) -> "Resize":
        if (self.size is None) == (self.shorter_side is None):
            raise ValueError("resize takes exactly one of 'size' or 'shorter_side'")
        return self

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        if self.size is not None:
            return _hw(self.size)
        side = self.shorter_side
        # Truncating the longer side as torchvision's Resize(int) does.
        if height <= width:
            return side, int(side * width / height)
        return int(side * height / width), side

    def apply(self, image: Image.Image, geometry: Geometry) -> Step:
        height, width = self.output_size(image.height, image.width)
        return resize_image(image, height, width, self.resample), geometry.resized(height, width)

    def scaled(self, ratio: float) -> "Resize":
        if self.size is not None:
            height, width = _hw(self.size)
            return self.model_copy(update={"size": (round(height * ratio), round(width * ratio))})
        return self.model_copy(update={"shorter_side": round(self.shorter_side * ratio)})


class CenterCrop(_Op):
    """The central `size` [height, width]; a smaller image is padded with zeros."""

    op: Literal["center_crop"]
    size: Size

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        return _hw(self.size)

    def apply(self, image: Image.Image, geometry: Geometry) -> Step:
        height, width = _hw(self.size)
        if (height, width) == (image.height, image.width):
            return image, geometry
        top = int(round((image.height - height) / 2.0))
        left = int(round((image.width - width) / 2.0))
        image = image.crop((left, top, left + width, top + height))
        return image, geometry.cropped(top, left, height, width)

    def scaled(self, ratio: float) -> "CenterCrop":
        height, width = _hw(self.size)
        return self.model_copy(update={"size": (round(height * ratio), round(width * ratio))})


class Letterbox(_Op):
    """Into `size` [height, width] keeping the aspect ratio, the rest padded with
    `pad_value`: Ultralytics' LetterBox (its arithmetic and OpenCV's INTER_LINEAR by
    default), the image centred or at the top left as the model was trained."""

    op: Literal["letterbox"]
    size: Optional[Size] = Field(None, description="default: the model's height and width")
    pad_value: Union[Byte, List[Byte]] = 114
    position: Literal["center", "top_left"] = "center"
    scale_up: bool = Field(True, description="false: images smaller than size are only padded")
    resample: Resample = "cv2_linear"

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        return _hw(self.size) if self.size is not None else (height, width)

    def apply(self, image: Image.Image, geometry: Geometry) -> Step:
        if self.size is None:
            raise PreprocessError("letterbox needs a size for a model of dynamic height and width")
        height, width = _hw(self.size)
        ratio = min(height / image.height, width / image.width)
        if not self.scale_up:
            ratio = min(ratio, 1.0)
        # at least one pixel: a 1x100000 image would round its short side to 0
        inner_h = max(int(round(image.height * ratio)), 1)
        inner_w = max(int(round(image.width * ratio)), 1)
        pad_h, pad_w = height - inner_h, width - inner_w
        top = left = 0
        if self.position == "center":
            top, left = int(round(pad_h / 2 - 0.1)), int(round(pad_w / 2 - 0.1))
        image = resize_image(image, inner_h, inner_w, self.resample)
        geometry = geometry.resized(inner_h, inner_w)
        value = self.pad_value
        if image.mode == "L":
            fill: Any = value if isinstance(value, int) else value[0]
        else:
            fill = (value,) * 3 if isinstance(value, int) else tuple(value)
        canvas = Image.new(image.mode, (width, height), fill)
        canvas.paste(image, (left, top))
        return canvas, geometry.padded(top, left, height, width)

    def scaled(self, ratio: float) -> "Letterbox":
        height, width = _hw(self.size)
        return self.model_copy(update={"size": (round(height * ratio), round(width * ratio))})


class ResizeToMultiple(_Op):
    """For models of dynamic height and width: scale by the side limit, then round each side
    to a multiple of `multiple` (PaddleOCR's DetResizeForTest: `limit_type` `max` shrinks an
    image whose longer side exceeds `limit_side_len`, `min` enlarges one whose shorter side is
    below it, `resize_long` scales the longer side to it)."""

    op: Literal["resize_to_multiple"]
    multiple: PositiveInt = 32
    limit_side_len: Optional[PositiveInt] = None
    limit_type: Literal["max", "min", "resize_long"] = "max"
    resample: Resample = "cv2_linear"

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        ratio = 1.0
        limit = self.limit_side_len
        if limit is not None:
            if self.limit_type == "max" and max(height, width) > limit:
                ratio = limit / max(height, width)
            elif self.limit_type == "min" and min(height, width) < limit:
                ratio = limit / min(height, width)
            elif self.limit_type == "resize_long":
                ratio = limit / max(height, width)
        multiple = self.multiple
        return tuple(  # type: ignore[return-value]
            max(int(round(int(side * ratio) / multiple) * multiple), multiple)
            for side in (height, width)
        )

    def apply(self, image: Image.Image, geometry: Geometry) -> Step:
        height, width = self.output_size(image.height, image.width)
        return resize_image(image, height, width, self.resample), geometry.resized(height, width)

    def scaled(self, ratio: float) -> "ResizeToMultiple":
        return self


class Tiles(_Op):
    """A row-major grid of `size` [height, width] tiles; the image's sides must be multiples."""

    op: Literal["tiles"]
    size: Size

    def apply(self, image: Image.Image, geometry: Geometry) -> List[Step]:
        height, width = _hw(self.size)
        if image.height % height or image.width % width:
            raise PreprocessError(
                f"the image is {image.height}x{image.width} (height x width), not a grid of "
                f"{height}x{width} tiles: its sides must be multiples of the tile's"
            )
        return [
            (
                image.crop((left, top, left + width, top + height)),
                geometry.cropped(top, left, height, width),
            )
            for top in range(0, image.height, height)
            for left in range(0, image.width, width)
        ]


class Scale(_Op):
    """value * factor / divisor, in float32 (e.g. `"divisor": 255` for 0..1)."""

    op: Literal["scale"]
    factor: float = 1.0
    divisor: float = Field(1.0, gt=0)

    def apply(self, batch: np.ndarray) -> np.ndarray:
        return batch * np.float32(self.factor) / np.float32(self.divisor)


class Normalize(_Op):
    """(value - mean) / std per channel; one number applies to every channel."""

    op: Literal["normalize"]
    mean: PerChannel
    std: Union[PositiveFloat, List[PositiveFloat]]

    def channels(self) -> int:
        return max(len(v) if isinstance(v, list) else 1 for v in (self.mean, self.std))

    def apply(self, batch: np.ndarray) -> np.ndarray:
        # batch is [N, H, W, C] here: the channel is the last axis
        return (batch - np.float32(self.mean)) / np.float32(self.std)


class Layout(_Op):
    op: Literal["layout"]
    layout: Literal["NCHW", "NHWC"]


class Dtype(_Op):
    op: Literal["dtype"]
    dtype: Literal[DTYPES]  # type: ignore[valid-type]


Op = Annotated[
    Union[
        Convert, Resize, CenterCrop, Letterbox, ResizeToMultiple, Tiles, Scale, Normalize,
        Layout, Dtype,
    ],
    Field(discriminator="op"),
]
IMAGE_OPS = (Convert, Resize, CenterCrop, Letterbox, ResizeToMultiple, Tiles)
GEOMETRY_OPS = (Resize, CenterCrop, Letterbox, ResizeToMultiple)
ARRAY_OPS = (Scale, Normalize)
SETTINGS_OPS = ("convert", "tiles", "layout", "dtype")  # at most one of each

PRESETS = {
    "imagenet": [
        {"op": "convert", "mode": "RGB"},
        {"op": "resize", "shorter_side": 256},
        {"op": "center_crop", "size": 224},
        {"op": "scale", "divisor": 255},
        {"op": "normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        {"op": "layout", "layout": "NCHW"},
        {"op": "dtype", "dtype": "float32"},
    ],
    "mnist": [
        {"op": "convert", "mode": "L"},
        {"op": "resize", "size": 28},
        {"op": "layout", "layout": "NCHW"},
        {"op": "dtype", "dtype": "float32"},
    ],
    # Ultralytics' YOLO exports: its LetterBox (grey 114, OpenCV's INTER_LINEAR), 0..1; RGB
    # for a model of 3 channels (grey for one)
    "ultralytics": [
        {"op": "letterbox", "pad_value": 114, "resample": "cv2_linear"},
        {"op": "scale", "divisor": 255},
        {"op": "layout", "layout": "NCHW"},
    ],
}


def _expand_preset(value: Any) -> Any:
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(f"unknown preset '{value}'; known presets: {', '.join(PRESETS)}")
        return PRESETS[value]
    return value


def _check_order(ops: List[Any]) -> List[Any]:
    names = [op.op for op in ops]
    for name in SETTINGS_OPS:
        if names.count(name) > 1:
            raise ValueError(f"'{name}' is given more than once")
    seen_array_op = None
    for op in ops:
        if isinstance(op, ARRAY_OPS):
            seen_array_op = op.op
        elif isinstance(op, IMAGE_OPS) and seen_array_op:
            raise ValueError(f"'{op.op}' works on images: put it before '{seen_array_op}'")
    return ops


PreprocessOps = Annotated[
    List[Op], BeforeValidator(_expand_preset), AfterValidator(_check_order)
]


def _model_layout(spec: TensorSpec) -> str:
    shape = spec.shape
    if len(shape) == 4 and shape[1] not in (1, 3) and shape[3] in (1, 3):
        return "NHWC"
    return "NCHW"


def _describe(spec: TensorSpec) -> str:
    return f"model input '{spec.name}' ({np.dtype(spec.dtype).name} {spec.v2_shape})"


def _fit(geometry: List[Any], size: Optional[Tuple[int, int]], spec: TensorSpec) -> List[Any]:
    """Make the image ops end at the model's static [height, width]: the last crop, letterbox
    or exact resize takes that size and the ops before a crop scale along."""
    if size is None:
        return geometry
    if not geometry:
        return [Resize(op="resize", size=size)]
    last = geometry[-1]
    if isinstance(last, ResizeToMultiple):
        raise ConfigurationError(
            f"resize_to_multiple is for models of dynamic height and width, but {_describe(spec)} "
            "takes one size: use letterbox or resize"
        )
    if isinstance(last, CenterCrop):
        ratio = min(size) / min(_hw(last.size))
        head = [op if ratio == 1 else op.scaled(ratio) for op in geometry[:-1]]
        return head + [last.model_copy(update={"size": size})]
    if isinstance(last, Letterbox) or last.size is not None:
        return geometry[:-1] + [last.model_copy(update={"size": size})]
    return geometry + [CenterCrop(op="center_crop", size=size)]


def _final_size(geometry: List[Any]) -> Optional[Tuple[int, int]]:
    for op in reversed(geometry):
        if isinstance(op, ResizeToMultiple):
            return None
        if getattr(op, "size", None) is not None:
            return _hw(op.size)
    return None


class Preprocessor:
    """The ops compiled for one model input: images in, that input's tensor out."""

    def __init__(self, ops: Sequence[Any], spec: TensorSpec, max_pixels: Optional[int] = None):
        """`max_pixels`: the most pixels an intermediate image may have (the model's
        max_image_pixels), unless an op's fixed size is larger."""
        def find(kind):
            return next((op for op in ops if isinstance(op, kind)), None)

        self.spec = spec
        shape = list(spec.shape)
        dtype = np.dtype(spec.dtype)
        if dtype.kind not in "fiu" or len(shape) < 2:
            raise ConfigurationError(f"{_describe(spec)} is not an image tensor")
        layout, convert, dtype_op = find(Layout), find(Convert), find(Dtype)
        self.tiles: Optional[Tiles] = find(Tiles)
        # Geometry before `tiles` applies to the whole image, after it to every tile.
        ops = list(ops)
        cut = ops.index(self.tiles) if self.tiles else 0
        self.before_tiles = [op for op in ops[:cut] if isinstance(op, GEOMETRY_OPS)]
        self.layout = layout.layout if layout else _model_layout(spec)
        channel_axis = 1 if self.layout == "NCHW" else 3
        model_channels = shape[channel_axis] if len(shape) == 4 else None
        order = convert.mode if convert else ("L" if model_channels == 1 else "RGB")
        self.bgr = order == "BGR"
        self.mode = "RGB" if self.bgr else order  # Pillow's mode; BGR is reversed at the end
        channels = 1 if self.mode == "L" else 3
        if model_channels not in (None, channels):
            raise ConfigurationError(
                f"preprocessing gives {channels} channel(s) (mode {order}) in layout "
                f"{self.layout}, but {_describe(spec)} has {model_channels}"
            )
        if dtype_op and np.dtype(dtype_op.dtype) != dtype:
            raise ConfigurationError(
                f"preprocessing gives {dtype_op.dtype}, but {_describe(spec)} is {dtype.name}"
            )
        self.dtype = dtype

        spatial = [2, 3] if self.layout == "NCHW" else [1, 2]
        model_size = None
        if len(shape) == 4 and all(shape[axis] is not None for axis in spatial):
            model_size = (shape[spatial[0]], shape[spatial[1]])
        self.geometry = _fit(
            [op for op in ops[cut:] if isinstance(op, GEOMETRY_OPS)], model_size, spec
        )
        for op in self.before_tiles + self.geometry:
            if isinstance(op, Letterbox) and op.size is None:
                raise ConfigurationError(
                    f"letterbox needs a 'size': {_describe(spec)} has a dynamic height and width"
                )
        fixed = [
            math.prod(_hw(op.size))
            for op in self.before_tiles + self.geometry
            if getattr(op, "size", None) is not None
        ]
        self.max_pixels = None if max_pixels is None else max([max_pixels, *fixed])
        self.size = _final_size(self.geometry) or (_hw(self.tiles.size) if self.tiles else None)
        self.arrays = [op for op in ops if isinstance(op, ARRAY_OPS)]
        for op in self.arrays:
            if isinstance(op, Normalize) and op.channels() not in (1, channels):
                raise ConfigurationError(
                    f"normalize has {op.channels()} values per channel for {channels} channel(s)"
                )

        # Inputs that are not [N, C, H, W] / [N, H, W, C] take the image reshaped, e.g. the
        # 8x8 digits as [N, 64].
        self.reshape: Optional[List[int]] = None
        if len(shape) != 4:
            if any(dim is None for dim in shape[1:]):
                raise ConfigurationError(
                    f"{_describe(spec)}: images feed [N, C, H, W] or [N, H, W, C] inputs, or "
                    "inputs with a static shape to reshape into"
                )
            self.reshape = shape[1:]
            if self.size and math.prod(self.size) * channels != math.prod(self.reshape):
                raise ConfigurationError(
                    f"preprocessing gives {self.size[0]}x{self.size[1]}x{channels} values per "
                    f"image, but {_describe(spec)} takes {math.prod(self.reshape)}"
                )

    def warm_up_size(self) -> Optional[Tuple[int, int]]:
        """(height, width) of a typical image after the ops: the fixed size, or what
        resize_to_multiple makes of a square at its side limit (640 without one)."""
        if self.size is not None:
            return self.size
        last = self.geometry[-1] if self.geometry else None
        if isinstance(last, ResizeToMultiple):
            side = last.limit_side_len or 640
            return last.output_size(side, side)
        return None

    def draft_size(self, size: Tuple[int, int]) -> Optional[Tuple[int, int]]:
        """The (width, height) the first resize needs from an upright (width, height) image:
        a JPEG can be decoded at 1/2, 1/4 or 1/8 scale while it stays at least that large."""
        if self.tiles or not self.geometry or not isinstance(self.geometry[0], Resize):
            return None
        width, height = size
        out_height, out_width = self.geometry[0].output_size(height, width)
        return out_width, out_height

    def _geometry(
        self, ops: Sequence[Any], image: Image.Image, geometry: Geometry, index: int
    ) -> Step:
        """`ops` applied to one image, each op's output size checked before it is computed:
        one whose size follows the aspect ratio (resize shorter_side, resize_to_multiple
        min) can make a tiny image of extreme aspect ratio gigapixels."""
        for op in ops:
            height, width = op.output_size(image.height, image.width)
            if self.max_pixels is not None and height * width > self.max_pixels:
                raise PreprocessError(
                    f"the image is {image.height}x{image.width} (height x width): '{op.op}' would "
                    f"make it {height}x{width} = {height * width} pixels, more than the "
                    f"{self.max_pixels} this model allows (parameters.extra.max_image_pixels)",
                    index,
                )
            try:
                image, geometry = op.apply(image, geometry)
            except PreprocessError as error:
                raise PreprocessError(str(error), index) from None
        return image, geometry

    def _convert(self, image: Image.Image, index: int) -> Image.Image:
        if image.mode.startswith("I;16"):
            # 16-bit grayscale: keep the high byte (Pillow's convert would clip at 255)
            image = Image.fromarray((np.asarray(image, np.uint16) >> 8).astype(np.uint8))
        if image.mode != self.mode:
            try:
                image = image.convert(self.mode)
            except ValueError as error:
                raise PreprocessError(f"{error}", index) from None
        return image

    def cut(
        self, images: Sequence[Image.Image], geometries: Sequence[Geometry]
    ) -> Tuple[List[Image.Image], List[Geometry], List[int]]:
        """With a `tiles` op: the tiles of all images in order, their geometries, and how many
        tiles each image gave."""
        tiles: List[Image.Image] = []
        tile_geometries: List[Geometry] = []
        counts = []
        for index, (image, geometry) in enumerate(zip(images, geometries)):
            image = self._convert(image, index)
            image, geometry = self._geometry(self.before_tiles, image, geometry, index)
            try:
                parts = self.tiles.apply(image, geometry)
            except PreprocessError as error:
                raise PreprocessError(str(error), index) from None
            tiles.extend(part for part, _ in parts)
            tile_geometries.extend(where for _, where in parts)
            counts.append(len(parts))
        return tiles, tile_geometries, counts

    def __call__(
        self, images: Sequence[Image.Image], geometries: Optional[Sequence[Geometry]] = None
    ) -> Tuple[np.ndarray, List[Geometry]]:
        """The input tensor of `images`, and the geometry of each row: `geometries` (default:
        the images as they are) followed by the ops."""
        if geometries is None:
            geometries = [Geometry.of(image.height, image.width) for image in images]
        arrays = []
        placed = []
        for index, (image, geometry) in enumerate(zip(images, geometries)):
            image = self._convert(image, index)
            image, geometry = self._geometry(self.geometry, image, geometry, index)
            arrays.append(np.asarray(image))
            placed.append(geometry)
        sizes = sorted({a.shape[:2] for a in arrays})
        if len(sizes) > 1 and self.geometry and isinstance(self.geometry[-1], ResizeToMultiple):
            return self._padded(arrays), placed
        if len(sizes) > 1:
            raise PreprocessError(
                "the images differ in size after preprocessing ("
                + ", ".join(f"{h}x{w}" for h, w in sizes[:5])
                + (", ..." if len(sizes) > 5 else "")
                + "); add a resize op to parameters.extra.preprocess"
            )
        return self._tensor(np.stack(arrays)), placed

    def _padded(self, arrays: List[np.ndarray]) -> np.ndarray:
        """Images of different sizes (a model of dynamic height and width) as one batch: each
        made a tensor alone, then padded with zeros at the bottom and right to the largest
        (their Geometry is unchanged: the padding moves no pixel)."""
        rows = [self._tensor(a[np.newaxis]) for a in arrays]
        axes = (2, 3) if self.layout == "NCHW" else (1, 2)
        shape = list(rows[0].shape)
        for axis in axes:
            shape[axis] = max(row.shape[axis] for row in rows)
        batch = np.zeros([len(rows), *shape[1:]], rows[0].dtype)
        for index, row in enumerate(rows):
            batch[(index, slice(None), *(slice(0, n) for n in row.shape[2:]))] = row[0]
        return batch

    def _tensor(self, batch: np.ndarray) -> np.ndarray:
        """Stacked images [N, H, W(, C)] -> the model input's tensor."""
        if batch.ndim == 3:
            batch = batch[..., np.newaxis]
        if self.bgr:
            batch = batch[..., ::-1]
        if self.arrays:
            batch = batch.astype(np.float32)
        for op in self.arrays:
            batch = op.apply(batch)
        if self.layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        batch = _cast(batch, self.dtype)
        if self.reshape is not None:
            if math.prod(batch.shape[1:]) != math.prod(self.reshape):
                raise PreprocessError(
                    f"an image gives {math.prod(batch.shape[1:])} values, but "
                    f"{_describe(self.spec)} takes {math.prod(self.reshape)}; add a resize op "
                    "to parameters.extra.preprocess"
                )
            batch = batch.reshape([len(batch), *self.reshape])
        return np.ascontiguousarray(batch)


def _cast(batch: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu" and batch.dtype.kind == "f":
        info = np.iinfo(dtype)
        batch = np.clip(np.rint(batch), info.min, info.max)
    return batch.astype(dtype, copy=False)
