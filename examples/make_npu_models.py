"""Regenerate the NPU-style example models from the committed digits models.

Run as ``python examples/make_npu_models.py`` after ``examples/make_models.py`` (with the same
``--root DIR`` to write under DIR instead of this repository). The output is deterministic and
committed, like the other example models.

NPU compilers and TFLite exports fix every shape, the batch included, and NPUs favour
quantized integer models. These models show how mlserver-npu serves such files:

* ``model-repository/digits-b4``: the ``digits`` ONNX model with its batch fixed to 4, as an
  NPU compiler would have it (``[4, 64]`` in, ``[4]`` and ``[4, 10]`` out).
* ``examples/tflite-repository/digits-tflite``: the same logistic regression (weights from
  ``digits-temperature``) as a float32 TFLite model with batch 1, written with LiteRT's own
  flatbuffer schema (FULLY_CONNECTED, SOFTMAX, ARG_MAX).
* ``examples/tflite-repository/digits-uint8``: that model quantized to uint8 (pixels 0..16 as
  uint8 with scale 1, uint8 weights, int32 bias, uint8 probabilities with scale 1/256) with a
  dynamic batch.

The TFLite models need LiteRT (``pip install 'mlserver-npu[tflite]'``), so they live in their
own repository folder: the default ``model-repository`` must load without optional extras.
"""
import json
import os

import flatbuffers
import numpy as np
import onnx
from ai_edge_litert import schema_py_generated as tfl
from ai_edge_litert.interpreter import Interpreter
from onnx import numpy_helper
from sklearn.datasets import load_digits

from make_models import parse_root  # examples/ is on sys.path when this script runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "model-repository")
TFLITE_REPO = os.path.join(ROOT, "examples", "tflite-repository")
MIN_ACCURACY = 0.95


def _folder(root, name, model_file, extra, readme):
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    settings = {
        "name": name,
        "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"uri": f"./{model_file}", "version": "1", "extra": extra},
    }
    with open(os.path.join(folder, "model-settings.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(settings, indent=2) + "\n")
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme)
    return os.path.join(folder, model_file)


def make_digits_b4():
    model = onnx.load(os.path.join(MODELS, "digits", "model.onnx"))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 4
    onnx.checker.check_model(model, full_check=True)
    path = _folder(MODELS, "digits-b4", "model.onnx", {"options": {"intra_op_threads": 1}}, """\
# digits-b4

The `digits` model with its batch fixed to 4, the way an NPU compiler fixes shapes.
Clients still send any batch size: mlserver-npu splits a larger batch into runs of 4 (over
several sessions when there are), pads a smaller one and cuts the padding from the outputs.

| | name | type | model shape | served shape |
|---|---|---|---|---|
| input | `input` | FP32 | [4, 64] | [-1, 64] |
| output | `label` | INT64 | [4] | [-1] |
| output | `probabilities` | FP32 | [4, 10] | [-1, 10] |

Produced by `python examples/make_npu_models.py`.
""")
    onnx.save(model, path)
    print(f"{os.path.relpath(path, ROOT)}: {os.path.getsize(path)} bytes")


def _tensor(name, dtype, shape, signature=None, buffer=0, quantization=None):
    tensor = tfl.TensorT()
    tensor.name, tensor.type, tensor.shape, tensor.buffer = name, dtype, list(shape), buffer
    tensor.shapeSignature = list(signature or shape)
    if quantization is not None:
        tensor.quantization = tfl.QuantizationParametersT()
        tensor.quantization.scale = [float(quantization[0])]
        tensor.quantization.zeroPoint = [int(quantization[1])]
    return tensor


def _tflite_model(description, tensors, constants):
    """A one-subgraph model: input -> FULLY_CONNECTED -> logits -> SOFTMAX -> probabilities,
    logits -> ARG_MAX -> label. `tensors` maps each role to its TensorT, `constants` maps the
    constant roles to their arrays."""
    model = tfl.ModelT()
    model.version, model.description = 3, description
    model.buffers = [tfl.BufferT()]  # buffer 0: the empty buffer of non-constant tensors
    order = ["input", "weights", "bias", "logits", "probabilities", "axis", "label"]
    for role, array in constants.items():
        buffer = tfl.BufferT()
        buffer.data = np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8).tolist()
        model.buffers.append(buffer)
        tensors[role].buffer = len(model.buffers) - 1
    index = {role: i for i, role in enumerate(order)}

    model.operatorCodes = []
    operators = []
    for code, inputs, outputs, options_type, options in [
        (tfl.BuiltinOperator.FULLY_CONNECTED, ["input", "weights", "bias"], ["logits"],
         tfl.BuiltinOptions.FullyConnectedOptions, tfl.FullyConnectedOptionsT()),
        (tfl.BuiltinOperator.SOFTMAX, ["logits"], ["probabilities"],
         tfl.BuiltinOptions.SoftmaxOptions, tfl.SoftmaxOptionsT()),
        (tfl.BuiltinOperator.ARG_MAX, ["logits", "axis"], ["label"],
         tfl.BuiltinOptions.ArgMaxOptions, tfl.ArgMaxOptionsT()),
    ]:
        opcode = tfl.OperatorCodeT()
        opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, min(code, 127), 1
        model.operatorCodes.append(opcode)
        operator = tfl.OperatorT()
        operator.opcodeIndex = len(model.operatorCodes) - 1
        operator.inputs = [index[r] for r in inputs]
        operator.outputs = [index[r] for r in outputs]
        operator.builtinOptionsType, operator.builtinOptions = options_type, options
        operators.append(operator)
    operators[1].builtinOptions.beta = 1.0
    operators[2].builtinOptions.outputType = tfl.TensorType.INT64

    subgraph = tfl.SubGraphT()
    subgraph.name = "main"
    subgraph.tensors = [tensors[role] for role in order]
    subgraph.inputs = [index["input"]]
    subgraph.outputs = [index["label"], index["probabilities"]]
    subgraph.operators = operators
    model.subgraphs = [subgraph]
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _run_tflite(path, x):
    interpreter = Interpreter(model_path=path)
    detail = interpreter.get_input_details()[0]
    outputs = {d["name"]: [] for d in interpreter.get_output_details()}
    # batch 1 models run row by row; dynamic ones take the whole batch
    step = len(x) if detail["shape_signature"][0] == -1 else 1
    if step != 1:
        interpreter.resize_tensor_input(detail["index"], [step, x.shape[1]])
    interpreter.allocate_tensors()
    for start in range(0, len(x), step):
        interpreter.set_tensor(detail["index"], x[start:start + step])
        interpreter.invoke()
        for d in interpreter.get_output_details():
            outputs[d["name"]].append(interpreter.get_tensor(d["index"]))
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def _write(path, data, x, y):
    with open(path, "wb") as f:
        f.write(data)
    outputs = _run_tflite(path, x)
    accuracy = float(np.mean(outputs["label"] == y))
    assert accuracy >= MIN_ACCURACY, accuracy
    print(f"{os.path.relpath(path, ROOT)}: {len(data)} bytes, accuracy {accuracy:.4f} on all "
          f"{len(y)} digits")
    return outputs


def make_digits_tflite(weights, bias, x, y):
    f32, i32, i64 = tfl.TensorType.FLOAT32, tfl.TensorType.INT32, tfl.TensorType.INT64
    data = _tflite_model(
        "digits logistic regression, float32, batch 1",
        {
            "input": _tensor("input", f32, [1, 64]),
            "weights": _tensor("weights", f32, [10, 64]),
            "bias": _tensor("bias", f32, [10]),
            "logits": _tensor("logits", f32, [1, 10]),
            "probabilities": _tensor("probabilities", f32, [1, 10]),
            "axis": _tensor("axis", i32, [1]),
            "label": _tensor("label", i64, [1]),
        },
        {"weights": weights.T.astype(np.float32), "bias": bias.astype(np.float32),
         "axis": np.array([1], np.int32)},
    )
    path = _folder(TFLITE_REPO, "digits-tflite", "model.tflite", {"options": {"num_threads": 1}},
                   """\
# digits-tflite

The `digits` logistic regression as a float32 TFLite model with a static batch of 1 (as most
TFLite exports have it): mlserver-npu runs a larger request batch row by row.

| | name | type | model shape | served shape |
|---|---|---|---|---|
| input | `input` | FP32 | [1, 64] | [-1, 64] |
| output | `label` | INT64 | [1] | [-1] |
| output | `probabilities` | FP32 | [1, 10] | [-1, 10] |

Produced by `python examples/make_npu_models.py` (LiteRT flatbuffer schema: FULLY_CONNECTED,
SOFTMAX, ARG_MAX).
""")
    outputs = _write(path, data, x.astype(np.float32), y)
    reference = np.exp(x @ weights + bias)
    reference /= reference.sum(axis=1, keepdims=True)
    assert np.allclose(outputs["probabilities"], reference, atol=1e-5)


def make_digits_uint8(weights, bias, x, y):
    u8, i32, i64 = tfl.TensorType.UINT8, tfl.TensorType.INT32, tfl.TensorType.INT64
    # asymmetric uint8 weights; bias in int32 at input scale x weight scale (TFLite's rule)
    w = weights.T
    w_low, w_high = min(w.min(), 0.0), max(w.max(), 0.0)
    w_scale = (w_high - w_low) / 255
    w_zero = int(round(-w_low / w_scale))
    w_quantized = np.clip(np.round(w / w_scale) + w_zero, 0, 255).astype(np.uint8)
    logits = x @ weights + bias
    l_low, l_high = min(logits.min(), 0.0), max(logits.max(), 0.0)
    l_scale = (l_high - l_low) / 255
    data = _tflite_model(
        "digits logistic regression, uint8-quantized, dynamic batch",
        {
            "input": _tensor("input", u8, [1, 64], [-1, 64], quantization=(1.0, 0)),
            "weights": _tensor("weights", u8, [10, 64], quantization=(w_scale, w_zero)),
            "bias": _tensor("bias", i32, [10], quantization=(w_scale, 0)),
            "logits": _tensor("logits", u8, [1, 10], [-1, 10],
                              quantization=(l_scale, int(round(-l_low / l_scale)))),
            "probabilities": _tensor("probabilities", u8, [1, 10], [-1, 10],
                                     quantization=(1 / 256, 0)),
            "axis": _tensor("axis", i32, [1]),
            "label": _tensor("label", i64, [1], [-1]),
        },
        {"weights": w_quantized, "bias": np.round(bias / w_scale).astype(np.int32),
         "axis": np.array([1], np.int32)},
    )
    path = _folder(TFLITE_REPO, "digits-uint8", "model.tflite", {"options": {"num_threads": 1}},
                   """\
# digits-uint8

The `digits` logistic regression quantized to uint8, the integer form NPUs run, with a dynamic
batch. Clients send the 8x8 pixels (0..16) as UINT8 and get UINT8 probabilities (scale 1/256:
divide by 256) and the INT64 label.

| | name | type | shape | quantization |
|---|---|---|---|---|
| input | `input` | UINT8 | [-1, 64] | scale 1, zero point 0 |
| output | `label` | INT64 | [-1] | |
| output | `probabilities` | UINT8 | [-1, 10] | scale 1/256, zero point 0 |

The model metadata (`GET /v2/models/digits-uint8`) gives each quantized tensor's `scale` and
`zero_point` as tensor parameters. With `"options": {"dequantize_outputs": true}` the
probabilities come back as FP32 real values instead.

Produced by `python examples/make_npu_models.py`.
""")
    _write(path, data, x.astype(np.uint8), y)


def main():
    global ROOT, MODELS, TFLITE_REPO
    ROOT = parse_root(__doc__)
    MODELS = os.path.join(ROOT, "model-repository")
    TFLITE_REPO = os.path.join(ROOT, "examples", "tflite-repository")
    make_digits_b4()
    graph = onnx.load(os.path.join(MODELS, "digits-temperature", "model.onnx")).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights, bias = constants["W"].astype(np.float64), constants["b"].astype(np.float64)
    x, y = load_digits(return_X_y=True)
    make_digits_tflite(weights, bias, x, y)
    make_digits_uint8(weights, bias, x, y)


if __name__ == "__main__":
    main()
