"""Segmentation core: a model's mask output -> class maps at the client's image size.

A segmentation output is one of: per-pixel class scores (logits or probabilities) [B, C, H, W]
or [B, H, W, C]; a class map already arg-maxed [B, H, W] (or [B, 1, H, W], integers); or one
channel of foreground probability [B, 1, H, W] / [B, H, W, 1] / float [B, H, W], cut at a
threshold. `class_maps` cuts the region of the model input that holds the image (the
letterbox padding off), resizes it to the image's size and gives integer class maps.

Resizing: `nearest` resizes the class map (cheap, what most servers do); `linear` resizes the
scores first, then takes the arg-max or the threshold, as MediaPipe's and most segmentation
pipelines do (smoother edges; equal to them pixel for pixel). Sizes are (height, width).
"""
import io
from typing import List, Literal, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from ..errors import ConfigurationError

Size = Tuple[int, int]  # (height, width)
Region = Tuple[float, float, float, float]  # x1, y1, x2, y2 in model-input pixels
Layout = Literal["auto", "nchw", "nhwc", "map"]
Resample = Literal["nearest", "linear"]


def mask_kind(shape: Sequence[Optional[int]], dtype: np.dtype, layout: Layout = "auto") -> str:
    """What a mask output holds, from its shape and dtype: `scores_nchw`, `scores_nhwc`,
    `probability_nchw`, `probability_nhwc`, `probability_map` or `map`; `ConfigurationError`
    when the shape is none of them."""
    rank = len(shape)
    integer = np.dtype(dtype).kind in "iub"
    if layout == "map" or rank == 3:
        if rank != 3 and not (rank == 4 and 1 in (shape[1], shape[3])):
            raise ConfigurationError(
                f"a class map is [batch, height, width]; the output's shape is {list(shape)}"
            )
        return "map" if integer else "probability_map"
    if rank != 4:
        raise ConfigurationError(
            "a segmentation output is [batch, classes, height, width], [batch, height, width, "
            f"classes] or [batch, height, width]; the output's shape is {list(shape)}"
        )
    if layout == "auto":
        # channels are the small static axis: the class count beside the spatial dims
        first, last = shape[1], shape[3]
        if first is not None and (last is None or first <= last):
            layout = "nchw"
        else:
            layout = "nhwc"
    channels = shape[1] if layout == "nchw" else shape[3]
    if integer:
        if channels != 1:
            raise ConfigurationError(
                f"an integer mask output must have one channel; its shape is {list(shape)}"
            )
        return "map"
    if channels == 1:
        return f"probability_{layout}"
    return f"scores_{layout}"


def _hwc(output: np.ndarray, kind: str) -> np.ndarray:
    """A batch of masks as [B, H, W, C] (C = 1 for maps and probabilities)."""
    if kind in ("map", "probability_map"):
        if output.ndim == 4:
            output = output[:, 0] if output.shape[1] == 1 else output[..., 0]
        return output[..., None]
    if kind.endswith("nchw"):
        return output.transpose(0, 2, 3, 1)
    return output


def class_maps(
    output: np.ndarray,
    kind: str,
    regions: Sequence[Region],
    input_size: Size,
    sizes: Sequence[Size],
    threshold: float = 0.5,
    resample: Resample = "nearest",
) -> List[np.ndarray]:
    """One int32 class map per batch row at `sizes[row]`: the part of the mask that covers
    `regions[row]` (model-input pixels, the image without its padding), resized."""
    masks = _hwc(np.asarray(output), kind)
    input_height, input_width = input_size
    results = []
    for mask, region, size in zip(masks, regions, sizes):
        height, width = mask.shape[:2]
        sx, sy = width / input_width, height / input_height
        x1, y1, x2, y2 = region
        top, bottom = int(round(y1 * sy)), int(round(y2 * sy))
        left, right = int(round(x1 * sx)), int(round(x2 * sx))
        top, left = max(top, 0), max(left, 0)
        bottom, right = min(max(bottom, top + 1), height), min(max(right, left + 1), width)
        cut = mask[top:bottom, left:right]
        if kind != "map" and resample == "linear":
            scores = _resize(as_float32(cut), size, cv2.INTER_LINEAR)
            results.append(_classes(scores, kind, threshold))
        else:
            results.append(_nearest(_classes(cut, kind, threshold), size))
    return results


def as_float32(array: np.ndarray) -> np.ndarray:
    return array if array.dtype == np.float32 else array.astype(np.float32)


def _nearest(classes: np.ndarray, size: Size) -> np.ndarray:
    """Nearest neighbour by pixel centres, source = floor((i + 0.5) * in / out): Pillow's and
    scikit-image's rule, exactly (OpenCV's INTER_NEAREST_EXACT rounds some ties the other
    way)."""
    height, width = size
    if classes.shape == (height, width):
        return classes
    rows = ((np.arange(height) + 0.5) * classes.shape[0] / height).astype(np.intp)
    columns = ((np.arange(width) + 0.5) * classes.shape[1] / width).astype(np.intp)
    rows = np.minimum(rows, classes.shape[0] - 1)
    return classes[rows[:, None], np.minimum(columns, classes.shape[1] - 1)]


def _resize(mask: np.ndarray, size: Size, interpolation: int) -> np.ndarray:
    """[h, w(, C)] -> [height, width(, C)]; OpenCV takes at most 512 channels at once."""
    height, width = size
    if mask.shape[:2] == (height, width):
        return mask
    channels = mask.shape[2] if mask.ndim == 3 else 0
    if channels > 512:
        parts = range(0, channels, 512)
        resized = [_resize(mask[:, :, i : i + 512], size, interpolation) for i in parts]
        return np.concatenate(resized, axis=2)
    resized = cv2.resize(mask, (width, height), interpolation=interpolation)
    if channels and resized.ndim == 2:  # OpenCV drops a single channel
        resized = resized[:, :, None]
    return resized


def _classes(mask: np.ndarray, kind: str, threshold: float) -> np.ndarray:
    """[h, w, C] scores or [h, w(, 1)] probabilities/classes -> [h, w] int32 classes."""
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if kind == "map":
        return mask.astype(np.int32, copy=False)
    if kind.startswith("probability"):
        return (mask > threshold).astype(np.int32)
    return mask.argmax(axis=2).astype(np.int32)


def default_palette() -> np.ndarray:
    """[256, 3] uint8: PASCAL VOC's palette (class 0 black), which segmentation tools show."""
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        value, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (red, green, blue)
    return palette


def palette_png(class_map: np.ndarray, palette: Optional[np.ndarray] = None) -> bytes:
    """A class map [H, W] as a palette ("P" mode) PNG: the class indices are its pixels, so
    the file is both a picture and the exact map (classes 0-255)."""
    if class_map.min(initial=0) < 0 or class_map.max(initial=0) > 255:
        raise ValueError("a palette PNG holds classes 0 to 255")
    height, width = class_map.shape
    image = Image.frombytes("P", (width, height), class_map.astype(np.uint8).tobytes())
    colours = default_palette() if palette is None else np.asarray(palette, np.uint8)
    image.putpalette(colours.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def class_fractions(class_map: np.ndarray, classes: int) -> np.ndarray:
    """[classes] float32: the share of the map's pixels of each class."""
    counts = np.bincount(class_map.reshape(-1), minlength=classes)[:classes]
    return (counts / max(class_map.size, 1)).astype(np.float32)


def overlay(
    image: np.ndarray,
    class_map: np.ndarray,
    palette: Optional[np.ndarray] = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """The RGB image [H, W, 3] with each non-zero class blended in its palette colour."""
    colours = (default_palette() if palette is None else np.asarray(palette, np.uint8))[class_map]
    blended = cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)
    return np.where((class_map > 0)[:, :, None], blended, image)
