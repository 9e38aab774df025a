"""What the vision tests compare the server with, computed with OpenCV and numpy alone:
Ultralytics' LetterBox arithmetic, a greedy NMS, and the response tensors as numpy arrays."""
import base64

import cv2
import numpy as np


def letterbox(image: np.ndarray, size, pad, interpolation, center=True):
    """Ultralytics' LetterBox (auto=False, scaleup=True): the letterboxed image and the
    gain and (left, top) padding that scale_boxes undoes."""
    h, w = image.shape[:2]
    r = min(size[0] / h, size[1] / w)
    new_unpad = int(round(w * r)), int(round(h * r))
    dw, dh = size[1] - new_unpad[0], size[0] - new_unpad[1]
    if center:
        dw, dh = dw / 2, dh / 2
    if (w, h) != new_unpad:
        image = cv2.resize(image, new_unpad, interpolation=interpolation)
    top, bottom = (int(round(dh - 0.1)) if center else 0), int(round(dh + 0.1))
    left, right = (int(round(dw - 0.1)) if center else 0), int(round(dw + 0.1))
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=pad)
    return image, r, (left, top)


def greedy_nms(boxes, scores, iou_threshold):
    order = np.argsort(-scores, kind="stable")
    kept = []
    for i in order:
        ok = True
        for j in kept:
            lt = np.maximum(boxes[i, :2], boxes[j, :2])
            rb = np.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = np.prod(np.clip(rb - lt, 0, None))
            areas = np.prod(boxes[i, 2:] - boxes[i, :2]) + np.prod(boxes[j, 2:] - boxes[j, :2])
            union = areas - inter
            if inter / union > iou_threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return np.array(kept, np.int64)


def rest_outputs(response):
    assert response.status_code == 200, response.text
    arrays = {}
    for output in response.json()["outputs"]:
        dtype = object if output["datatype"] == "BYTES" else np.dtype(
            {"FP32": np.float32, "INT32": np.int32, "INT64": np.int64,
             "UINT8": np.uint8}[output["datatype"]])
        arrays[output["name"]] = np.array(output["data"], dtype).reshape(output["shape"])
    return arrays


def grpc_outputs(result):
    arrays = {}
    for name, tensor in result["ok"]["outputs"].items():
        if tensor["datatype"] == "object":
            data = np.array([base64.b64decode(v) for v in tensor["data"]], object)
        else:
            data = np.array(tensor["data"], tensor["datatype"])
        arrays[name] = data.reshape(tensor["shape"])
    return arrays
