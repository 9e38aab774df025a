"""ONNX Runtime: `device` strings map to execution providers, `options` to SessionOptions."""
import asyncio
import logging
import math
import re
import time
from pathlib import Path
from typing import Annotated, Any, Dict, Iterable, List, Literal, Mapping, Optional, Tuple, Union

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, model_validator

from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

from . import qnn
from .base import BackendError, InvalidInput, TensorSpec, context_batch, is_input_failure
from .compiled import cache_folder, files_sha256
from .external import check_external_data

logger = logging.getLogger("mlserver.npu")

CPU = "CPUExecutionProvider"

# device name -> (execution provider, provider option that receives the ":arg" part)
DEVICES: Dict[str, Tuple[str, Optional[str]]] = {
    "cpu": (CPU, None),
    "cuda": ("CUDAExecutionProvider", "device_id"),
    "tensorrt": ("TensorrtExecutionProvider", "device_id"),
    "openvino": ("OpenVINOExecutionProvider", "device_type"),
    "qnn": (qnn.PROVIDER, "backend_type"),  # qnn[:htp], through the onnxruntime-qnn plugin
    "vitisai": ("VitisAIExecutionProvider", None),
    "coreml": ("CoreMLExecutionProvider", None),
    "dml": ("DmlExecutionProvider", "device_id"),
    "rocm": ("ROCMExecutionProvider", "device_id"),
    "migraphx": ("MIGraphXExecutionProvider", "device_id"),
    "cann": ("CANNExecutionProvider", "device_id"),
    "dnnl": ("DnnlExecutionProvider", None),
    "xnnpack": ("XnnpackExecutionProvider", None),
    "nnapi": ("NnapiExecutionProvider", None),
}

# Providers that write their compiled engines into a folder: the provider options that point
# them at one in the compiled-model cache ("{}" is the folder). A user's own options win.
EP_CACHE_OPTIONS: Dict[str, Dict[str, str]] = {
    "TensorrtExecutionProvider": {
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": "{}",
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": "{}",
    },
    "OpenVINOExecutionProvider": {"cache_dir": "{}"},
}

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}

_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class Options(BaseModel):
    """`parameters.extra.options` for the onnxruntime backend."""

    model_config = ConfigDict(extra="forbid")

    intra_op_threads: Optional[int] = Field(None, ge=0, description="0 = ORT's default")
    inter_op_threads: Optional[int] = Field(None, ge=0)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    # Idle ORT threads spin by default and steal the event loop's CPU on small machines.
    allow_spinning: bool = False
    provider_options: Dict[str, Any] = Field(default_factory=dict)
    fallback_to_cpu: bool = False
    session_config: Dict[str, str] = Field(
        default_factory=dict, description="raw SessionOptions.add_session_config_entry pairs"
    )
    free_dimensions: Dict[str, int] = Field(
        default_factory=dict, description="fix symbolic dimensions by name, e.g. {'N': 1}"
    )
    shape: Dict[str, List[Annotated[int, Field(ge=-1)]]] = Field(
        default_factory=dict,
        description="fix input dims by input and axis, e.g. {'x': [1, 3, 640, 640]}; -1 "
        "keeps a dim dynamic (for dims without a name; needs the onnx package)",
    )
    batch_size: Optional[int] = Field(
        None, ge=1, description="qnn: the static batch of a dynamic axis 0"
    )
    cache: bool = Field(
        True, description="qnn, tensorrt, openvino: keep compiled models in the cache"
    )

    _static_batch: int = PrivateAttr(1)

    @model_validator(mode="after")
    def _model_defaults(self, info: ValidationInfo) -> "Options":
        self._static_batch = self.batch_size or context_batch(info.context)
        return self


def available_devices() -> List[str]:
    qnn.available()  # registers the onnxruntime-qnn plugin when it is installed
    available = set(ort.get_available_providers())
    return [name for name, (provider, _) in DEVICES.items() if provider in available]


def parse_device(device: Optional[str]) -> Tuple[str, Dict[str, Any]]:
    """`cuda:1` -> ("CUDAExecutionProvider", {"device_id": 1})."""
    name, _, arg = (device or "cpu").strip().partition(":")
    name = name.lower()
    if name not in DEVICES:
        raise BackendError(
            f"unknown onnxruntime device '{device}'; known devices: {', '.join(DEVICES)}"
        )
    provider, arg_option = DEVICES[name]
    if not arg:
        return provider, {}
    if arg_option is None:
        raise BackendError(f"device '{name}' takes no ':{arg}' suffix")
    if arg_option == "device_id":
        if not arg.isdigit():
            raise BackendError(f"device '{device}': expected '{name}:N' with N a device index")
        return provider, {arg_option: int(arg)}
    return provider, {arg_option: arg}


def _session_options(options: Options) -> ort.SessionOptions:
    so = ort.SessionOptions()
    if options.intra_op_threads is not None:
        so.intra_op_num_threads = options.intra_op_threads
    if options.inter_op_threads is not None:
        so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = _OPTIMIZATION[options.graph_optimization_level]
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL
        if options.execution_mode == "parallel"
        else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    spinning = "1" if options.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    so.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    for key, value in options.session_config.items():
        so.add_session_config_entry(key, value)
    for name, size in options.free_dimensions.items():
        so.add_free_dimension_override_by_name(name, size)
    return so


def _specs(args: List[Any]) -> List[TensorSpec]:
    return [
        TensorSpec(
            name=arg.name,
            dtype=np.dtype(_DTYPES.get(arg.type, np.object_)),
            shape=[dim if isinstance(dim, int) and dim >= 0 else None for dim in arg.shape],
            dim_names=[dim if isinstance(dim, str) else "" for dim in arg.shape],
        )
        for arg in args
    ]


def _symbolic_dims(model: Union[str, bytes]) -> Dict[str, List[str]]:
    """The symbolic dims of the model's inputs, name -> where ("x[2]"), from a session that
    only parses the model."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, so, providers=[CPU])
    found: Dict[str, List[str]] = {}
    for arg in session.get_inputs():
        for axis, dim in enumerate(arg.shape):
            if isinstance(dim, str) and dim:
                found.setdefault(dim, []).append(f"{arg.name}[{axis}]")
    return found


def check_free_dimensions(model: Union[str, bytes], names: Iterable[str]) -> None:
    """Refuse `options.free_dimensions` names that no input of the model has (onnxruntime
    would ignore them), listing those it has."""
    wanted = [name for name in names]
    if not wanted:
        return
    known = _symbolic_dims(model)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        listed = ", ".join(f"'{name}' ({', '.join(where)})" for name, where in known.items())
        raise BackendError(
            f"options.free_dimensions names {', '.join(map(repr, unknown))}, which no input "
            f"of the model has; its symbolic dims: {listed or 'none'}"
            + ("" if listed else " (fix unnamed dims by input and axis with options.shape)")
        )


def reshaped(model_path: Path, shapes: Mapping[str, List[int]]) -> bytes:
    """The model with its inputs' dims fixed as `options.shape` says (-1 keeps a dim
    dynamic): the way to fix a dynamic dim that has no name. Needs the `onnx` package."""
    try:
        import onnx
    except ImportError as error:
        raise BackendError(
            f"options.shape needs the onnx package ({error}); pip install 'mlserver-npu[reshape]'"
        ) from error
    try:
        model = onnx.load(str(model_path))
    except Exception as error:
        raise BackendError(f"onnx cannot read '{model_path.name}': {error}") from error
    inputs = {item.name: item for item in model.graph.input}
    for name, shape in shapes.items():
        if name not in inputs:
            raise BackendError(
                f"options.shape names input '{name}', which the model does not have; its "
                f"inputs: {', '.join(inputs)}"
            )
        dims = inputs[name].type.tensor_type.shape.dim
        if len(shape) != len(dims):
            raise BackendError(
                f"options.shape of input '{name}' has {len(shape)} dims, the input has "
                f"{len(dims)}"
            )
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            if size == -1:
                continue
            if dim.HasField("dim_value") and dim.dim_value != size:
                raise BackendError(
                    f"options.shape of input '{name}': axis {axis} is fixed to "
                    f"{dim.dim_value} in the model, not {size}"
                )
            dim.dim_value = size
    return model.SerializeToString()


# A run expected to be shorter than this runs on the event loop: handing it to a thread and
# back costs more (~20 us of CPU, and under load the GIL handoff delays the reply).
INLINE_RUN_SECONDS = 50e-6


def _elements(feeds: Mapping[str, np.ndarray]) -> int:
    return max(sum(array.size for array in feeds.values()), 1)


_STATUS = re.compile(
    r"^(?:\[ONNXRuntimeError\] : \d+ : \w+ : )?"
    r"(?:Non-zero status code returned while running (?P<op>\S+) node\. "
    r"Name:'(?P<node>[^']*)' Status Message: )?(?P<message>.*)$",
    re.S,
)
# onnxruntime's source location and failed check before its message:
# "/onnxruntime_src/.../element_wise_ops.h:563 void onnxruntime::...(...) axis == 1 was false. "
_SOURCE = re.compile(r"^\S+:\d+ .*? was false\.\s*", re.S)


def run_failure(error: Exception) -> str:
    """onnxruntime's report of a failed run, without its prefixes and source locations:
    "Add node 'up': Attempting to broadcast an axis by a dimension other than 1. 32 by 40"."""
    match = _STATUS.match(str(error).strip())
    if match is None:  # the pattern matches any text; kept for the type checker
        return str(error)
    message = _SOURCE.sub("", match["message"]).strip()
    if match["op"]:
        return f"{match['op']} node '{match['node']}': {message}"
    return message


def rejects_input(error: Exception) -> bool:
    """Whether a failed run was the request's doing: onnxruntime's INVALID_ARGUMENT, or a
    kernel that could not take the request's sizes."""
    if isinstance(error, InvalidArgument):
        return True
    return isinstance(error, Fail) and is_input_failure(run_failure(error))


class OnnxRuntimeSession:
    def __init__(self, session: ort.InferenceSession, device: str, warnings: List[str],
                 details: Optional[Dict[str, Any]] = None):
        self._session = session
        self.device = device
        self.warnings = warnings
        self.details = details or {}
        self.inputs = _specs(session.get_inputs())
        self.outputs = _specs(session.get_outputs())
        self.metadata: Dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
        self._output_names = [spec.name for spec in self.outputs]
        # What a run costs per input element: the fastest run seen, as contention (other
        # requests, other processes) only ever makes a run look slower than it is. Deciding
        # from the latest run sent every tiny run to a thread once the server was busy.
        self._seconds_per_element = math.inf  # unknown until the first run (the warm-up)
        # A failed run raises with the reason, which the runtime reports: without this,
        # onnxruntime also prints it to stderr at ERROR, once per rejected request.
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4

    def _run(self, feeds: Dict[str, np.ndarray], elements: int) -> List[np.ndarray]:
        start = time.perf_counter()
        results = self._session.run(self._output_names, feeds, self._run_options)
        cost = (time.perf_counter() - start) / elements
        if cost < self._seconds_per_element:
            self._seconds_per_element = cost
        return results

    async def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        elements = _elements(feeds)
        try:
            if self._seconds_per_element * elements < INLINE_RUN_SECONDS:
                results = self._run(dict(feeds), elements)
            else:
                # ORT releases the GIL while it computes: a thread keeps the event loop free.
                results = await asyncio.to_thread(self._run, dict(feeds), elements)
        except (InvalidArgument, Fail) as error:
            if rejects_input(error):
                raise InvalidInput(run_failure(error)) from error
            raise
        return dict(zip(self._output_names, results))

    async def close(self) -> None:
        self._session = None


def _fall_back(message: str, options: Options, warnings: List[str]) -> None:
    """Refuse the device, or (with `options.fallback_to_cpu`) note that CPU runs instead."""
    if not options.fallback_to_cpu:
        raise BackendError(message)
    warnings.append(f"{message}; running on cpu instead (options.fallback_to_cpu)")
    logger.warning("%s", warnings[-1])


def _open(model_path: Path, device: Optional[str], options: Options) -> OnnxRuntimeSession:
    provider, device_options = parse_device(device)
    label = device or "cpu"
    warnings: List[str] = []
    # The real file: its external data sits beside it, wherever a symlink to it is.
    real_path = check_external_data(model_path)
    source: Union[str, bytes] = str(real_path)
    try:
        if options.shape:
            source = reshaped(real_path, options.shape)
        check_free_dimensions(source, options.free_dimensions)
    except BackendError:
        raise
    except Exception as error:  # ORT's own exception types for a file it cannot parse
        raise BackendError(f"onnxruntime cannot open '{model_path.name}': {error}") from error
    if provider == qnn.PROVIDER:
        try:
            return _open_qnn(model_path, source, label, device_options, options)
        except qnn.QNNUnavailable as error:
            _fall_back(str(error), options, warnings)
            provider, device_options, label = CPU, {}, "cpu"
    available = ort.get_available_providers()
    if provider not in available:
        _fall_back(
            f"device '{label}' needs {provider}, which this onnxruntime build does not have; "
            f"available providers: {', '.join(available)} "
            f"(devices: {', '.join(available_devices())})",
            options,
            warnings,
        )
        provider, device_options, label = CPU, {}, "cpu"

    # provider_options are meant for the requested provider, not for the CPU fallback
    provider_options = {} if warnings else options.provider_options
    if options.cache and provider in EP_CACHE_OPTIONS:
        provider_options = {
            **ep_cache_options(provider, model_path, {**device_options, **provider_options},
                               options.shape),
            **provider_options,
        }
    providers: List[Any] = [(provider, {**device_options, **provider_options})]
    if provider != CPU:
        providers.append(CPU)
    try:
        session = ort.InferenceSession(
            source, sess_options=_session_options(options), providers=providers
        )
    except Exception as error:  # ORT raises its own exception types for bad files
        raise BackendError(f"onnxruntime cannot open '{model_path.name}': {error}") from error
    if provider not in session.get_providers():
        # The provider is built in but its device or driver is missing: ORT went on with CPU.
        _fall_back(
            f"device '{label}': {provider} could not be initialised (see the log above)",
            options,
            warnings,
        )
        label = "cpu"
    return OnnxRuntimeSession(session, label, warnings)


def ep_cache_options(
    provider: str, model_path: Path, provider_options: Mapping[str, Any],
    shapes: Optional[Mapping[str, List[int]]] = None,
) -> Dict[str, str]:
    """`EP_CACHE_OPTIONS[provider]` with a cache folder keyed by the model's digest, the
    provider's options and `options.shape`, so a changed model never meets a stale engine
    ({} without a cache)."""
    facts: Dict[str, Any] = {"sha256": files_sha256([model_path]),
                             "provider_options": dict(provider_options),
                             "onnxruntime": ort.__version__}
    if shapes:
        facts["shapes"] = dict(shapes)
    folder = cache_folder(provider.replace("ExecutionProvider", "").lower(), provider, facts)
    if folder is None:
        return {}
    return {key: value.format(folder) for key, value in EP_CACHE_OPTIONS[provider].items()}


def _open_qnn(
    model_path: Path, source: Union[str, bytes], label: str, device_options: Dict[str, Any],
    options: Options,
) -> OnnxRuntimeSession:
    ep_options = {k: str(v) for k, v in {**device_options, **options.provider_options}.items()}
    settings = options.model_dump(exclude={"fallback_to_cpu", "cache", "provider_options"})
    try:
        session, details = qnn.open_session(
            model_path, lambda: _session_options(options), ep_options, options._static_batch,
            options.free_dimensions, options.cache, settings,
            source if isinstance(source, bytes) else None,
        )
    except BackendError:
        raise
    except Exception as error:  # ORT's own exception types
        raise BackendError(
            f"onnxruntime cannot open '{model_path.name}' on {label}: {error}"
        ) from error
    return OnnxRuntimeSession(session, label, [], details)


class OnnxRuntimeBackend:
    name = "onnxruntime"
    Options = Options

    def available_devices(self) -> List[str]:
        return available_devices()

    async def open(
        self, model_path: Path, device: Optional[str], options: Options
    ) -> OnnxRuntimeSession:
        return await asyncio.to_thread(_open, model_path, device, options)
