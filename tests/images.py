"""Test images made on the fly, and what the preprocessing must turn them into, computed here
with Pillow and numpy alone (not with mlserver_npu)."""
import base64
import io
import struct
import sys
import zlib
from typing import Callable, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

from server import REPO

sys.path.insert(0, str(REPO / "examples"))
import make_models  # noqa: E402

# The digits model's held-out split, and its images as make_models.py draws them.
digits_split = make_models.digits_split


def digit_file(pixels: np.ndarray, fmt: str) -> bytes:
    return make_models.encode(make_models.digit_image(pixels), fmt)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
ORIENTATION = 0x0112


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth RGB gradients plus noise, so that resizing and cropping visibly matter."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    smooth = np.stack(
        [xs * 255 / width, ys * 255 / height, (xs + ys) * 127 / (width + height)], axis=-1
    )
    return Image.fromarray(
        np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    )


def rotated_jpeg(image: Image.Image, orientation: int = 6) -> bytes:
    """A JPEG stored sideways with an EXIF orientation saying how to turn it upright."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(image, "JPEG", quality=90, exif=exif)


def two_frame_gif(width: int, height: int) -> bytes:
    first, second = photo(width, height, 1), photo(width, height, 2)
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=[second])
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, rows: int = 0) -> bytes:
    """A grayscale PNG whose header claims a size its data does not have (a decompression
    bomb): one pixel of data, or `rows` real rows of that width."""
    tiny = encode(Image.new("L", (1, 1)), "PNG")
    header = tiny[:8] + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    if not rows:
        return header + tiny[33:]
    return header + _chunk(b"IDAT", zlib.compress(bytes(rows * (width + 1)))) + _chunk(b"IEND", b"")


def upright(data: bytes, first_size: Optional[Callable[[int, int], Tuple[int, int]]] = None):
    """Decode as documented: a JPEG at the smallest draft scale that still gives the first
    resize's (width, height), then EXIF orientation applied."""
    image = Image.open(io.BytesIO(data))
    if first_size is not None and image.format == "JPEG":
        sideways = image.getexif().get(ORIENTATION) in (5, 6, 7, 8)
        width, height = image.size
        if sideways:
            image.draft(None, first_size(height, width)[::-1])
        else:
            image.draft(None, first_size(width, height))
    return ImageOps.exif_transpose(image)


def shorter_side(side: int) -> Callable[[int, int], Tuple[int, int]]:
    """torchvision's Resize(side): (width, height) -> (width, height)."""
    def size(width: int, height: int) -> Tuple[int, int]:
        if width <= height:
            return side, int(side * height / width)
        return int(side * width / height), side
    return size


def center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    top = int(round((image.height - height) / 2.0))
    left = int(round((image.width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def imagenet(data: bytes, resize: int = 256, crop: int = 224, draft: bool = True) -> np.ndarray:
    """[3, crop, crop] float32, as torchvision's classic ImageNet eval transform."""
    size = shorter_side(resize)
    image = upright(data, size if draft else None).convert("RGB")
    image = image.resize(size(*image.size), Image.Resampling.BILINEAR)
    pixels = np.asarray(center_crop(image, crop, crop), np.float32) / np.float32(255)
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def mnist(data: bytes) -> np.ndarray:
    image = upright(data, lambda w, h: (28, 28)).convert("L")
    return np.asarray(image.resize((28, 28), Image.Resampling.BILINEAR), np.float32)[None]


def digit_row(data: bytes) -> np.ndarray:
    """digits-image: grayscale, 8x8 box filter, 0..255 -> 0..16, as 64 values."""
    image = upright(data, lambda w, h: (8, 8)).convert("L").resize((8, 8), Image.Resampling.BOX)
    return (np.asarray(image, np.float32) * np.float32(16) / np.float32(255)).reshape(64)


def parse_classes(strings) -> list:
    """Triton classification strings -> [(score, index, label or None), ...] per row."""
    rows = []
    for row in strings:
        parsed = []
        for item in row:
            text = item.decode() if isinstance(item, bytes) else item
            score, index, *label = text.split(":", 2)
            parsed.append((float(score), int(index), label[0] if label else None))
        rows.append(parsed)
    return rows


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    flat = scores.reshape(len(scores), -1)
    return np.argsort(-flat, axis=1, kind="stable")[:, :k]
