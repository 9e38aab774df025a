"""Regions of images as one model batch: cut each box or quadrilateral out of its original image
(a perspective warp for quadrilaterals, turned upright when much taller than wide), resize it to
the model's input height keeping its aspect ratio, and pad all of them to one width.

The geometry follows PaddleOCR (`get_rotate_crop_image`, `resize_norm_img`), which the text
models were trained with: a bicubic warp with replicated borders, OpenCV's bilinear resize, the
width rounded up and capped at the batch width, padding after normalization (zeros).
"""
import math
from typing import List, Optional, Sequence

import cv2
import numpy as np


def as_quads(boxes: np.ndarray) -> np.ndarray:
    """[K, 4, 2] quadrilaterals as they are; [K, 4] x1, y1, x2, y2 boxes as their corners."""
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim == 3 and boxes.shape[1:] == (4, 2):
        return boxes
    if boxes.ndim == 2 and boxes.shape[1] == 4:
        x1, y1, x2, y2 = boxes.T
        return np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1),
                         np.stack([x2, y2], 1), np.stack([x1, y2], 1)], axis=1)
    raise ValueError(
        f"regions are [K, 4] boxes or [K, 4, 2] quadrilaterals, got {list(boxes.shape)}"
    )


def crop(image: np.ndarray, quad: np.ndarray, upright_ratio: Optional[float] = 1.5) -> np.ndarray:
    """The quadrilateral (top-left, top-right, bottom-right, bottom-left) of an [H, W, C] image
    warped to a rectangle; turned 90 degrees counter-clockwise when its height is at least
    `upright_ratio` times its width (vertical text lines, PaddleOCR's rule)."""
    quad = np.asarray(quad, np.float32)
    width = int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3])))
    height = int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])))
    width, height = max(width, 1), max(height, 1)
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    matrix = cv2.getPerspectiveTransform(quad, target)
    region = cv2.warpPerspective(
        image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC
    )
    if upright_ratio is not None and region.shape[0] / region.shape[1] >= upright_ratio:
        region = np.rot90(region)
    return region


def batch_width(
    regions: Sequence[np.ndarray], height: int, width: Optional[int], min_width: int
) -> int:
    """The width every region is padded to: `width` when fixed, else the widest region at
    `height` (at least `min_width`), as PaddleOCR's `int(height * max_wh_ratio)`."""
    if width is not None:
        return width
    ratio = max([min_width / height] + [r.shape[1] / r.shape[0] for r in regions])
    return int(height * ratio)


def resized(region: np.ndarray, height: int, width: int) -> np.ndarray:
    """The region at `height` keeping its aspect ratio, its width rounded up, at most `width`."""
    scaled = math.ceil(height * region.shape[1] / region.shape[0])
    return cv2.resize(np.ascontiguousarray(region), (min(scaled, width), height))


def pad_width(batch: List[np.ndarray], width: int) -> np.ndarray:
    """[h, w_i, C] arrays -> [N, h, width, C], zeros on the right."""
    height, channels = batch[0].shape[0], batch[0].shape[2]
    out = np.zeros((len(batch), height, width, channels), batch[0].dtype)
    for index, array in enumerate(batch):
        out[index, :, : array.shape[1]] = array
    return out
