"""A simulated NPU behind FuriosaAI's `furiosa.runtime` API, for the benchmark only: the bench
puts this folder first on its MLServer's PYTHONPATH, so a model with `"backend": "furiosa"`
runs through the plugin's real furiosa backend onto this device instead of a Warboy.

Each device in the `device` list is one processing element (PE): a thread that takes runs from
its queue one at a time, back to back as a device does (the host's event loop only submits
and collects), each taking a fixed time whatever the rows, sleeping without CPU or GIL. The
model is compiled for a static batch (`batch_size`, which fills a dynamic axis 0). Outputs are real: the ONNX file runs on onnxruntime. The time per run is `run_ms` in
`simulated-npu.json` beside the model file.
"""
import asyncio
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np
import onnxruntime as ort

__version__ = "0.10.0+simulated"

_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
           "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


class DataType:
    def __init__(self, numpy_dtype: Any):
        self.numpy = np.dtype(numpy_dtype)


class TensorDesc:
    def __init__(self, name: str, shape: Sequence[int], dtype: DataType):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class Model:
    def __init__(self, inputs: List[TensorDesc], outputs: List[TensorDesc]):
        self._inputs, self._outputs = inputs, outputs

    def inputs(self) -> List[TensorDesc]:
        return list(self._inputs)

    def outputs(self) -> List[TensorDesc]:
        return list(self._outputs)


def _descs(values: Sequence[Any], batch: int) -> List[TensorDesc]:
    return [
        TensorDesc(v.name, [d if isinstance(d, int) else batch for d in v.shape],
                   DataType(_DTYPES[v.type]))
        for v in values
    ]


class Runner:
    """One PE: runs one at a time in submission order, each taking `run_seconds`."""

    def __init__(self, model_path: str, batch: int, run_seconds: float):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(model_path, options,
                                             providers=["CPUExecutionProvider"])
        self.model = Model(_descs(self._session.get_inputs(), batch),
                           _descs(self._session.get_outputs(), batch))
        self._run_seconds = run_seconds
        self._jobs: "queue.Queue[Any]" = queue.Queue()
        threading.Thread(target=self._work, daemon=True).start()

    def _work(self) -> None:
        # Device time: a run queued while the PE was busy starts when the last one ended, not
        # when this thread wakes up, so the host's scheduling delays do not slow the device.
        free_at = 0.0
        while True:
            job = self._jobs.get()
            if job is None:
                return
            feeds, loop, future, submitted = job
            finish = free_at = max(submitted, free_at) + self._run_seconds
            try:
                result = self._session.run(None, feeds)
            except Exception as error:  # noqa: BLE001 - handed to the caller
                result = error
            time.sleep(max(0.0, finish - time.perf_counter()))
            loop.call_soon_threadsafe(_settle, future, result)

    async def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        for desc, array in zip(self.model.inputs(), inputs):
            if tuple(array.shape) != desc.shape:
                raise ValueError(f"tensor {desc.name}: shape {array.shape}, compiled {desc.shape}")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        feeds = {desc.name: array for desc, array in zip(self.model.inputs(), inputs)}
        self._jobs.put((feeds, loop, future, time.perf_counter()))
        return await future

    async def close(self) -> None:
        self._jobs.put(None)


def _settle(future: asyncio.Future, result: Any) -> None:
    if future.done():
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


async def create_runner(model: str, *, device: Optional[str] = None,
                        batch_size: Optional[int] = None, worker_num: Optional[int] = None,
                        compiler_config: Any = None) -> Runner:
    simulated = json.loads((Path(model).parent / "simulated-npu.json").read_text())
    return Runner(model, batch_size or 1, simulated["run_ms"] / 1000)
