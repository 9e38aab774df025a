"""Regenerate the example models under ``model-repository/``.

Run from anywhere as ``python examples/make_models.py``. Everything is built
from data shipped inside installed packages (scikit-learn's bundled digits
data set, the SqueezeNet graph from the ``onnx`` wheel's backend test data)
with fixed seeds and a fit that converges to the optimum (a Newton solver, one BLAS
thread), so the output is deterministic: running the script twice, or on another
machine, gives byte-identical files (``tests/test_examples.py`` checks this).
``--root DIR`` writes the files under DIR instead of this repository.

The generated files are committed to the repository so that
``model-repository/`` can be served right after install, without running
this script; it documents how they were made and lets them be rebuilt.

Models:

* ``digits``: logistic regression on the 8x8 digits, exported with skl2onnx.
* ``digits-temperature``: the same weights as a hand-built graph with two
  inputs (``pixels``, ``temperature``) and two outputs.
* ``squeezenet``: the SqueezeNet 1.0 architecture with seeded random
  weights, a compute-bound 224x224 model for batching and benchmarks.
* ``digits-image``: the ``digits`` model behind an image input (encoded
  PNG/JPEG in, top-3 ``score:index:label`` strings out), with sample images
  under ``examples/images/``.
* ``squeezenet-image``: the ``squeezenet`` model behind the ``imagenet``
  preprocessing preset, with 1000 generated labels.
"""

import argparse
import io
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.join(ROOT, "model-repository")
IMAGES = os.path.join(ROOT, "examples", "images")
MIN_ACCURACY = 0.95


def _write(folder, name, text):
    with open(os.path.join(REPO, folder, name), "w", encoding="utf-8") as f:
        f.write(text)


def _settings(folder, extra, uri="./model.onnx"):
    settings = {
        "name": folder,
        "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"uri": uri, "version": "1", "extra": extra},
    }
    _write(folder, "model-settings.json", json.dumps(settings, indent=2) + "\n")


def _save(model, folder):
    os.makedirs(os.path.join(REPO, folder), exist_ok=True)
    path = os.path.join(REPO, folder, "model.onnx")
    onnx.save(model, path)
    return path


def _session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _symbolic_batch(values):
    for value in values:
        value.type.tensor_type.shape.dim[0].dim_param = "N"


def _report(path, note=""):
    size = os.path.getsize(path)
    print(f"{os.path.relpath(path, ROOT)}: {size} bytes{note}")


def digits_split():
    """(x_train, x_test, y_train, y_test) of scikit-learn's digits, as the model was made."""
    x, y = load_digits(return_X_y=True)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def digit_image(pixels, scale=8):
    """64 values 0..16 -> an 8x8 grayscale image (light digit on dark, as in the data),
    enlarged `scale` times so that every digit pixel is a solid block."""
    values = np.rint(np.asarray(pixels, np.float64).reshape(8, 8) * 255 / 16)
    image = Image.fromarray(values.astype(np.uint8), mode="L")
    return image.resize((8 * scale, 8 * scale), Image.Resampling.NEAREST)


def encode(image, fmt):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def train_digits():
    """Fit the digits classifier; return it with the held-out split."""
    x_train, x_test, y_train, y_test = digits_split()
    # C=0.01 was chosen by 5-fold cross-validation on the training split
    # (among 1, 0.1, 0.03, 0.01, 0.003); the test split is only measured.
    # lbfgs stops early at a point that depends on rounding (a 1e-15 change of the
    # data moves most float32 weights); newton-cholesky converges to the optimum
    # itself, the same on every machine. One BLAS thread fixes the summation order.
    with threadpool_limits(limits=1):
        clf = LogisticRegression(
            C=0.01, solver="newton-cholesky", tol=1e-12, max_iter=100
        ).fit(x_train, y_train)
    return clf, x_test.astype(np.float32), y_test


def make_digits(clf, x_test, y_test):
    model = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # skl2onnx names the graph with a random UUID and may repeat an opset; its version
    # in producer_version would change the bytes with every skl2onnx release.
    model.graph.name = "digits"
    model.producer_name = "mlserver-npu examples/make_models.py (skl2onnx)"
    model.producer_version = ""
    opsets = {op.domain: op.version for op in model.opset_import}
    del model.opset_import[:]
    for domain, version in sorted(opsets.items()):
        model.opset_import.append(helper.make_opsetid(domain, version))
    _symbolic_batch(list(model.graph.input) + list(model.graph.output))
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    onnx.checker.check_model(model)
    path = _save(model, "digits")

    labels, probabilities = _session(path).run(None, {"input": x_test})
    assert labels.dtype == np.int64 and labels.shape == (len(x_test),)
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(x_test), 10)
    accuracy = float(np.mean(labels == y_test))
    assert accuracy >= MIN_ACCURACY, accuracy

    _write("digits", "labels.txt", "".join(f"{i}\n" for i in range(10)))
    _settings(
        "digits",
        {"device": "cpu", "sessions": 1, "options": {"intra_op_threads": 1}},
    )
    _write("digits", "README.md", f"""\
# digits

Multinomial logistic regression (scikit-learn `LogisticRegression(C=0.01)`,
fitted to convergence with the `newton-cholesky` solver)
classifying 8x8 images of handwritten digits into the classes 0..9.

- Training data: scikit-learn's bundled `load_digits` (1797 images, 64 pixel
  features with values 0..16, used raw without scaling).
- Split: `train_test_split(test_size=0.25, random_state=0, stratify=y)`
  (1347 training, {len(y_test)} held-out images).
- Held-out accuracy of this ONNX file, measured with onnxruntime:
  **{accuracy:.4f}**.

| | name | type | shape |
|---|---|---|---|
| input | `input` | FP32 | [N, 64] |
| output | `label` | INT64 | [N] |
| output | `probabilities` | FP32 | [N, 10] |

`labels.txt` lists the class names in the order of `probabilities`.

Produced by `python examples/make_models.py` (exported with skl2onnx,
ONNX opset 17).
""")
    _report(path, f", held-out accuracy {accuracy:.4f}")
    return path


def make_digits_temperature(clf, x_test, digits_path):
    weights = clf.coef_.T.astype(np.float32)  # [64, 10]
    bias = clf.intercept_.astype(np.float32)  # [10]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["pixels", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Div", ["logits", "temperature"], ["scaled"]),
            helper.make_node("Softmax", ["scaled"], ["probabilities"], axis=1),
            helper.make_node(
                "ArgMax", ["logits"], ["label"], axis=1, keepdims=0
            ),
        ],
        "digits_temperature",
        [
            helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64]),
            helper.make_tensor_value_info(
                "temperature", TensorProto.FLOAT, ["N", 1]
            ),
        ],
        [
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, ["N", 10]
            ),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        initializer=[
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(bias, "b"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
        producer_name="mlserver-npu examples/make_models.py",
    )
    onnx.checker.check_model(model, full_check=True)
    path = _save(model, "digits-temperature")

    session = _session(path)
    ones = np.ones((len(x_test), 1), np.float32)
    probabilities, labels = session.run(
        None, {"pixels": x_test, "temperature": ones}
    )
    ref_labels, ref_probabilities = _session(digits_path).run(
        None, {"input": x_test}
    )
    assert np.array_equal(labels, ref_labels)
    assert np.allclose(probabilities, ref_probabilities, atol=1e-5)
    hot, _ = session.run(None, {"pixels": x_test, "temperature": 4 * ones})
    assert np.all(hot.max(axis=1) < probabilities.max(axis=1))

    _settings("digits-temperature", {"options": {"intra_op_threads": 1}})
    _write("digits-temperature", "README.md", """\
# digits-temperature

The `digits` logistic regression (same weights), rebuilt by hand with
`onnx.helper` to show a model with several inputs and outputs, which are
matched by name rather than by position:

    logits        = MatMul(pixels, W) + b
    probabilities = Softmax(logits / temperature, axis=1)
    label         = ArgMax(logits, axis=1)

| | name | type | shape |
|---|---|---|---|
| input | `pixels` | FP32 | [N, 64] |
| input | `temperature` | FP32 | [N, 1] |
| output | `probabilities` | FP32 | [N, 10] |
| output | `label` | INT64 | [N] |

`temperature` scales the logits per row: 1 gives the same probabilities as
the `digits` model, larger values flatten them and smaller values sharpen
them; `label` does not depend on it.

Produced by `python examples/make_models.py` (ONNX opset 17).
""")
    _report(path)
    return path


def make_squeezenet():
    source = os.path.join(
        os.path.dirname(onnx.__file__),
        "backend", "test", "data", "light", "light_squeezenet.onnx",
    )
    model = onnx.load(source)
    graph = model.graph
    init = {t.name: t for t in graph.initializer}

    # Weights are ConstantOfShape nodes filled with 0.02: replace each with
    # a seeded random initializer of the same shape (He normal for conv
    # weights, zeros for biases).
    rng = np.random.default_rng(0)
    fills = [n for n in graph.node if n.op_type == "ConstantOfShape"]
    for node in fills:
        shape = tuple(int(d) for d in numpy_helper.to_array(init[node.input[0]]))
        if len(shape) == 4:
            std = np.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        else:
            value = np.zeros(shape, np.float32)
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        graph.node.remove(node)

    used = {name for node in graph.node for name in node.input}
    for tensor in list(graph.initializer):
        if tensor.name not in used:
            graph.initializer.remove(tensor)

    # The file is IR version 3, where every initializer must also be a graph
    # input. IR version 4 (the one matching opset 9) lifts this, leaving
    # data_0 as the only input.
    model.ir_version = 4
    names = {t.name for t in graph.initializer}
    for value in list(graph.input):
        if value.name in names or value.name not in used:
            graph.input.remove(value)
    assert [v.name for v in graph.input] == ["data_0"]
    _symbolic_batch([graph.input[0], graph.output[0]])
    onnx.checker.check_model(model, full_check=True)
    path = _save(model, "squeezenet")

    session = _session(path)
    a, b = rng.random((2, 3, 3, 224, 224), dtype=np.float32)
    (out_a,) = session.run(None, {"data_0": a})
    (out_b,) = session.run(None, {"data_0": b})
    assert out_a.shape == (3, 1000, 1, 1) and out_a.dtype == np.float32
    assert not np.allclose(out_a, out_b)
    assert out_a.reshape(3, 1000).std(axis=1).min() > 1e-6
    for i in range(3):
        (row,) = session.run(None, {"data_0": a[i : i + 1]})
        assert np.allclose(row[0], out_a[i], rtol=1e-4, atol=1e-7)

    _settings("squeezenet", {"options": {"intra_op_threads": 1}})
    _write("squeezenet", "README.md", """\
# squeezenet

The SqueezeNet 1.0 architecture (from the `onnx` wheel's
`backend/test/data/light/light_squeezenet.onnx`, ONNX opset 9) with seeded
random weights (He normal convolution weights). It is a compute-bound
224x224 convolutional model for exercising shape and batch handling and for
benchmarks, **not a trained classifier**: its class scores are meaningless.

| | name | type | shape |
|---|---|---|---|
| input | `data_0` | FP32 | [N, 3, 224, 224] |
| output | `softmaxout_1` | FP32 | [N, 1000, 1, 1] |

Produced by `python examples/make_models.py`.
""")
    _report(path)
    return path


# The digits model behind an image input: grayscale, 8x8 (box filter: the mean of each
# block), pixel values 0..255 back to the 0..16 the model was trained on.
DIGITS_PREPROCESS = [
    {"op": "convert", "mode": "L"},
    {"op": "resize", "size": [8, 8], "resample": "box"},
    {"op": "scale", "factor": 16, "divisor": 255},
]


def _image_accuracy(session, x_test, y_test, fmt):
    """Held-out accuracy of the digits rendered as files, preprocessed as DIGITS_PREPROCESS."""
    rows = []
    for pixels in x_test:
        image = Image.open(io.BytesIO(encode(digit_image(pixels), fmt))).convert("L")
        small = image.resize((8, 8), Image.Resampling.BOX)
        rows.append(np.asarray(small, np.float32).reshape(64) * np.float32(16) / np.float32(255))
    labels, _ = session.run(None, {"input": np.stack(rows)})
    return float(np.mean(labels == y_test))


def make_digits_image(x_test, y_test, digits_path):
    os.makedirs(os.path.join(REPO, "digits-image"), exist_ok=True)
    session = _session(digits_path)
    accuracy = {fmt: _image_accuracy(session, x_test, y_test, fmt) for fmt in ("PNG", "JPEG")}
    assert min(accuracy.values()) >= MIN_ACCURACY, accuracy

    _settings(
        "digits-image",
        {
            "options": {"intra_op_threads": 1},
            "preprocess": DIGITS_PREPROCESS,
            "postprocess": {
                "type": "classification",
                "top_k": 3,
                "labels": "../digits/labels.txt",
                "output": "probabilities",
            },
        },
        uri="../digits/model.onnx",
    )
    # One sample per digit: the first of its class in the held-out split.
    os.makedirs(IMAGES, exist_ok=True)
    samples = []
    for digit in range(10):
        index = int(np.flatnonzero(y_test == digit)[0])
        image = digit_image(x_test[index])
        for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg")):
            with open(os.path.join(IMAGES, f"digit-{digit}.{suffix}"), "wb") as f:
                f.write(encode(image, fmt))
        samples.append(index)
    _write("digits-image", "README.md", f"""\
# digits-image

The `digits` model (`../digits/model.onnx`, no copy) behind an image input:
send a PNG or JPEG of a light digit on a dark background (as in the training
data) and get the top 3 classes as `"score:index:label"` strings.

| | name | type | shape |
|---|---|---|---|
| input | `input` | BYTES (`content_type: image`) | [N] |
| output | `label` | INT64 | [N] |
| output | `probabilities` | BYTES | [N, 3] |

Preprocessing (`parameters.extra.preprocess`): grayscale, resize to 8x8 with
a box filter (the mean of each block), scale 0..255 to 0..16, reshaped to the
model's [N, 64]. Postprocessing: classification of `probabilities`, top 3,
labels from `../digits/labels.txt`.

Held-out accuracy (the 450 images of the `digits` split, rendered 64x64 as
files and preprocessed as above): PNG **{accuracy["PNG"]:.4f}**, JPEG
(quality 90) **{accuracy["JPEG"]:.4f}**; the `digits` model on the raw
values: see `../digits/README.md`.

`examples/images/digit-N.png` / `.jpg` are the first held-out image of each
digit N.

Produced by `python examples/make_models.py`.
""")
    print(f"model-repository/digits-image: PNG accuracy {accuracy['PNG']:.4f}, "
          f"JPEG accuracy {accuracy['JPEG']:.4f}, samples {samples}")


def make_squeezenet_image():
    os.makedirs(os.path.join(REPO, "squeezenet-image"), exist_ok=True)
    _write("squeezenet-image", "labels.txt", "".join(f"class_{i:03d}\n" for i in range(1000)))
    _settings(
        "squeezenet-image",
        {
            "options": {"intra_op_threads": 1},
            "preprocess": "imagenet",
            "postprocess": {"type": "classification", "top_k": 5, "labels": "labels.txt"},
        },
        uri="../squeezenet/model.onnx",
    )
    # A synthetic photo-sized JPEG: large enough that decoding uses Pillow's draft mode.
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:480, 0:640]
    image = Image.fromarray(
        np.stack([xs * 255 // 639, ys * 255 // 479, (xs + ys) * 255 // 1118], axis=-1)
        .astype(np.uint8)
    )
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.integers(0, 560), rng.integers(0, 400)
        w, h = rng.integers(30, 160, size=2)
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.ellipse([int(x), int(y), int(x + w), int(y + h)], fill=color)
    with open(os.path.join(IMAGES, "shapes.jpg"), "wb") as f:
        f.write(encode(image, "JPEG"))
    _write("squeezenet-image", "README.md", """\
# squeezenet-image

The `squeezenet` model (`../squeezenet/model.onnx`, no copy, random weights:
the labels it returns are meaningless) behind the `imagenet` preprocessing
preset: send any JPEG/PNG, get the top 5 of 1000 classes as
`"score:index:label"` strings. `labels.txt` holds generated names
`class_000` ... `class_999`.

| | name | type | shape |
|---|---|---|---|
| input | `data_0` | BYTES (`content_type: image`) | [N] |
| output | `softmaxout_1` | BYTES | [N, 5] |

`imagenet` = RGB, resize the shorter side to 256, center crop 224, /255,
normalize with mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225),
NCHW float32. `examples/images/shapes.jpg` is a 640x480 sample.

Produced by `python examples/make_models.py`.
""")


def parse_root(doc):
    """The folder given by --root (default: this repository), for every generator script."""
    parser = argparse.ArgumentParser(description=doc.partition("\n")[0])
    parser.add_argument("--root", default=ROOT, help="read and write under this folder")
    return os.path.abspath(parser.parse_args().root)


def main():
    global ROOT, REPO, IMAGES
    ROOT = parse_root(__doc__)
    REPO = os.path.join(ROOT, "model-repository")
    IMAGES = os.path.join(ROOT, "examples", "images")
    clf, x_test, y_test = train_digits()
    digits = make_digits(clf, x_test, y_test)
    make_digits_temperature(clf, x_test, digits)
    make_squeezenet()
    make_digits_image(x_test, y_test, digits)
    make_squeezenet_image()


if __name__ == "__main__":
    main()
