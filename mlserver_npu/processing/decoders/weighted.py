"""MediaPipe's weighted non-maximum suppression (`NonMaxSuppressionCalculator` with
`algorithm: WEIGHTED`), which its detectors (BlazeFace, BlazePose, palm) are tuned with:
the best remaining candidate absorbs every candidate overlapping it by more than the
threshold (itself included), and its box and keypoints become their score-weighted mean; it
keeps its own score and class. OpenCV has no such NMS; this is MediaPipe's loop in numpy
(over the few candidates an SSD head leaves)."""
import numpy as np

from .base import Candidates


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one x1, y1, x2, y2 box with [n, 4] boxes."""
    low = np.maximum(box[:2], boxes[:, :2])
    high = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = np.prod(np.clip(box[2:] - box[:2], 0, None))
    areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(candidates: Candidates, iou_threshold: float, max_detections: int) -> Candidates:
    """The merged detections, best first (class-agnostic, as MediaPipe's)."""
    order = np.argsort(-candidates.scores, kind="stable")
    boxes = candidates.boxes.astype(np.float64)
    points = None
    if candidates.keypoints is not None:
        # not reshape(n, -1): with no candidates that is ambiguous and numpy refuses it
        per_candidate = int(np.prod(candidates.keypoints.shape[1:]))
        points = candidates.keypoints.reshape(len(candidates.scores), per_candidate)
        points = points.astype(np.float64)
    kept, merged_boxes, merged_points = [], [], []
    remaining = order
    while remaining.size and len(kept) < max_detections:
        best = remaining[0]
        overlap = iou(boxes[best], boxes[remaining]) > iou_threshold
        overlap[0] = True
        group = remaining[overlap]
        weights = candidates.scores[group].astype(np.float64)
        weights = weights / weights.sum()
        kept.append(best)
        merged_boxes.append(weights @ boxes[group])
        if points is not None:
            merged_points.append(weights @ points[group])
        remaining = remaining[~overlap]
    index = np.array(kept, np.int64)
    keypoints = None
    if candidates.keypoints is not None:
        shape = (len(kept),) + candidates.keypoints.shape[1:]
        keypoints = np.array(merged_points, np.float32).reshape(shape)
    return Candidates(
        boxes=np.array(merged_boxes, np.float32).reshape(-1, 4),
        scores=candidates.scores[index],
        classes=candidates.classes[index],
        keypoints=keypoints,
    )
