"""Regions of images as one model batch: cut each box or quadrilateral out of its original image
(a perspective warp for quadrilaterals, turned upright when much taller than wide), resize it to
the model's input height keeping its aspect ratio, and pad all of them to one width.

The geometry follows PaddleOCR (`get_rotate_crop_image`, `resize_norm_img`), which the text
models were trained with: a bicubic warp with replicated borders, OpenCV's bilinear resize, the
width rounded up and capped at the batch width, padding after normalization (zeros).
"""
import math
from typing import Callable, Dict, List, Literal, Optional, Sequence, Tuple

import cv2
import numpy as np
from mlserver.errors import InferenceError
from mlserver.types import ResponseOutput
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from ..codecs.image import ImageCodec, original_size

from ..references import Ref, Reference


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
    regions: Sequence[np.ndarray], height: int, width: Optional[int], min_width: int,
    multiple: int = 1,
) -> int:
    """The width every region is padded to: `width` when fixed, else the widest region at
    `height` (at least `min_width`), as PaddleOCR's `int(height * max_wh_ratio)`, rounded up
    to a multiple of `multiple` (so that batches of other requests can share the width)."""
    if width is not None:
        return width
    ratio = max([min_width / height] + [r.shape[1] / r.shape[0] for r in regions])
    return -(-int(height * ratio) // multiple) * multiple


INTERPOLATION = {
    "cv2_nearest": cv2.INTER_NEAREST,
    "cv2_linear": cv2.INTER_LINEAR,
    "cv2_area": cv2.INTER_AREA,
    "cv2_cubic": cv2.INTER_CUBIC,
}


def resized(
    region: np.ndarray, height: int, width: int, interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """The region at `height` keeping its aspect ratio, its width rounded up, at most `width`."""
    scaled = math.ceil(height * region.shape[1] / region.shape[0])
    return cv2.resize(
        np.ascontiguousarray(region), (min(scaled, width), height), interpolation=interpolation
    )


def pad_width(batch: List[np.ndarray], width: int) -> np.ndarray:
    """[h, w_i, C] arrays -> [N, h, width, C], zeros on the right."""
    height, channels = batch[0].shape[0], batch[0].shape[2]
    out = np.zeros((len(batch), height, width, channels), batch[0].dtype)
    for index, array in enumerate(batch):
        out[index, :, : array.shape[1]] = array
    return out


def cut(
    images: Sequence[np.ndarray],
    quads: Sequence[np.ndarray],
    upright_ratio: Optional[float],
    turn: Optional[np.ndarray] = None,
) -> List[np.ndarray]:
    """The regions of every image ([H, W, C] arrays, `quads[i]` [K_i, 4, 2] in its pixels), in
    image order; `turn` (one flag per region) turns some 180 degrees."""
    regions = [
        crop(image, quad, upright_ratio) for image, group in zip(images, quads) for quad in group
    ]
    if turn is not None:
        regions = [np.rot90(r, 2) if flag else r for r, flag in zip(regions, turn)]
    return regions


def feed(
    regions: Sequence[np.ndarray],
    height: int,
    width: Optional[int],
    min_width: int,
    normalize: Callable[[np.ndarray], np.ndarray],
    multiple: int = 1,
    interpolation: int = cv2.INTER_LINEAR,
) -> np.ndarray:
    """The regions as one [N, height, W, C] float32 batch: each resized keeping its aspect
    ratio, `normalize`d ([1, h, w, C] float32 -> same), then padded with zeros to W."""
    target = batch_width(regions, height, width, min_width, multiple)
    batch = []
    for region in regions:
        array = resized(region, height, target, interpolation)
        if array.ndim == 2:
            array = array[:, :, np.newaxis]
        batch.append(normalize(array[np.newaxis].astype(np.float32))[0])
    return pad_width(batch, target)


class Rotate(BaseModel):
    """Turn a region 180 degrees when another step's class scores for it (same regions, same
    order: a direction classifier's) pick `class_index` with more than `threshold`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    scores: Ref = Field(description="<step>.outputs.<name>: [images, K, classes] scores")
    class_index: int = Field(1, ge=0, alias="class", description="the class that means upside down")
    threshold: float = Field(0.9, ge=0, le=1)


class Keep(BaseModel):
    """Drop the regions whose score in one of the step's outputs is under a threshold."""

    model_config = ConfigDict(extra="forbid")

    output: str = Field(description="a [regions] output of the step, e.g. text_scores")
    threshold: float


class Join(BaseModel):
    """One string per image: a BYTES output's regions joined in order."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    output: str = Field("text", description="a BYTES [regions] output of the step")
    separator: str = "\n"
    name: str = Field("full_text", alias="as", description="the joined output's name")


class RegionsSettings(BaseModel):
    """`steps[].regions` of a pipeline: run the step's model on regions of the request's images
    (all regions of all images as one batch) instead of on the images."""

    model_config = ConfigDict(extra="forbid")

    image: Ref = Field(description="inputs.<name>: the pipeline's image input to cut from")
    boxes: Ref = Field(
        description="<step>.outputs.<name>: [images, K, 4, 2] quadrilaterals or [images, K, 4] "
        "x1, y1, x2, y2 boxes, in pixels of the request's images"
    )
    count: Optional[Ref] = Field(
        None, description="<step>.outputs.<name>: [images] regions per image; default: the "
        "rows whose box is not all zeros"
    )
    input: Optional[str] = Field(None, description="the model input the regions feed")
    height: Optional[PositiveInt] = Field(None, description="default: the model's static height")
    width: Optional[PositiveInt] = Field(
        None, description="pad every region to this width; default: the model's static width, "
        "else the widest region"
    )
    min_width: PositiveInt = Field(1, description="least batch width when it follows the regions")
    width_multiple: PositiveInt = Field(
        1, description="a batch width that follows the regions is rounded up to a multiple of "
        "this, so that the plugin's batcher can merge the regions of concurrent requests"
    )
    resample: Literal[tuple(INTERPOLATION)] = Field(  # type: ignore[valid-type]
        "cv2_linear", description="OpenCV's interpolation for the resize to the model's height"
    )
    upright_ratio: Optional[float] = Field(
        1.5, gt=0, description="turn regions at least this much taller than wide (null: never)"
    )
    group_size: Optional[PositiveInt] = Field(
        None, description="run each image's regions in groups of this many, sorted by aspect "
        "ratio, each padded to its own width (PaddleOCR's rec_batch_num, 6: the padding a text "
        "recognizer was validated with); default: all regions of the request as one batch"
    )
    max_regions: PositiveInt = Field(100, description="regions per image")
    truncate: bool = Field(
        False, description="past max_regions: keep the first ones (true) or refuse (false)"
    )
    rotate: Optional[Rotate] = None
    keep: Optional[Keep] = None
    join: Optional[Join] = None
    boxes_output: Optional[str] = Field(None, description="default: the boxes' own name")
    count_output: Optional[str] = Field(None, description="default: the count's own name, else "
                                        "num_regions")

    def references(self) -> Dict[str, Reference]:
        """The step outputs the regions take, by role (they order the pipeline's steps)."""
        refs = {"regions.boxes": self.boxes}
        if self.count is not None:
            refs["regions.count"] = self.count
        if self.rotate is not None:
            refs["regions.rotate"] = self.rotate.scores
        return refs

    @property
    def names(self) -> Tuple[str, str]:
        """The step's outputs that hold the regions kept and their count per image."""
        count = self.count_output or (self.count.name if self.count else "num_regions")
        return self.boxes_output or self.boxes.name, count


def groups(
    regions: Sequence[np.ndarray], counts: Sequence[int], size: Optional[int]
) -> List[List[int]]:
    """Indices of `regions` (the regions of each image in turn, `counts` per image) in the
    batches they run in: all in one, or per image, sorted by width / height (stable), in
    groups of `size` (PaddleOCR's TextRecognizer order)."""
    if size is None:
        return [list(range(len(regions)))] if len(regions) else []
    batches, start = [], 0
    for count in counts:
        ratios = [regions[i].shape[1] / regions[i].shape[0] for i in range(start, start + count)]
        order = [start + int(i) for i in np.argsort(np.array(ratios), kind="stable")]
        batches += [order[i : i + size] for i in range(0, count, size)]
        start += count
    return batches


def region_counts(boxes: np.ndarray, count: Optional[np.ndarray]) -> List[int]:
    """Regions per image: `count` when given, else the boxes that are not all zeros (rows past
    the count of a padded output are zeros)."""
    if count is not None:
        counts = np.asarray(count).reshape(-1).astype(np.int64)
        if len(counts) != len(boxes):
            raise ValueError(f"{len(counts)} counts for {len(boxes)} images")
        return [int(min(max(c, 0), boxes.shape[1])) for c in counts]
    flat = np.asarray(boxes).reshape(len(boxes), boxes.shape[1], -1)
    nonzero = np.any(flat != 0, axis=2)
    return [int(row.nonzero()[0].max()) + 1 if row.any() else 0 for row in nonzero]


def regroup(rows: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """[regions, ...] in image order -> [images, K, ...], K the largest count; rows past an
    image's count are zeros (empty strings for BYTES)."""
    width = max(counts, default=0)
    fill = b"" if rows.dtype == object else 0
    out = np.full((len(counts), width, *rows.shape[1:]), fill, dtype=rows.dtype)
    start = 0
    for index, count in enumerate(counts):
        out[index, :count] = rows[start : start + count]
        start += count
    return out


def draw(
    image: Image.Image, quads: np.ndarray, labels: Optional[Sequence[str]] = None
) -> Image.Image:
    """A copy of the client's image with each region outlined and its label written above
    it (quadrilaterals in the image's own pixels)."""
    scale = np.float32(image.size) / np.float32(original_size(image))
    out = image.convert("RGB")
    pen = ImageDraw.Draw(out)
    for index, quad in enumerate(np.asarray(quads, np.float32)):
        points = [tuple(p) for p in (quad * scale).tolist()]
        pen.polygon(points, outline=(230, 30, 40), width=2)
        if labels and index < len(labels) and labels[index]:
            x, y = points[0]
            pen.text((x, max(y - 12, 0)), labels[index], fill=(20, 60, 220))
    return out


def draw_output(
    name: str,
    images: Optional[Sequence[Image.Image]],
    boxes: np.ndarray,
    counts: np.ndarray,
    texts: Optional[np.ndarray] = None,
) -> ResponseOutput:
    """One PNG per request image (base64, the `image` content type) with its regions drawn."""
    if not images:
        raise InferenceError(f"output '{name}': only requests that send images can have it drawn")
    drawn = []
    for index, image in enumerate(images):
        count = int(counts[index])
        quads = as_quads(boxes[index][:count]) if count else np.zeros((0, 4, 2), np.float32)
        labels = None
        if texts is not None:
            labels = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                      for t in texts[index][:count]]
        drawn.append(draw(image, quads, labels))
    return ImageCodec.encode_output(name, drawn)
