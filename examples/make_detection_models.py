"""Regenerate the example detector ``model-repository/digits-detector`` and its sample image.

Run from anywhere as ``python examples/make_detection_models.py`` (``--root DIR`` writes under
DIR). Everything comes from scikit-learn's bundled digits data set with fixed seeds and a fit
that converges to its optimum (Newton solver, one BLAS thread), so the files are
byte-for-byte the same on every run (``tests/test_examples.py`` checks this).

``digits-detector`` finds handwritten digits on a dark canvas. It is a sliding-window
detector made of two logistic regressions applied to every window of a 128x128 canvas as
convolutions: the ``digits`` example's classifier on the window's 8x8 cell says which digit,
a second one on the cell and its 2-pixel margin says whether the window is centred on a
digit (trained on centred digits against digits off by 1 to 6 pixels, pairs of digits and
empty windows); a digit's score is the product of the two probabilities. Its output has the
layout of an Ultralytics YOLOv8 ONNX export, ``output0`` FP32 [N, 4 + 10, 14641]: for each
window its box (centre x, centre y, width, height in input pixels) and the scores of the 10
digits; the ONNX metadata carries ``names``, ``imgsz``, ``stride`` and ``task: detect`` as
Ultralytics writes them. So it is served as a YOLOv8 model would be: letterbox into 128x128,
the ``yolov8`` decoder, NMS, boxes mapped back to the client's image.
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_models  # noqa: E402  (digits_split, parse_root, encode)

NAME = "digits-detector"
SIZE = 128  # model input height and width
WINDOW = 8  # a digit's cell in model-input pixels
CONTEXT = 12  # what the classifier sees: the cell and a 2-pixel margin (empty around a digit)
MARGIN = (CONTEXT - WINDOW) // 2
STRIDE = 1
CELLS = (SIZE - WINDOW) // STRIDE + 1  # windows per side (the input padded by MARGIN)
BACKGROUND = 10  # the 11th class
SPACING = 12  # digits on a canvas are at least this far apart (model-input pixels)
SCALE = 3  # client images: model-input pixels enlarged this much (a 384-pixel canvas)


def _placed(pixels: np.ndarray, dy: int, dx: int, size: int = 24) -> np.ndarray:
    """An 8x8 digit on a zero canvas of `size`, shifted by (dy, dx) from its centre."""
    canvas = np.zeros((size, size))
    top, left = (size - WINDOW) // 2 + dy, (size - WINDOW) // 2 + dx
    canvas[top : top + WINDOW, left : left + WINDOW] = pixels.reshape(8, 8)
    return canvas


def _window(canvas: np.ndarray) -> np.ndarray:
    """The central CONTEXT x CONTEXT window of a canvas, flattened."""
    start = (canvas.shape[0] - CONTEXT) // 2
    return canvas[start : start + CONTEXT, start : start + CONTEXT].ravel()


def training_windows(x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
    """Windows and their classes: each digit centred (its class), off by a pixel or more or
    beside another digit (background), and empty windows."""
    features, labels = [], []
    for pixels, digit in zip(x, y):
        features.append(_window(_placed(pixels, 0, 0)))
        labels.append(digit)
        # the same digit seen from a window that is off by 1 to 6 pixels on some axis
        for _ in range(3):
            dy, dx = rng.integers(-6, 7, size=2)
            while max(abs(dy), abs(dx)) < 1:
                dy, dx = rng.integers(-6, 7, size=2)
            features.append(_window(_placed(pixels, dy, dx)))
            labels.append(BACKGROUND)
        # a window between this digit and another, SPACING apart
        other = x[rng.integers(len(x))]
        pair = np.zeros((24, 24 + SPACING))
        pair[8:16, 8:16] = pixels.reshape(8, 8)
        pair[8:16, 8 + SPACING : 16 + SPACING] = other.reshape(8, 8)
        offset = rng.integers(3, SPACING - 2)
        start = 8 - MARGIN + offset
        features.append(pair[8 - MARGIN : 16 + MARGIN, start : start + CONTEXT].ravel())
        labels.append(BACKGROUND)
    for _ in range(len(x) // 4):
        features.append(np.zeros(CONTEXT * CONTEXT))
        labels.append(BACKGROUND)
    return np.array(features), np.array(labels)


def train(x_train: np.ndarray, y_train: np.ndarray):
    """The two classifiers: which digit (the `digits` example's logistic regression on the
    8x8 cell) and whether a window is centred on one (a logistic regression on the cell and
    its margin)."""
    digits, _, _ = make_models.train_digits()
    features, labels = training_windows(x_train, y_train, np.random.default_rng(0))
    with threadpool_limits(limits=1):
        centred = LogisticRegression(
            C=0.01, solver="newton-cholesky", tol=1e-12, max_iter=100
        ).fit(features, labels != BACKGROUND)
    return digits, centred


def window_boxes() -> np.ndarray:
    """[4, CELLS * CELLS] centre x, centre y, width, height of every window, row-major."""
    centres = np.arange(CELLS) * STRIDE + WINDOW / 2
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    size = np.full(cx.size, WINDOW, np.float64)
    return np.stack([cx.ravel(), cy.ravel(), size, size]).astype(np.float32)


def detector_graph(digits: LogisticRegression, centred: LogisticRegression) -> onnx.ModelProto:
    """Both classifiers as convolutions over every window, a digit's score the probability of
    the digit times that of a centred window: [N, 1, 128, 128] -> [N, 14, 14641]."""
    # the digit classifier sees the 8x8 cell in the middle of the 12x12 window
    digit_weights = np.zeros((10, 1, CONTEXT, CONTEXT), np.float32)
    digit_weights[:, 0, MARGIN:-MARGIN, MARGIN:-MARGIN] = digits.coef_.reshape(10, 8, 8)
    anchors = CELLS * CELLS
    initializers = [
        numpy_helper.from_array(digit_weights, "digit_weights"),
        numpy_helper.from_array(digits.intercept_.astype(np.float32), "digit_bias"),
        numpy_helper.from_array(
            centred.coef_.reshape(1, 1, CONTEXT, CONTEXT).astype(np.float32), "centred_weights"
        ),
        numpy_helper.from_array(centred.intercept_.astype(np.float32), "centred_bias"),
        numpy_helper.from_array(window_boxes()[np.newaxis], "boxes"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([4, anchors], np.int64), "box_dims"),
        numpy_helper.from_array(np.array([0, 10, anchors], np.int64), "score_dims"),
    ]
    window = dict(kernel_shape=[CONTEXT, CONTEXT], strides=[STRIDE, STRIDE], pads=[MARGIN] * 4)
    nodes = [
        helper.make_node("Conv", ["images", "digit_weights", "digit_bias"], ["logits"], **window),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("Conv", ["images", "centred_weights", "centred_bias"], ["centring"],
                         **window),
        helper.make_node("Sigmoid", ["centring"], ["centred"]),
        helper.make_node("Mul", ["probabilities", "centred"], ["digit_scores"]),
        helper.make_node("Reshape", ["digit_scores", "score_dims"], ["scores"]),
        helper.make_node("Shape", ["images"], ["input_shape"]),
        helper.make_node("Slice", ["input_shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "box_dims"], ["boxes_shape"], axis=0),
        helper.make_node("Expand", ["boxes", "boxes_shape"], ["batch_boxes"]),
        helper.make_node("Concat", ["batch_boxes", "scores"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 14, anchors])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="mlserver-npu"
    )
    model.ir_version = 8
    # As Ultralytics writes an export's metadata (str() of its Python values).
    metadata = {
        "description": "sliding-window digits detector (mlserver-npu example)",
        "task": "detect", "stride": str(STRIDE), "batch": "1",
        "imgsz": str([SIZE, SIZE]), "names": str({i: str(i) for i in range(10)}),
    }
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model


def canvas(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, count: int,
           height: int = SIZE, width: int = SIZE):
    """A (height, width) canvas in 0..16 with `count` digits at random places at least
    SPACING apart, and their boxes [count, 4] x1, y1, x2, y2 and classes."""
    board = np.zeros((height, width))
    boxes, classes = [], []
    while len(boxes) < count:
        top, left = rng.integers(0, height - WINDOW + 1), rng.integers(0, width - WINDOW + 1)
        if any(abs(top - b[1]) < SPACING and abs(left - b[0]) < SPACING for b in boxes):
            continue
        index = rng.integers(len(x))
        board[top : top + WINDOW, left : left + WINDOW] = x[index].reshape(8, 8)
        boxes.append((left, top, left + WINDOW, top + WINDOW))
        classes.append(int(y[index]))
    return board, np.array(boxes, np.float32), np.array(classes, np.int64)


def to_image(board: np.ndarray, scale: int = SCALE) -> Image.Image:
    """A 0..16 canvas as an 8-bit grayscale image, each pixel a `scale`-pixel block."""
    values = np.rint(board * 255 / 16).astype(np.uint8)
    image = Image.fromarray(values, mode="L")
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    union = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter
    return float(inter / union)


def evaluate(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, canvases: int = 100):
    """Precision and recall of the detector on held-out canvases (boxes matched at IoU 0.5
    with the right digit), with the example's settings: confidence 0.5, class-agnostic NMS at
    IoU 0.3."""
    import cv2

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    found = right = total = 0
    for _ in range(canvases):
        board, boxes, classes = canvas(x, y, rng, int(rng.integers(3, 11)))
        (output,) = session.run(None, {"images": board[None, None].astype(np.float32)})
        row = output[0].T
        scores = row[:, 4:].max(axis=1)
        keep = scores > 0.5
        xywh = row[keep, :4].copy()
        xywh[:, :2] -= xywh[:, 2:] / 2
        kept = cv2.dnn.NMSBoxes(xywh.astype(np.float64), scores[keep], 0.5, 0.3)
        predicted = [(xywh[i, :2].tolist() + (xywh[i, :2] + xywh[i, 2:]).tolist(),
                      int(row[keep, 4:][i].argmax())) for i in np.asarray(kept).ravel()]
        found += len(predicted)
        total += len(boxes)
        for box, digit in zip(boxes, classes):
            right += any(_iou(np.array(p), box) >= 0.5 and c == digit for p, c in predicted)
    return right / max(found, 1), right / total


README = """# digits-detector

A sliding-window detector of handwritten digits, made by
[`examples/make_detection_models.py`](../../examples/make_detection_models.py) from
scikit-learn's bundled digits data set: two logistic regressions applied to every window of
a 128x128 canvas as convolutions, one saying which digit is in the window's 8x8 cell (the
`digits` example's classifier), one whether the window is centred on a digit; a digit's
score is the product of the two probabilities. Its single output has the layout of an
Ultralytics YOLOv8 ONNX export, `output0` FP32 `[N, 14, 14641]`: per window a box (centre
x, centre y, width, height in input pixels) and the scores of the 10 digits; the ONNX
metadata has `names`, `imgsz`, `stride` and `task: detect` as Ultralytics writes them.

On {canvases} held-out canvases (test-split digits, 3 to 10 per canvas), with confidence 0.5
and class-agnostic NMS at IoU 0.3 (the settings): **precision {precision:.3f}, recall
{recall:.3f}** (a box counts when it overlaps a digit's cell by IoU >= 0.5 with the right digit).

model-settings.json letterboxes the client's image into 128x128 (grayscale, padded with 0,
OpenCV's INTER_AREA: the sample images are digits 3x enlarged), scales to the digits' 0..16,
and decodes `output0` with the `yolov8` decoder; labels come from the model's metadata. The
sample `examples/images/digits-canvas.png` ({width}x{height}) has {count} digits: {digits}.

Licence: generated from scikit-learn's digits data (BSD-3-Clause), as the other examples.
"""


def main() -> None:
    root = make_models.parse_root(__doc__)
    folder = os.path.join(root, "model-repository", NAME)
    images = os.path.join(root, "examples", "images")
    os.makedirs(folder, exist_ok=True)
    os.makedirs(images, exist_ok=True)
    x_train, x_test, y_train, y_test = make_models.digits_split()
    model = detector_graph(*train(x_train, y_train))
    onnx.save(model, os.path.join(folder, "model.onnx"))
    precision, recall = evaluate(model, x_test, y_test)
    print(f"{NAME}: precision {precision:.3f}, recall {recall:.3f} on held-out canvases")
    if min(precision, recall) < 0.9:
        raise SystemExit("the detector is worse than 0.9 precision/recall: not written")

    # The sample: 9 test digits on a 96x128 canvas (letterboxed: padding above and below).
    rng = np.random.default_rng(7)
    board, boxes, classes = canvas(x_test, y_test, rng, 9, height=96, width=SIZE)
    sample = to_image(board)
    with open(os.path.join(images, "digits-canvas.png"), "wb") as file:
        file.write(make_models.encode(sample, "PNG"))
    order = np.lexsort((boxes[:, 0], boxes[:, 1] // SPACING))
    settings = {
        "name": NAME,
        "implementation": "mlserver_npu.NPURuntime",
        "parameters": {
            "uri": "./model.onnx",
            "version": "1",
            "extra": {
                "preprocess": [
                    {"op": "convert", "mode": "L"},
                    {"op": "letterbox", "pad_value": 0, "resample": "cv2_area"},
                    {"op": "scale", "factor": 16, "divisor": 255},
                ],
                "postprocess": {
                    "type": "detection",
                    "decoder": "yolov8",
                    "confidence_threshold": 0.5,
                    "iou_threshold": 0.3,
                    "class_agnostic": True,
                    "max_detections": 20,
                },
            },
        },
    }
    with open(os.path.join(folder, "model-settings.json"), "w", encoding="utf-8") as file:
        file.write(json.dumps(settings, indent=2) + "\n")
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as file:
        file.write(README.format(
            canvases=100, precision=precision, recall=recall, width=sample.width,
            height=sample.height, count=len(classes),
            digits=", ".join(str(c) for c in classes[order]),
        ))


if __name__ == "__main__":
    main()
