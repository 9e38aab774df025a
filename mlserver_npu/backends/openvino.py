"""OpenVINO Runtime: Intel CPUs, GPUs and NPUs (Core Ultra), and its AUTO / HETERO / MULTI
meta-devices, for OpenVINO IR (`.xml` + `.bin`), `.onnx` and `.tflite` files.

The sessions of one device share one compiled model: each session is one infer request on it,
so `sessions` is the number of runs in flight on the device. Runs are asynchronous
(`start_async`, its callback resolves an asyncio future from OpenVINO's thread): no Python
thread waits on a run. Compiled models are kept in the compiled-model cache (compiled.py).
"""
import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .base import BackendError, InvalidInput, TensorSpec, context_batch, is_input_failure
from .compiled import cache_entry, files_sha256
from .external import check_external_data

try:
    import openvino as ov
except Exception as error:
    raise ImportError(
        f"OpenVINO cannot be imported ({type(error).__name__}: {error}); it needs the openvino "
        "extra (pip install 'mlserver-npu[openvino]')"
    ) from error

logger = logging.getLogger("mlserver.npu")

# Devices that take a list of devices after the colon, commas included.
META_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")
# What a missing device needs, for the load error.
NEEDS = {
    "NPU": "an Intel NPU (Core Ultra) with Intel's NPU driver (intel-npu-driver / Windows NPU "
    "driver)",
    "GPU": "an Intel GPU with its OpenCL runtime (intel-opencl-icd, libOpenCL.so.1)",
}
# A failed run calls no callback (OpenVINO keeps its error for wait()): look this often.
FAILURE_POLL_SECONDS = 0.5


class Options(BaseModel):
    """`parameters.extra.options` for the openvino backend."""

    model_config = ConfigDict(extra="forbid")

    performance_hint: Optional[Literal["LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"]] = (
        Field(None, description="default: THROUGHPUT when sessions > 1, else OpenVINO's")
    )
    streams: Optional[Union[int, str]] = Field(None, description="NUM_STREAMS: N or 'AUTO'")
    threads: Optional[int] = Field(None, ge=1, description="INFERENCE_NUM_THREADS")
    precision_hint: Optional[Literal["f32", "f16", "bf16"]] = Field(
        None, description="INFERENCE_PRECISION_HINT"
    )
    shape: Optional[Union[List[int], Dict[str, List[int]]]] = Field(
        None, description="reshape before compiling: one shape, or one per input name; -1 = dynamic"
    )
    batch_size: Optional[int] = Field(
        None, ge=1, description="fix a dynamic axis 0 to this static batch (on any device)"
    )
    properties: Dict[str, Any] = Field(
        default_factory=dict, description="raw OpenVINO properties for compile_model"
    )
    fallback_to_cpu: bool = False
    cache: bool = Field(True, description="keep compiled models in MLSERVER_NPU_CACHE_DIR")

    # The static batch for devices that need one (NPU), when `batch_size` is not given.
    _static_batch: int = PrivateAttr(1)

    @field_validator("streams")
    @classmethod
    def _streams(cls, value: Optional[Union[int, str]]) -> Optional[Union[int, str]]:
        if value is None or value == "AUTO" or (isinstance(value, int) and value >= 1):
            return value
        raise ValueError(f"must be a number of streams (1, 2, ...) or 'AUTO', got {value!r:.40}")

    @model_validator(mode="after")
    def _model_defaults(self, info: ValidationInfo) -> "Options":
        """Defaults from the model's settings (`sessions`, `max_batch_size`) in the context."""
        context = info.context or {}
        if self.performance_hint is None and self.streams is None and (
            context.get("sessions") or 1
        ) > 1:
            self.performance_hint = "THROUGHPUT"
        self._static_batch = self.batch_size or context_batch(context)
        return self

    def config(self) -> Dict[str, Any]:
        """The compile_model properties."""
        named = {
            "PERFORMANCE_HINT": self.performance_hint,
            "NUM_STREAMS": self.streams,
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": self.precision_hint,
        }
        return {**{k: v for k, v in named.items() if v is not None}, **self.properties}


def normalise_device(device: Optional[str]) -> str:
    """`cpu` -> `CPU`, `auto:npu,cpu` -> `AUTO:NPU,CPU`: OpenVINO's names are upper case."""
    return (device or "CPU").strip().upper()


def _plain_devices(device: str) -> List[str]:
    """The physical devices a device string names: `AUTO:NPU,CPU` -> [NPU, CPU]."""
    name, _, rest = device.partition(":")
    if name in META_DEVICES:
        return [d.strip() for d in rest.split(",") if d.strip() and d.strip() not in META_DEVICES]
    return [device]


def _message(error: BaseException) -> str:
    """OpenVINO's message without its 'Exception from src/...' chain and source locations."""
    lines = [line.strip() for line in str(error).splitlines()]
    kept = [line for line in lines if line and not line.startswith("Exception from ")]
    text = re.sub(r"(?:Caught exception: )?Exception from \S+:\d+:\s*", "", " ".join(kept))
    return re.sub(r" failed at \S+:\d+:", " failed:", text).strip() or str(error)


def _run_failure(error: BaseException) -> BaseException:
    """A failed run as the runtime reports it: InvalidInput when the request's tensors are
    to blame, else the error itself (a server fault). Raised without `from`."""
    message = _message(error)
    return InvalidInput(message) if is_input_failure(message) else error


def _available(core: "ov.Core") -> str:
    names = []
    for device in core.available_devices:
        try:
            names.append(f"{device} ({core.get_property(device, 'FULL_DEVICE_NAME')})")
        except RuntimeError:
            names.append(device)
    return ", ".join(names) or "none"


def _missing_device(core: "ov.Core", device: str) -> Optional[str]:
    """Why `device` cannot be used here, or None when the devices it names are present
    (AUTO and MULTI need one of their list; HETERO and plain devices need all)."""
    available = core.available_devices

    def present(plain: str) -> bool:
        return any(a == plain or a.startswith(f"{plain}.") or f"{a}.0" == plain
                   for a in available)

    named = _plain_devices(device)
    missing = [plain for plain in named if not present(plain)]
    if not missing or (device.partition(":")[0] in ("AUTO", "MULTI") and missing != named):
        return None
    base = missing[0].partition(".")[0]
    need = f"; {base} needs {NEEDS[base]}" if base in NEEDS else ""
    return (
        f"OpenVINO device '{missing[0]}' is not available here{need}; "
        f"available: {_available(core)}"
    )


def _specs(ports: List[Any], kind: str) -> List[TensorSpec]:
    specs = []
    for index, port in enumerate(ports):
        try:
            name = port.get_any_name()
        except RuntimeError:  # a port without tensor names
            name = f"{kind}_{index}"
        shape = port.get_partial_shape()
        specs.append(TensorSpec(
            name=name,
            dtype=np.dtype(port.get_element_type().to_dtype()),
            shape=[None if dim.is_dynamic else dim.get_length() for dim in shape],
        ))
    return specs


def _static_shapes(
    model: "ov.Model", device: str, options: Options
) -> Dict[str, List[int]]:
    """The reshape to apply: `options.shape`, a static batch from `options.batch_size`, and on
    an NPU (static shapes only) every dynamic axis 0 fixed to the static batch."""
    inputs = _specs(model.inputs, "input")
    wanted: Dict[str, List[int]] = {}
    if isinstance(options.shape, list):
        if len(inputs) != 1:
            raise BackendError(
                f"options.shape is one shape but the model has {len(inputs)} inputs "
                f"({', '.join(s.name for s in inputs)}): give one shape per input name"
            )
        wanted[inputs[0].name] = options.shape
    elif options.shape:
        unknown = set(options.shape) - {s.name for s in inputs}
        if unknown:
            raise BackendError(
                f"options.shape names unknown inputs {sorted(unknown)}; the model's inputs: "
                f"{', '.join(s.name for s in inputs)}"
            )
        wanted.update(options.shape)
    needs_static = _needs_static_shapes(device)
    batch = options.batch_size or (options._static_batch if needs_static else None)
    for spec in inputs:
        shape = wanted.get(spec.name, spec.v2_shape)
        if batch is not None and shape and shape[0] == -1:
            shape = [batch, *shape[1:]]
        if needs_static and -1 in shape:
            axis = shape.index(-1)
            raise BackendError(
                f"input '{spec.name}' has dynamic dimension {axis} ({spec.v2_shape}, -1 = "
                f"dynamic) and device '{device}' needs static shapes; set options.shape, e.g. "
                f"{{\"{spec.name}\": {[1 if d == -1 else d for d in shape]}}}"
            )
        if shape != spec.v2_shape:
            wanted[spec.name] = shape
    return wanted


class OpenVINOSession:
    def __init__(self, compiled: "ov.CompiledModel", device: str, details: Dict[str, Any],
                 warnings: List[str]):
        self._request = compiled.create_infer_request()
        self.device = device
        self.details = details
        self.warnings = warnings
        self.inputs = _specs(compiled.inputs, "input")
        self.outputs = _specs(compiled.outputs, "output")
        # One infer request holds one set of tensors: runs on it must not overlap.
        self._lock = asyncio.Lock()

    async def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        async with self._lock:
            loop = asyncio.get_running_loop()
            done = loop.create_future()

            def finished(_: Any) -> None:  # on OpenVINO's thread
                try:
                    loop.call_soon_threadsafe(_resolve, done)
                except RuntimeError:  # the loop closed meanwhile (server shutdown)
                    pass

            request = self._request
            request.set_callback(finished, None)
            try:
                request.start_async(
                    {i: feeds[spec.name] for i, spec in enumerate(self.inputs)}, share_inputs=True
                )
            except (TypeError, ValueError) as error:  # tensors it refuses
                raise InvalidInput(_message(error)) from error
            except RuntimeError as error:
                raise _run_failure(error)
            while not done.done():
                await asyncio.wait({done}, timeout=FAILURE_POLL_SECONDS)
                if not done.done():
                    try:
                        request.wait_for(0)  # raises the error of a run that failed
                    except RuntimeError as error:  # e.g. shapes that disagree inside the graph
                        raise _run_failure(error)
            # The request's output tensors are overwritten by the next run: copy them out.
            return {
                spec.name: request.get_output_tensor(i).data.copy()
                for i, spec in enumerate(self.outputs)
            }

    async def close(self) -> None:
        self._request = None


def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


def _model_files(model_path: Path) -> List[Path]:
    if model_path.suffix.lower() == ".xml":
        return [model_path, model_path.with_suffix(".bin")]
    return [model_path]


@dataclass
class _Compiled:
    """One compiled model, the device it was compiled for, and what the metadata says."""

    compiled: "ov.CompiledModel"
    label: str
    details: Dict[str, Any]
    warnings: List[str]


def _needs_static_shapes(device: str) -> bool:
    return any(plain.startswith("NPU") for plain in _plain_devices(device))


def _needs_reshape(device: str, options: Options) -> bool:
    return bool(options.shape or options.batch_size or _needs_static_shapes(device))


def _read(core: "ov.Core", model_path: Path, device: str, options: Options) -> Tuple[Any, Dict]:
    """What to compile and the reshape applied: the file's path when nothing needs reshaping
    (OpenVINO then skips reading the model on a cache hit), else the reshaped model."""
    if not _needs_reshape(device, options):
        return str(model_path), {}
    try:
        model = core.read_model(str(model_path))
    except Exception as error:  # RuntimeError for a file it cannot parse
        raise BackendError(
            f"OpenVINO cannot read '{model_path.name}': {_message(error)}"
        ) from error
    shapes = _static_shapes(model, device, options)
    if shapes:
        try:
            model.reshape({name: ov.PartialShape(shape) for name, shape in shapes.items()})
        except Exception as error:
            raise BackendError(
                f"OpenVINO cannot reshape '{model_path.name}' to {shapes}: {_message(error)}"
            ) from error
    return model, shapes


def _compile(model_path: Path, device: str, options: Options) -> _Compiled:
    core = ov.Core()
    warnings: List[str] = []
    missing = _missing_device(core, device)
    if missing:
        if not options.fallback_to_cpu:
            raise BackendError(missing)
        warnings.append(f"{missing}; running on CPU instead (options.fallback_to_cpu)")
        logger.warning("%s", warnings[-1])
        device = "CPU"
    files = _model_files(model_path)
    for file in files:
        if not file.is_file():
            raise BackendError(f"OpenVINO model file '{file.name}' does not exist")
    if model_path.suffix.lower() == ".onnx":  # its external data: beside the real file only
        model_path = check_external_data(model_path)
    start = time.perf_counter()
    source, shapes = _read(core, model_path, device, options)
    config = options.config()
    use_cache = options.cache
    if use_cache and device.partition(":")[0] == "AUTO":
        # AUTO's start-up fallback serves from the CPU while it compiles for the device, and
        # writes that device's blob after the load, outside the cache's staged write.
        config.setdefault("ENABLE_STARTUP_FALLBACK", False)
        if config["ENABLE_STARTUP_FALLBACK"] is not False:
            logger.warning("openvino: ENABLE_STARTUP_FALLBACK on AUTO: no compiled-model cache")
            use_cache = False
    facts = {"sha256": files_sha256(files), "device": device, "config": config,
             "shapes": shapes, "openvino": ov.get_version()}
    if isinstance(source, str):  # OpenVINO names the blob of a file after its path alone
        facts["path"] = str(model_path.resolve())
    try:
        if use_cache:
            with cache_entry("openvino", device, facts, model_path) as entry:
                compiled = core.compile_model(
                    source, device, {**config, "CACHE_DIR": str(entry.folder)}
                )
        else:
            compiled = core.compile_model(source, device, config)
    except Exception as error:
        raise BackendError(
            f"OpenVINO cannot load '{model_path.name}' on device '{device}': "
            f"{_message(error)}; available devices: {_available(core)}"
        ) from error
    seconds = time.perf_counter() - start
    details: Dict[str, Any] = {
        "execution_devices": ",".join(_property(compiled, "EXECUTION_DEVICES") or [])
    }
    precision = _property(compiled, "INFERENCE_PRECISION_HINT")
    if precision is not None:  # bf16 by default on CPUs with AVX-512 BF16 or AMX
        details["inference_precision"] = precision.to_string()
    if use_cache:
        details["loaded_from_cache"] = bool(_property(compiled, "LOADED_FROM_CACHE"))
    logger.info(
        "openvino: '%s' on %s (executes on %s) ready in %.3f s%s",
        model_path.name, device, details["execution_devices"], seconds,
        f", loaded from cache: {details['loaded_from_cache']}" if use_cache else "",
    )
    return _Compiled(compiled, device, details, warnings)


def _property(compiled: "ov.CompiledModel", name: str) -> Any:
    try:
        value = compiled.get_property(name)
    except RuntimeError:  # not every device (AUTO, HETERO) reports every property
        return None
    if isinstance(value, list):  # AUTO says "(CPU)"
        return [str(v).strip("()") for v in value]
    return value


class OpenVINOBackend:
    name = "openvino"
    Options = Options

    def __init__(self) -> None:
        # device -> its compile, shared by the sessions of that device
        self._compiling: Dict[Tuple[str, Path], "asyncio.Future[_Compiled]"] = {}

    def available_devices(self) -> List[str]:
        return list(ov.Core().available_devices)

    def device_names(self) -> Dict[str, str]:
        """Device -> its full name (`CPU` -> `Intel(R) Core(TM) Ultra 7 155H`)."""
        core = ov.Core()
        return {d: core.get_property(d, "FULL_DEVICE_NAME") for d in core.available_devices}

    async def open(
        self, model_path: Path, device: Optional[str], options: Options
    ) -> OpenVINOSession:
        name = normalise_device(device)
        key = (name, model_path)
        if key not in self._compiling:
            self._compiling[key] = asyncio.ensure_future(
                asyncio.to_thread(_compile, model_path, name, options)
            )
        compiled = await asyncio.shield(self._compiling[key])
        try:
            return OpenVINOSession(compiled.compiled, compiled.label, compiled.details,
                                   compiled.warnings)
        except Exception as error:  # e.g. an element type without a numpy equivalent
            raise BackendError(
                f"OpenVINO model '{model_path.name}' is not servable: {error}"
            ) from error
