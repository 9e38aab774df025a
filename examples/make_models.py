"""Regenerate the example models under ``model-repository/``.

Run from anywhere as ``python examples/make_models.py``. Everything is built
from data shipped inside installed packages (scikit-learn's bundled digits
data set, the SqueezeNet graph from the ``onnx`` wheel's backend test data)
with fixed seeds, so the output is deterministic: running the script twice
gives byte-identical ``model.onnx`` files.

The generated files are committed to the repository so that
``model-repository/`` can be served right after install, without running
this script; it documents how they were made and lets them be rebuilt.

Models:

* ``digits``: logistic regression on the 8x8 digits, exported with skl2onnx.
* ``digits-temperature``: the same weights as a hand-built graph with two
  inputs (``pixels``, ``temperature``) and two outputs.
* ``squeezenet``: the SqueezeNet 1.0 architecture with seeded random
  weights, a compute-bound 224x224 model for batching and benchmarks.
"""

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.join(ROOT, "model-repository")
MIN_ACCURACY = 0.95


def _write(folder, name, text):
    with open(os.path.join(REPO, folder, name), "w", encoding="utf-8") as f:
        f.write(text)


def _settings(folder, extra):
    settings = {
        "name": folder,
        "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"uri": "./model.onnx", "version": "1", "extra": extra},
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


def train_digits():
    """Fit the digits classifier; return it with the held-out split."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    # C=0.01 was chosen by 5-fold cross-validation on the training split
    # (among 1, 0.1, 0.03, 0.01, 0.003); the test split is only measured.
    clf = LogisticRegression(C=0.01, max_iter=5000).fit(x_train, y_train)
    return clf, x_test.astype(np.float32), y_test


def make_digits(clf, x_test, y_test):
    model = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # skl2onnx names the graph with a random UUID and may repeat an opset.
    model.graph.name = "digits"
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

Multinomial logistic regression (scikit-learn `LogisticRegression(C=0.01)`)
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


def main():
    clf, x_test, y_test = train_digits()
    digits = make_digits(clf, x_test, y_test)
    make_digits_temperature(clf, x_test, digits)
    make_squeezenet()


if __name__ == "__main__":
    main()
