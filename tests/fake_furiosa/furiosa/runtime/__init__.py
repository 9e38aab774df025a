"""A stand-in for FuriosaAI's `furiosa.runtime` (FuriosaRT >= 0.10, async runner API), for a
machine without a Warboy. Only the tests put it on the server's PYTHONPATH.

It follows the documented API that mlserver-npu uses:
- `create_runner(model, *, device=None, worker_num=None, batch_size=None, compiler_config=None)`,
  both awaitable and an async context manager;
- `Runner.model` (`Model.inputs()/outputs()/input(i)/output(i)`, `TensorDesc` with `.name`,
  `.shape`, `.dtype.numpy`), `await Runner.run(inputs)`, `await Runner.run_with(names, inputs)`,
  `await Runner.close()`;
- errors: `TypeError` for a tensor of the wrong dtype, `ValueError` for a wrong shape or count,
  `FuriosaRuntimeError` for a bad device spec, a busy device, a bad compiler config or a closed
  runner.

The simulated machine has FAKE_FURIOSA_NPUS cards (default 2) of two PEs each; PEs are taken
exclusively as the real runtime does (`npu:X:Y`, `npu:X:Y-Z`, `npuXpeY`, `warboy(P)*N`, comma
lists; default from FURIOSA_DEVICES, else `warboy(2)*1`). Outputs are real: the ONNX file runs
on onnxruntime. Every call is appended as a JSON line to the file FAKE_FURIOSA_LOG names, a run
with the arrays it was given (shape, dtype, and the values of arrays up to 4096 values).
FAKE_FURIOSA_NO_DRIVER=1 makes the import fail as the real package does without its driver.
FAKE_FURIOSA_FAULT=MESSAGE makes each runner's runs after its first FAKE_FURIOSA_FAULT_AFTER
(default 1: the warm-up) fail with FuriosaRuntimeError(MESSAGE), as a device that stopped.
"""
import asyncio
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

if os.environ.get("FAKE_FURIOSA_NO_DRIVER"):
    raise RuntimeError("fake furiosa: NPU driver not found (libfuriosa_hal.so)")

import onnxruntime as ort  # noqa: E402

__version__ = "0.10.0+fake"

# Compiler options the fake accepts, with their types (the real compiler knows more).
COMPILER_OPTIONS = {
    "keep_unsignedness": bool,
    "allow_precision_error": bool,
    "remove_lower": bool,
    "remove_unlower": bool,
    "split_unit": int,
}

Pe = Tuple[int, int]
_taken: Set[Pe] = set()  # the driver's view of this machine: PEs held by open runners
_runner_ids = itertools.count()


class FuriosaRuntimeError(Exception):
    """Base class of the runtime's own errors."""


class DataType:
    def __init__(self, name: str, numpy_dtype: np.dtype):
        self.name, self.numpy = name, np.dtype(numpy_dtype)

    @property
    def numpy_dtype(self) -> type:
        return self.numpy.type

    def __repr__(self) -> str:
        return self.name


DATA_TYPES = {
    np.dtype(t): DataType(n, t)
    for n, t in [("FLOAT16", np.float16), ("FLOAT32", np.float32), ("INT8", np.int8),
                 ("INT16", np.int16), ("INT32", np.int32), ("INT64", np.int64),
                 ("UINT8", np.uint8)]
}


class TensorDesc:
    def __init__(self, name: Optional[str], shape: Tuple[int, ...], dtype: DataType):
        self.name, self.shape, self.dtype = name, shape, dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self, idx: int) -> int:
        return self.shape[idx]

    @property
    def length(self) -> int:
        return int(np.prod(self.shape))

    @property
    def size(self) -> int:
        return self.length * self.dtype.numpy.itemsize

    @property
    def numpy_dtype(self) -> np.dtype:
        return self.dtype.numpy

    def __repr__(self) -> str:
        return f'TensorDesc(name="{self.name}", shape={self.shape}, dtype={self.dtype})'


class Model:
    def __init__(self, inputs: List[TensorDesc], outputs: List[TensorDesc]):
        self._inputs, self._outputs = inputs, outputs

    input_num = property(lambda self: len(self._inputs))
    output_num = property(lambda self: len(self._outputs))

    def input(self, idx: int) -> TensorDesc:
        return self._inputs[idx]

    def output(self, idx: int) -> TensorDesc:
        return self._outputs[idx]

    def inputs(self) -> List[TensorDesc]:
        return list(self._inputs)

    def outputs(self) -> List[TensorDesc]:
        return list(self._outputs)

    def summary(self) -> str:
        return "Inputs:\n{}\nOutputs:\n{}".format(dict(enumerate(self._inputs)),
                                                 dict(enumerate(self._outputs)))


def _record(event: str, **fields: Any) -> None:
    path = os.environ.get("FAKE_FURIOSA_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"event": event, **fields}) + "\n")


LOGGED_VALUES = 4096


def _given(array: np.ndarray) -> Dict[str, Any]:
    """What a run was given, for the log: shape, dtype, and the values of small arrays."""
    given: Dict[str, Any] = {"shape": list(array.shape), "dtype": str(array.dtype)}
    if array.size <= LOGGED_VALUES:
        given["data"] = array.tolist()
    return given


def _machine() -> List[Pe]:
    cards = int(os.environ.get("FAKE_FURIOSA_NPUS", "2"))
    return [(card, pe) for card in range(cards) for pe in (0, 1)]


def _explicit(card: str, first: str, last: Optional[str]) -> List[Pe]:
    pes = [(int(card), int(first))] + ([(int(card), int(last))] if last else [])
    for pe in pes:
        if pe not in _machine():
            raise FuriosaRuntimeError(f"device npu:{pe[0]}:{pe[1]} not found")
    return pes


def _allocate(spec: str) -> List[List[Pe]]:
    """Device spec -> the PE groups it takes (one group per device), or FuriosaRuntimeError."""
    groups: List[List[Pe]] = []
    free = [pe for pe in _machine() if pe not in _taken]
    for part in spec.split(","):
        part = part.strip()
        explicit = re.fullmatch(r"npu:(\d+):(\d+)(?:-(\d+))?", part) or re.fullmatch(
            r"npu(\d+)pe(\d+)(?:-(\d+))?", part
        )
        implicit = re.fullmatch(r"warboy(?:\((\d+)\))?\*(\d+)", part)
        if explicit:
            group = _explicit(*explicit.groups())
            if any(pe in _taken or pe not in free for pe in group):
                raise FuriosaRuntimeError(f"device {part} is busy")
            groups.append(group)
            free = [pe for pe in free if pe not in group]
        elif implicit:
            pes_per_device, count = int(implicit.group(1) or 1), int(implicit.group(2))
            if pes_per_device not in (1, 2):
                raise FuriosaRuntimeError(f"warboy has 1 or 2 PEs per device, not {pes_per_device}")
            for _ in range(count):
                cards = sorted({card for card, _ in free})
                fit = [[pe for pe in free if pe[0] == card][:pes_per_device] for card in cards]
                fit = [group for group in fit if len(group) == pes_per_device]
                if not fit:
                    raise FuriosaRuntimeError(f"no free device for {part}")
                groups.append(fit[0])
                free = [pe for pe in free if pe not in fit[0]]
        else:
            raise FuriosaRuntimeError(f"invalid device specification: {part!r}")
    return groups


def _check_compiler_config(config: Optional[Dict[str, Any]]) -> None:
    for key, value in (config or {}).items():
        if key not in COMPILER_OPTIONS:
            raise FuriosaRuntimeError(f"unknown compiler config '{key}'")
        if type(value) is not COMPILER_OPTIONS[key]:
            raise FuriosaRuntimeError(
                f"compiler config '{key}' must be {COMPILER_OPTIONS[key].__name__}"
            )


class Runner:
    def __init__(self, session: ort.InferenceSession, batch_size: int, device: str,
                 pes: List[Pe], worker_num: int):
        self._session = session
        self._id = next(_runner_ids)
        self._device, self._pes = device, pes
        self._workers = asyncio.Semaphore(worker_num)
        self._closed = False
        inputs, outputs = session.get_inputs(), session.get_outputs()
        # The compiler fixes every shape: a dynamic batch becomes 1, times batch_size.
        self._chunk = inputs[0].shape[0] if isinstance(inputs[0].shape[0], int) else None
        self.model = Model(
            [self._desc(arg, batch_size) for arg in inputs],
            [self._desc(arg, batch_size) for arg in outputs],
        )

    @staticmethod
    def _desc(arg: Any, batch_size: int) -> TensorDesc:
        dtype = np.dtype({"tensor(float)": np.float32, "tensor(int64)": np.int64,
                          "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
                          "tensor(int32)": np.int32, "tensor(float16)": np.float16}[arg.type])
        first, *rest = arg.shape
        if any(not isinstance(dim, int) for dim in rest):
            raise FuriosaRuntimeError(f"tensor '{arg.name}' needs a static shape, got {arg.shape}")
        batch = (first if isinstance(first, int) else 1) * batch_size
        return TensorDesc(arg.name, (batch, *rest), DATA_TYPES[dtype])

    async def run(self, inputs: Any) -> List[np.ndarray]:
        tensors = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
        if len(tensors) != self.model.input_num:
            raise ValueError(f"expected {self.model.input_num} input tensors, got {len(tensors)}")
        return await self._run(dict(zip((d.name for d in self.model.inputs()), tensors)))

    async def run_with(
        self, outputs: Sequence[str], inputs: Dict[str, np.ndarray]
    ) -> List[np.ndarray]:
        if not isinstance(inputs, dict):
            raise TypeError("inputs must be a dict of tensor name to array")
        names = [d.name for d in self.model.outputs()]
        for name in outputs:
            if name not in names:
                raise ValueError(f"unknown output tensor '{name}'")
        if set(inputs) != {d.name for d in self.model.inputs()}:
            raise ValueError(f"input names {sorted(inputs)} do not match the model's")
        results = await self._run(inputs)
        return [results[names.index(name)] for name in outputs]

    async def _run(self, feeds: Dict[str, Any]) -> List[np.ndarray]:
        if self._closed:
            raise FuriosaRuntimeError("runner is closed")
        for desc in self.model.inputs():
            array = feeds[desc.name]
            if not isinstance(array, np.ndarray) or array.dtype != desc.dtype.numpy:
                raise TypeError(f"tensor '{desc.name}' must be {desc.dtype}, got "
                                f"{getattr(array, 'dtype', type(array).__name__)}")
            if array.shape != desc.shape:
                raise ValueError(f"tensor '{desc.name}' must have shape {desc.shape}, "
                                 f"got {array.shape}")
        self._runs = getattr(self, "_runs", 0) + 1
        fault = os.environ.get("FAKE_FURIOSA_FAULT")
        if fault and self._runs > int(os.environ.get("FAKE_FURIOSA_FAULT_AFTER", "1")):
            raise FuriosaRuntimeError(fault)
        async with self._workers:
            _record("run", runner=self._id, device=self._device,
                    inputs={name: _given(array) for name, array in feeds.items()})
            return await asyncio.to_thread(self._compute, feeds)

    def _compute(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """onnxruntime in chunks of the ONNX file's own batch when that one is static."""
        rows = self.model.input(0).shape[0]
        step = self._chunk or rows
        parts = [self._session.run(None, {n: a[i:i + step] for n, a in feeds.items()})
                 for i in range(0, rows, step)]
        return [np.concatenate(outputs) for outputs in zip(*parts)]

    async def close(self) -> bool:
        if not self._closed:
            self._closed = True
            _taken.difference_update(self._pes)
            _record("close", runner=self._id, device=self._device)
        return True

    async def __aenter__(self) -> "Runner":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


async def _create(model: Any, device: Optional[str], worker_num: Optional[int],
                  batch_size: Optional[int], compiler_config: Optional[Dict[str, Any]]) -> Runner:
    spec = device or os.environ.get("FURIOSA_DEVICES") or os.environ.get("NPU_DEVNAME") \
        or "warboy(2)*1"
    _check_compiler_config(compiler_config)
    if not str(model).endswith(".onnx"):
        raise FuriosaRuntimeError(f"the fake runtime compiles ONNX files only, not {model}")
    groups = _allocate(spec)
    pes = [pe for group in groups for pe in group]
    _taken.update(pes)
    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        runner = Runner(session, batch_size or 1, spec, pes, worker_num or 1)
    except BaseException:
        _taken.difference_update(pes)
        raise
    _record("create_runner", runner=runner._id, model=Path(str(model)).name, device=spec,
            pes=[f"npu:{card}:{pe}" for card, pe in pes], worker_num=worker_num,
            batch_size=batch_size, compiler_config=compiler_config)
    return runner


class _RunnerCreation:
    """What create_runner returns: `await` it, or use it with `async with`."""

    def __init__(self, *args: Any):
        self._args = args
        self._runner: Optional[Runner] = None

    def __await__(self):
        return _create(*self._args).__await__()

    async def __aenter__(self) -> Runner:
        self._runner = await _create(*self._args)
        return self._runner

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._runner.close()


def create_runner(model: Any, *, device: Optional[str] = None, worker_num: Optional[int] = None,
                  batch_size: Optional[int] = None,
                  compiler_config: Optional[Dict[str, Any]] = None) -> _RunnerCreation:
    return _RunnerCreation(model, device, worker_num, batch_size, compiler_config)


__all__ = ["FuriosaRuntimeError", "Model", "Runner", "TensorDesc", "DataType", "create_runner"]
