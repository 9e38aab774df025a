"""What onnxruntime computes directly, and sample inputs, for comparing with served outputs."""
from functools import lru_cache
from pathlib import Path
from typing import Dict

import numpy as np
import onnxruntime as ort
from onnx import helper

from server import MODEL_REPOSITORY


@lru_cache(maxsize=None)
def session(model_file: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])


def run(model: str, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    sess = session(MODEL_REPOSITORY / model / "model.onnx")
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def digits(batch: int, offset: int = 0) -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data[offset : offset + batch].astype(np.float32)


def sample_inputs(model: str, batch: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    if model == "digits":
        return {"input": digits(batch)}
    if model == "digits-temperature":
        return {
            "pixels": digits(batch, offset=100),
            "temperature": rng.uniform(0.5, 3, (batch, 1)).astype(np.float32),
        }
    if model == "squeezenet":
        return {"data_0": rng.random((batch, 3, 224, 224), dtype=np.float32)}
    raise KeyError(model)


EXAMPLE_MODELS = ["digits", "digits-temperature", "squeezenet"]


def v2_input(name: str, array: np.ndarray) -> dict:
    datatype = {"float32": "FP32", "int64": "INT64", "float64": "FP64", "int32": "INT32",
                "uint8": "UINT8"}
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype[str(array.dtype)],
        "data": array.ravel().tolist(),
    }


def identity_model(dtype, shape) -> bytes:
    """An ONNX model whose output `y` is its input `x`: it shows the preprocessed tensor."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", dtype, shape)],
        [helper.make_tensor_value_info("y", dtype, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()
