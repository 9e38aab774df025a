"""Regenerate the composition examples under ``model-repository/``.

Run as ``python examples/make_composition_models.py`` after ``examples/make_models.py`` and
``examples/make_npu_models.py`` (it reuses their ``digits`` and ``digits-b4`` models). Built
from scikit-learn's bundled digits with fixed seeds: running it twice gives identical files.

* ``read-number``: ``digits-b4`` behind a ``tiles`` preprocessing op and a joined
  classification: a PNG of a row of handwritten digits in, the number as one string out.
  Samples: ``examples/images/number.png`` and ``number.jpg``.
* ``digits-mlp``: a second, different digit classifier (standardisation and a 32-unit
  multi-layer perceptron), with the same inputs and outputs as ``digits``.
* ``digits-ensemble``: an ``mlserver_npu.Pipeline`` that runs ``digits`` and ``digits-mlp``
  concurrently on the same pixels, averages their probabilities and returns the top 3
  digits with labels.
"""
import io
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from PIL import Image
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from make_models import digit_image, digits_split, encode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.join(ROOT, "model-repository")
IMAGES = os.path.join(ROOT, "examples", "images")
MIN_ACCURACY = 0.95
TILE = 64  # digit_image() draws a digit 64x64
NUMBER = "31415926535"


def _write(folder, name, text):
    os.makedirs(os.path.join(REPO, folder), exist_ok=True)
    with open(os.path.join(REPO, folder, name), "w", encoding="utf-8") as f:
        f.write(text)


def _settings(folder, implementation, parameters):
    settings = {"name": folder, "implementation": implementation, "parameters": parameters}
    _write(folder, "model-settings.json", json.dumps(settings, indent=2) + "\n")


def _session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _accuracy(probabilities, y):
    return float(np.mean(np.argmax(probabilities, axis=1) == y))


# --- read-number ---

READ_NUMBER_PREPROCESS = [
    {"op": "convert", "mode": "L"},
    {"op": "tiles", "size": [TILE, TILE]},
    {"op": "resize", "size": [8, 8], "resample": "box"},
    {"op": "scale", "factor": 16, "divisor": 255},
]


def number_image(x_test, y_test, number):
    """The digits of `number` side by side, each the first held-out image of that digit."""
    tiles = [digit_image(x_test[int(np.flatnonzero(y_test == int(d))[0])]) for d in number]
    row = Image.new("L", (TILE * len(tiles), TILE))
    for index, tile in enumerate(tiles):
        row.paste(tile, (TILE * index, 0))
    return row


def _read(session, data):
    """What read-number computes, with Pillow and onnxruntime: the number as a string."""
    image = Image.open(io.BytesIO(data)).convert("L")
    rows = []
    for left in range(0, image.width, TILE):
        tile = image.crop((left, 0, left + TILE, TILE)).resize((8, 8), Image.Resampling.BOX)
        rows.append(np.asarray(tile, np.float32).reshape(64) * np.float32(16) / np.float32(255))
    labels, _ = session.run(None, {"input": np.stack(rows)})
    return "".join(str(label) for label in labels)


def make_read_number(x_test, y_test):
    _settings("read-number", "mlserver_npu.NPURuntime", {
        "uri": "../digits-b4/model.onnx",
        "version": "1",
        "extra": {
            "sessions": 2,
            "options": {"intra_op_threads": 1},
            "preprocess": READ_NUMBER_PREPROCESS,
            "postprocess": {"type": "classification", "top_k": 1, "join": "",
                            "labels": "../digits/labels.txt", "output": "probabilities"},
        },
    })
    image = number_image(x_test, y_test, NUMBER)
    session = _session(os.path.join(REPO, "digits", "model.onnx"))
    read = {}
    for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg")):
        data = encode(image, fmt)
        with open(os.path.join(IMAGES, f"number.{suffix}"), "wb") as f:
            f.write(data)
        read[fmt] = _read(session, data)
    _write("read-number", "README.md", f"""\
# read-number

The `digits-b4` model (`../digits-b4/model.onnx`: the `digits` logistic regression with a
static batch of 4, on 2 sessions) behind a `tiles` preprocessing op: send one image of a row
of 64x64 handwritten digits, get the number back as one string.

| | name | type | shape |
|---|---|---|---|
| input | `input` | BYTES (`content_type: image`) | [N] |
| output | `label` | INT64 | [N, tiles] |
| output | `probabilities` | BYTES | [N]: the top-1 labels of the tiles, joined |

Preprocessing: grayscale, cut into 64x64 tiles (row-major), each tile resized to 8x8 with a
box filter and scaled 0..255 to 0..16: the tiles of an image are consecutive rows of the
model's batch, split into runs of 4 over both sessions. Postprocessing: classification of
`probabilities` with `"join": ""`.

`examples/images/number.png` (and `.jpg`) draws {NUMBER} from the first held-out image of each
digit; the model reads PNG `{read["PNG"]}`, JPEG `{read["JPEG"]}`.

Produced by `python examples/make_composition_models.py`.
""")
    print(f"model-repository/read-number: number.png reads {read['PNG']}, "
          f"number.jpg reads {read['JPEG']} (drawn: {NUMBER})")


# --- digits-mlp and digits-ensemble ---

def make_digits_mlp(x_train, y_train, x_test, y_test):
    clf = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), random_state=0, max_iter=1000)
    ).fit(x_train, y_train)
    model = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    model.graph.name = "digits_mlp"  # skl2onnx names the graph with a random UUID
    opsets = {op.domain: op.version for op in model.opset_import}
    del model.opset_import[:]
    for domain, version in sorted(opsets.items()):
        model.opset_import.append(helper.make_opsetid(domain, version))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    onnx.checker.check_model(model)
    os.makedirs(os.path.join(REPO, "digits-mlp"), exist_ok=True)
    path = os.path.join(REPO, "digits-mlp", "model.onnx")
    onnx.save(model, path)

    labels, probabilities = _session(path).run(None, {"input": x_test})
    accuracy = float(np.mean(labels == y_test))
    assert accuracy >= MIN_ACCURACY and _accuracy(probabilities, y_test) == accuracy
    _settings("digits-mlp", "mlserver_npu.NPURuntime", {
        "uri": "./model.onnx", "version": "1", "extra": {"options": {"intra_op_threads": 1}},
    })
    _write("digits-mlp", "README.md", f"""\
# digits-mlp

A second digit classifier, different from `digits`: scikit-learn's `StandardScaler` and
`MLPClassifier(hidden_layer_sizes=(32,), random_state=0)` (ReLU, Adam, default settings),
trained on the same split of the bundled `load_digits` (1347 training, {len(y_test)} held-out
images, raw 0..16 pixels in).

Held-out accuracy of this ONNX file, measured with onnxruntime: **{accuracy:.4f}**.

| | name | type | shape |
|---|---|---|---|
| input | `input` | FP32 | [N, 64] |
| output | `label` | INT64 | [N] |
| output | `probabilities` | FP32 | [N, 10] |

The same inputs and outputs as `digits`: `digits-ensemble` averages the two.

Produced by `python examples/make_composition_models.py` (exported with skl2onnx, opset 17).
""")
    print(f"model-repository/digits-mlp/model.onnx: held-out accuracy {accuracy:.4f}")
    return path


ENSEMBLE = {
    "steps": [
        {"name": "logistic", "model": "../digits"},
        {"name": "mlp", "model": "../digits-mlp"},
        {"name": "average", "combine": "mean",
         "inputs": ["logistic.outputs.probabilities", "mlp.outputs.probabilities"]},
    ],
    "outputs": {"probabilities": "average.outputs.probabilities"},
    "postprocess": {"type": "classification", "top_k": 3, "labels": "../digits/labels.txt"},
}


def make_digits_ensemble(x_test, y_test, mlp_path):
    _settings("digits-ensemble", "mlserver_npu.Pipeline", {"version": "1", "extra": ENSEMBLE})
    scores = {
        name: _session(path).run(["probabilities"], {"input": x_test})[0]
        for name, path in (("digits", os.path.join(REPO, "digits", "model.onnx")),
                           ("digits-mlp", mlp_path))
    }
    accuracy = {name: _accuracy(p, y_test) for name, p in scores.items()}
    accuracy["ensemble"] = _accuracy((scores["digits"] + scores["digits-mlp"]) / 2, y_test)
    assert accuracy["ensemble"] >= MIN_ACCURACY
    _write("digits-ensemble", "README.md", f"""\
# digits-ensemble

An `mlserver_npu.Pipeline` of two different digit classifiers on the same pixels: the
`digits` logistic regression and the `digits-mlp` perceptron run concurrently (steps
`logistic` and `mlp`, each loaded from its folder with its own sessions), a `combine` step
averages their probabilities, and the pipeline's classification postprocess returns the top 3
digits as `"score:index:label"` strings.

| | name | type | shape |
|---|---|---|---|
| input | `input` | FP32 | [N, 64] |
| output | `probabilities` | BYTES | [N, 3] (`"classification": 0` in the request: FP32 [N, 10]) |

Held-out accuracy (the {len(y_test)} images of the `digits` split), measured with onnxruntime:
`digits` **{accuracy["digits"]:.4f}**, `digits-mlp` **{accuracy["digits-mlp"]:.4f}**, their
average **{accuracy["ensemble"]:.4f}**.

Produced by `python examples/make_composition_models.py`.
""")
    print("model-repository/digits-ensemble: held-out accuracy "
          + ", ".join(f"{name} {value:.4f}" for name, value in accuracy.items()))


def main():
    x_train, x_test, y_train, y_test = digits_split()
    x_test = x_test.astype(np.float32)
    make_read_number(x_test, y_test)
    mlp = make_digits_mlp(x_train, y_train, x_test, y_test)
    make_digits_ensemble(x_test, y_test, mlp)


if __name__ == "__main__":
    main()
