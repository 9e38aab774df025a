"""LiteRT (TensorFlow Lite) for `.tflite` files: CPU kernels, or an external delegate library
that hands the graph to an NPU (Edge TPU, VeriSilicon VX, ...)."""
import asyncio
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .base import BackendError, InvalidInput, TensorSpec

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


def _specs(details: List[Dict[str, Any]]) -> List[TensorSpec]:
    # shape_signature keeps -1 for dynamic dimensions; shape is the current allocation.
    return [
        TensorSpec(
            name=detail["name"],
            dtype=np.dtype(detail["dtype"]),
            shape=[None if dim < 0 else int(dim) for dim in detail["shape_signature"]],
        )
        for detail in details
    ]


class TFLiteSession:
    def __init__(self, interpreter: Interpreter, device: str):
        self._interpreter = interpreter
        self.device = device
        self.warnings: List[str] = []
        self._input_details = interpreter.get_input_details()
        self._output_details = interpreter.get_output_details()
        self.inputs = _specs(self._input_details)
        self.outputs = _specs(self._output_details)
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
        return {detail["name"]: interpreter.get_tensor(detail["index"])
                for detail in self._output_details}

    async def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        async with self._lock:
            try:
                return await asyncio.to_thread(self._invoke, feeds)
            except ValueError as error:  # LiteRT's message for a shape or type it refuses
                raise InvalidInput(str(error)) from error

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
    return TFLiteSession(interpreter, label)


class TFLiteBackend:
    name = "tflite"
    Options = Options

    def available_devices(self) -> List[str]:
        return list(DEVICES)

    async def open(
        self, model_path: Path, device: Optional[str], options: Options
    ) -> TFLiteSession:
        return await asyncio.to_thread(_open, model_path, device, options)
