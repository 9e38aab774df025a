"""Benchmark models built here, deterministically (seeded weights, no download), cached:

- `large`: a 3x3 convolution + ReLU over a PP-OCR-sized FP32 [1, 3, 640, 640] input, with an
  output of the same size (1,228,800 floats each way): what moving a large tensor costs;
- `resnet50`: ResNet-50 v1 (bottlenecks 3-4-6-3, 25.5 M parameters, ~4 GFLOPs at 224x224)
  with random He-initialised weights: the compute-bound case at its real size.
"""
import functools
import os
from pathlib import Path
from typing import List

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = root / "mlserver-npu" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class _Graph:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: List[onnx.NodeProto] = []
        self.weights: List[onnx.TensorProto] = []
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        w, b, y = self.name("w"), self.name("b"), self.name("conv")
        scale = np.sqrt(2.0 / (cin * k * k))
        self.weights.append(numpy_helper.from_array(
            (self.rng.standard_normal((cout, cin, k, k)) * scale).astype(np.float32), w))
        self.weights.append(numpy_helper.from_array(np.zeros(cout, np.float32), b))
        pad = k // 2
        self.nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4))
        return self.relu(y) if relu else y

    def relu(self, x: str) -> str:
        y = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [y]))
        return y

    def model(self, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "bench", inputs, outputs, self.weights)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                 ir_version=8)


def _save(model: onnx.ModelProto, name: str) -> Path:
    path = cache_dir() / name
    if not path.is_file():
        partial = path.with_suffix(".partial")
        onnx.save(model, partial)
        partial.replace(path)
    return path


@functools.lru_cache(maxsize=None)
def large() -> Path:
    graph = _Graph(seed=640)
    graph.conv("x", 3, 3, 3)
    graph.nodes[-1].output[0] = "y"  # the ReLU's
    return _save(graph.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 640, 640])],
    ), "large-640.onnx")


@functools.lru_cache(maxsize=None)
def resnet50() -> Path:
    path = cache_dir() / "resnet50-random.onnx"
    if path.is_file():
        return path
    graph = _Graph(seed=50)
    x = graph.conv("data", 3, 64, 7, stride=2)
    pooled = graph.name("pool")
    graph.nodes.append(helper.make_node("MaxPool", [x], [pooled], kernel_shape=[3, 3],
                                        strides=[2, 2], pads=[1, 1, 1, 1]))
    x, channels = pooled, 64
    for blocks, width, stride in [(3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)]:
        for block in range(blocks):
            step = stride if block == 0 else 1
            out = width * 4
            y = graph.conv(x, channels, width, 1)
            y = graph.conv(y, width, width, 3, stride=step)
            y = graph.conv(y, width, out, 1, relu=False)
            shortcut = x if channels == out and step == 1 else graph.conv(
                x, channels, out, 1, stride=step, relu=False)
            added = graph.name("add")
            graph.nodes.append(helper.make_node("Add", [y, shortcut], [added]))
            x, channels = graph.relu(added), out
    pooled = graph.name("gap")
    graph.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
    flat = graph.name("flat")
    graph.nodes.append(helper.make_node("Flatten", [pooled], [flat]))
    w, b = graph.name("fc_w"), graph.name("fc_b")
    graph.weights.append(numpy_helper.from_array(
        (graph.rng.standard_normal((1000, 2048)) * 0.01).astype(np.float32), w))
    graph.weights.append(numpy_helper.from_array(np.zeros(1000, np.float32), b))
    graph.nodes.append(helper.make_node("Gemm", [flat, w, b], ["logits"], transB=1))
    return _save(graph.model(
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
    ), path.name)
