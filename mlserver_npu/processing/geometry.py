"""Where each pixel of a model input came from: the geometry of one request image (or tile).

Preprocessing resizes, crops, pads and tiles; every op records its transform here, so that
postprocessing can map boxes, points and masks from model-input pixels back to the pixels of
the image the client sent. Coordinates are continuous pixel-edge coordinates, x to the right
and y down, (0, 0) the top-left corner of the top-left pixel: a box covering an image of
width W spans x 0..W. On each axis, model input = original * scale + offset (resizes scale,
crops and pads shift); that is exact for OpenCV's and Pillow's resizes, which map pixel
centres (x + 0.5) * ratio - 0.5, i.e. pixel edges x * ratio.
"""
from dataclasses import dataclass, replace
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """original: (height, width) of the upright image the client sent (its EXIF orientation
    applied); scale, offset: (y, x) of `input = original * scale + offset`; input_size:
    (height, width) of the model input (or of the image at this point of the preprocessing)."""

    original: Tuple[int, int]
    scale: Tuple[float, float] = (1.0, 1.0)
    offset: Tuple[float, float] = (0.0, 0.0)
    input_size: Tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, height: int, width: int) -> "Geometry":
        """An image not transformed yet."""
        return cls((height, width), (1.0, 1.0), (0.0, 0.0), (height, width))

    # --- transforms, recorded by the preprocessing ops ---

    def resized(self, height: int, width: int) -> "Geometry":
        """The current image resized to (height, width)."""
        ry, rx = height / self.input_size[0], width / self.input_size[1]
        return replace(
            self,
            scale=(self.scale[0] * ry, self.scale[1] * rx),
            offset=(self.offset[0] * ry, self.offset[1] * rx),
            input_size=(height, width),
        )

    def cropped(self, top: int, left: int, height: int, width: int) -> "Geometry":
        """The region (top, left, height, width) of the current image; negative or
        overhanging bounds pad."""
        return replace(
            self,
            offset=(self.offset[0] - top, self.offset[1] - left),
            input_size=(height, width),
        )

    def padded(self, top: int, left: int, height: int, width: int) -> "Geometry":
        """The current image placed at (top, left) of a (height, width) canvas."""
        return self.cropped(-top, -left, height, width)

    # --- mapping results back ---

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """[..., 2] x, y in model-input pixels -> in original pixels (float32)."""
        points = np.asarray(points, np.float32)
        offset = np.float32([self.offset[1], self.offset[0]])
        scale = np.float32([self.scale[1], self.scale[0]])
        return (points - offset) / scale

    def to_input(self, points: np.ndarray) -> np.ndarray:
        """[..., 2] x, y in original pixels -> in model-input pixels (float32)."""
        points = np.asarray(points, np.float32)
        offset = np.float32([self.offset[1], self.offset[0]])
        scale = np.float32([self.scale[1], self.scale[0]])
        return points * scale + offset

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """[..., 4] x1, y1, x2, y2 in model-input pixels -> in original pixels."""
        boxes = np.asarray(boxes, np.float32)
        return self.to_original(boxes.reshape(*boxes.shape[:-1], 2, 2)).reshape(boxes.shape)

    def clip_points(self, points: np.ndarray) -> np.ndarray:
        """[..., 2] x, y (original pixels) clipped to the original image."""
        height, width = self.original
        return np.clip(points, 0, np.float32([width, height])).astype(np.float32)

    def clip_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """[..., 4] x1, y1, x2, y2 (original pixels) clipped to the original image."""
        height, width = self.original
        return np.clip(boxes, 0, np.float32([width, height, width, height])).astype(np.float32)

    def content(self) -> Tuple[int, int, int, int]:
        """(top, left, bottom, right): the pixels of the model input that show the image
        (letterbox or crop padding excluded), rounded to whole pixels, within the input."""
        height, width = self.input_size
        top = self.offset[0]
        left = self.offset[1]
        bottom = top + self.original[0] * self.scale[0]
        right = left + self.original[1] * self.scale[1]
        return (
            int(min(max(round(top), 0), height)),
            int(min(max(round(left), 0), width)),
            int(min(max(round(bottom), 0), height)),
            int(min(max(round(right), 0), width)),
        )
