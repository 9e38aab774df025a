"""Small ONNX detectors with a known output, for the layouts no real model here has.

`head_model` builds a graph whose outputs are the given arrays for every image of the batch
(the image only sets the batch size: each output is its constant expanded to [B, ...]), so a
test knows exactly what the decoder gets, through onnxruntime or a served model.
"""
from typing import Dict, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def head_model(
    heads: Dict[str, np.ndarray], input_size: Tuple[int, int], channels: int = 3
) -> bytes:
    """A [B, channels, H, W] float input named `images` -> each `heads[name]` ([1, ...] or
    [...]) expanded over the batch, in its own dtype."""
    nodes = [
        helper.make_node("Shape", ["images"], ["image_shape"]),
        helper.make_node(
            "Slice", ["image_shape", "zero", "one"], ["batch"], name="batch_of_images"
        ),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    outputs = []
    for index, (name, array) in enumerate(heads.items()):
        array = np.asarray(array)
        if array.ndim == 0 or array.shape[0] != 1:
            array = array[None]
        rest = np.array(array.shape[1:], np.int64)
        initializers += [
            numpy_helper.from_array(array, f"head_{index}"),
            numpy_helper.from_array(rest, f"rest_{index}"),
        ]
        nodes += [
            helper.make_node("Concat", ["batch", f"rest_{index}"], [f"shape_{index}"], axis=0),
            helper.make_node("Expand", [f"head_{index}", f"shape_{index}"], [name]),
        ]
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        outputs.append(helper.make_tensor_value_info(name, elem, [None] + list(array.shape[1:])))
    graph = helper.make_graph(
        nodes,
        "known_heads",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, channels, *input_size])],
        outputs,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_heads(model: bytes, batch: int, input_size: Tuple[int, int]) -> Dict[str, np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    images = np.zeros((batch, 3) + tuple(input_size), np.float32)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": images})))


def output_specs(model: bytes):
    """The model's outputs as the server's backend sees them (TensorSpec)."""
    from mlserver_npu.backends import TensorSpec

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    specs = []
    for output in session.get_outputs():
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(_ORT_TYPES[output.type]))
        shape = [dim if isinstance(dim, int) else None for dim in output.shape]
        specs.append(TensorSpec(output.name, dtype, shape))
    return specs


_ORT_TYPES = {
    "tensor(float)": TensorProto.FLOAT,
    "tensor(int64)": TensorProto.INT64,
    "tensor(int32)": TensorProto.INT32,
    "tensor(uint8)": TensorProto.UINT8,
}
