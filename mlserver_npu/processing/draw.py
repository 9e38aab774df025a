"""Results drawn on the client's image, for people: boxes with their labels and scores,
keypoints, class maps as colours. Pillow only; the drawings are PNG outputs."""
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Ultralytics' default palette (hex), so drawings look as users know them.
PALETTE_HEX = (
    "FF3838 FF9D97 FF701F FFB21D CFD231 48F90A 92CC17 3DDB86 1A9334 00D4BB "
    "2C99A8 00C2FF 344593 6473FF 0018EC 8438FF 520085 CB38FF FF95C8 FF37C7"
).split()
PALETTE = [tuple(int(h[i : i + 2], 16) for i in (0, 2, 4)) for h in PALETTE_HEX]


def colour(index: int) -> Tuple[int, int, int]:
    return PALETTE[int(index) % len(PALETTE)]


def draw_detections(
    image: Image.Image,
    original: Tuple[int, int],
    detections,  # decoders.Candidates in original pixels
    labels: Optional[Sequence[str]] = None,
) -> Image.Image:
    """A copy of `image` (RGB) with each detection's box, `label score` and keypoints.

    `original` is the (height, width) the boxes refer to: the image may have been decoded at
    a reduced scale (a JPEG draft), so the boxes are scaled to it."""
    drawn = image.convert("RGB") if image.mode != "RGB" else image.copy()
    scale = np.float32([drawn.width / original[1], drawn.height / original[0]])
    canvas = ImageDraw.Draw(drawn)
    line = max(1, round(min(drawn.size) / 300))
    font = ImageFont.load_default()
    for index in range(len(detections.scores)):
        cls = int(detections.classes[index])
        x1, y1, x2, y2 = (detections.boxes[index].reshape(2, 2) * scale).ravel().tolist()
        fill = colour(cls)
        canvas.rectangle([x1, y1, x2, y2], outline=fill, width=line)
        name = labels[cls] if labels is not None and 0 <= cls < len(labels) else str(cls)
        text = f"{name} {float(detections.scores[index]):.2f}"
        left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
        height = bottom - top + 2
        ty = y1 - height if y1 - height >= 0 else y1
        canvas.rectangle([x1, ty, x1 + right - left + 4, ty + height], fill=fill)
        canvas.text((x1 + 2, ty + 1 - top), text, fill=(255, 255, 255), font=font)
        if detections.keypoints is not None:
            radius = line + 1
            for x, y in (detections.keypoints[index] * scale).tolist():
                canvas.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)
    return drawn


def colourize(classes: np.ndarray, palette: Sequence[Tuple[int, int, int]]) -> Image.Image:
    """An integer class map [H, W] as a palette ("P" mode) image: PNG keeps the class
    numbers as its pixel values and shows them in colour."""
    image = Image.fromarray(np.asarray(classes, np.uint8), mode="P")
    flat = [value for rgb in palette[:256] for value in rgb]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def overlay(
    image: Image.Image, classes: np.ndarray, palette: Sequence[Tuple[int, int, int]],
    alpha: float = 0.5, background: Optional[int] = 0,
) -> Image.Image:
    """`image` with the class map's colours blended in (the `background` class left clear)."""
    base = np.asarray(image.convert("RGB"), np.float32)
    colours = np.asarray(list(palette[:256]) + [(0, 0, 0)] * (256 - len(palette[:256])),
                         np.float32)[np.asarray(classes, np.int64) % 256]
    mask = np.ones(classes.shape, bool) if background is None else classes != background
    blended = base.copy()
    blended[mask] = base[mask] * (1 - alpha) + colours[mask] * alpha
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
