"""Detections drawn on the client's image, for people: boxes with their labels and scores,
keypoints. Pillow only; the drawings are PNG outputs. (Class maps are drawn by masks.py.)"""
from typing import Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

# Ultralytics' default palette (hex), so drawings look as users know them.
PALETTE_HEX = (
    "FF3838 FF9D97 FF701F FFB21D CFD231 48F90A 92CC17 3DDB86 1A9334 00D4BB "
    "2C99A8 00C2FF 344593 6473FF 0018EC 8438FF 520085 CB38FF FF95C8 FF37C7"
).split()
PALETTE = [tuple(int(h[i : i + 2], 16) for i in (0, 2, 4)) for h in PALETTE_HEX]


def colour(index: int) -> Tuple[int, int, int]:
    return PALETTE[int(index) % len(PALETTE)]


def at_size(image: Image.Image, size: Tuple[int, int]) -> Image.Image:
    """`image` at (height, width) `size`: the client's size, when it was decoded smaller."""
    if (image.height, image.width) == tuple(size):
        return image
    return image.resize((size[1], size[0]), Image.Resampling.BILINEAR)


def draw_detections(
    image: Image.Image,
    original: Tuple[int, int],
    detections,  # decoders.Candidates in original pixels
    labels: Optional[Sequence[str]] = None,
) -> Image.Image:
    """A copy of `image` (RGB) with each detection's box, `label score` and keypoints.

    `original` is the (height, width) the boxes refer to, the size the client sent: an image
    decoded at a reduced scale (a JPEG draft) is enlarged back to it first."""
    drawn = at_size(image, original).convert("RGB")
    if drawn is image:
        drawn = image.copy()
    canvas = ImageDraw.Draw(drawn)
    line = max(1, round(min(drawn.size) / 300))
    font = ImageFont.load_default()
    for index in range(len(detections.scores)):
        cls = int(detections.classes[index])
        x1, y1, x2, y2 = detections.boxes[index].tolist()
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
            for x, y in detections.keypoints[index].tolist():
                canvas.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)
    return drawn
