"""LiteRT (TensorFlow Lite) for `.tflite` files: CPU kernels, or an external delegate library
that hands the graph to an NPU (Edge TPU, VeriSilicon VX, ...)."""
import asyncio
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .base import BackendError, InvalidInput, Quantization, TensorSpec, is_input_failure

try:
    from ai_edge_litert.interpreter import Interpreter, load_delegate
except Exception as error:
    raise ImportError(
        f"LiteRT cannot be imported ({type(error).__name__}: {error}); it needs the tflite extra "
        "(pip install 'mlserver-npu[tflite]')"
    ) from error

DEVICES = ["cpu"]


class Options(BaseModel):
    """`parameters.extra.options` for the tflite backend."""

    model_config = ConfigDict(extra="forbid")

    num_threads: Optional[int] = Field(None, ge=1, description="CPU kernel threads")
    delegate: Optional[str] = Field(
        None, description="external delegate library, e.g. 'libedgetpu.so.1'"
    )
    delegate_options: Dict[str, str] = Field(default_factory=dict)
    dequantize_outputs: bool = Field(
        False, description="return quantized outputs as float32 real values"
    )


def _quantization(detail: Dict[str, Any]) -> Optional[Quantization]:
    parameters = detail["quantization_parameters"]
    if not len(parameters["scales"]):
        return None
    return Quantization(
        scale=tuple(float(scale) for scale in parameters["scales"]),
        zero_point=tuple(int(zero) for zero in parameters["zero_points"]),
        axis=int(parameters["quantized_dimension"]),
    )


def _spec(detail: Dict[str, Any]) -> TensorSpec:
    # shape_signature keeps -1 for dynamic dimensions; shape is the current allocation.
    return TensorSpec(
        name=detail["name"],
        dtype=np.dtype(detail["dtype"]),
        shape=[None if dim < 0 else int(dim) for dim in detail["shape_signature"]],
        quantization=_quantization(detail),
    )


def _dequantized(spec: TensorSpec) -> TensorSpec:
    if spec.quantization is None:
        return spec
    return TensorSpec(spec.name, np.dtype(np.float32), spec.shape)


class TFLiteSession:
    def __init__(self, interpreter: Interpreter, device: str, dequantize_outputs: bool = False):
        self._interpreter = interpreter
        self.device = device
        self.warnings: List[str] = []
        self._input_details = interpreter.get_input_details()
        self._output_details = interpreter.get_output_details()
        self.inputs = [_spec(detail) for detail in self._input_details]
        model_outputs = [_spec(detail) for detail in self._output_details]
        # output name -> how to turn its integers into real values, when asked to
        self._dequantize = {
            spec.name: spec.quantization
            for spec in model_outputs
            if dequantize_outputs and spec.quantization is not None
        }
        self.outputs = [
            _dequantized(spec) if spec.name in self._dequantize else spec for spec in model_outputs
        ]
        self._allocated = {d["name"]: tuple(d["shape"]) for d in self._input_details}
        # One interpreter holds one set of tensors: runs on it must not overlap.
        self._lock = asyncio.Lock()

    def _invoke(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        interpreter = self._interpreter
        changed = [
            d for d in self._input_details if feeds[d["name"]].shape != self._allocated[d["name"]]
        ]
        for detail in changed:
            shape = feeds[detail["name"]].shape
            # strict: only dimensions that are dynamic in the model may change
            interpreter.resize_tensor_input(detail["index"], list(shape), strict=True)
            self._allocated[detail["name"]] = shape
        if changed:
            interpreter.allocate_tensors()
        for detail in self._input_details:
            interpreter.set_tensor(detail["index"], feeds[detail["name"]])
        interpreter.invoke()
        results = {}
        for detail in self._output_details:
            array = interpreter.get_tensor(detail["index"])
            quantization = self._dequantize.get(detail["name"])
            results[detail["name"]] = quantization.dequantize(array) if quantization else array
        return results

    async def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        async with self._lock:
            try:
                return await asyncio.to_thread(self._invoke, feeds)
            except ValueError as error:  # LiteRT's message for a shape or type it refuses
                raise InvalidInput(str(error)) from error
            except RuntimeError as error:  # a kernel that cannot take the sizes, or a fault
                if is_input_failure(str(error)):
                    raise InvalidInput(str(error)) from error
                raise

    async def close(self) -> None:
        self._interpreter = None


def _open(model_path: Path, device: Optional[str], options: Options) -> TFLiteSession:
    if (device or "cpu") not in DEVICES:
        raise BackendError(
            f"unknown tflite device '{device}'; known devices: {', '.join(DEVICES)} "
            "(an NPU is reached through options.delegate)"
        )
    delegates = []
    label = "cpu"
    if options.delegate:
        try:
            delegates.append(load_delegate(options.delegate, options.delegate_options))
        except Exception as error:  # LiteRT raises ValueError for a library it cannot load
            raise BackendError(
                f"tflite delegate '{options.delegate}' cannot be loaded: {error}"
            ) from error
        label = f"cpu+{Path(options.delegate).name}"
    try:
        interpreter = Interpreter(
            model_path=str(model_path),
            num_threads=options.num_threads,
            experimental_delegates=delegates or None,
        )
        interpreter.allocate_tensors()
    except Exception as error:  # ValueError for a file that is not a TFLite flatbuffer
        raise BackendError(f"LiteRT cannot open '{model_path.name}': {error}") from error
    return TFLiteSession(interpreter, label, options.dequantize_outputs)


class TFLiteBackend:
    name = "tflite"
    Options = Options

    def available_devices(self) -> List[str]:
        return list(DEVICES)

    async def open(
        self, model_path: Path, device: Optional[str], options: Options
    ) -> TFLiteSession:
        return await asyncio.to_thread(_open, model_path, device, options)
