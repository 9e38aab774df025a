"""Qualcomm NPUs (Hexagon HTP) through onnxruntime's QNN execution provider, as Qualcomm ships
it now: the plugin package `onnxruntime-qnn`, registered into the installed onnxruntime
(>= 1.24.2) with `register_execution_provider_library` and attached to a session with
`SessionOptions.add_provider_for_devices`. Used by the onnxruntime backend for `qnn[:htp]`.

QNN runs static shapes only: with a dynamic dimension onnxruntime silently runs the whole
graph on its CPU EP. So a dynamic axis 0 is fixed to the static batch, any other dynamic
dimension must be fixed by `options.free_dimensions`, and the compiled graph is kept as a QNN
context binary (an EPContext model) in the compiled-model cache.
"""
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import onnxruntime as ort

from .base import BackendError
from .compiled import cache_entry, files_sha256

logger = logging.getLogger("mlserver.npu")

PROVIDER = "QNNExecutionProvider"
CONTEXT_MODEL = "model_ctx.onnx"


class QNNUnavailable(BackendError):
    """The QNN provider cannot be used in this process (package or onnxruntime missing)."""


def register() -> None:
    """Make QNNExecutionProvider available in this process (once; a no-op for onnxruntime
    builds that have it built in)."""
    if PROVIDER in ort.get_available_providers():
        return
    try:
        import onnxruntime_qnn
    except ImportError as error:
        raise QNNUnavailable(
            f"device 'qnn' needs Qualcomm's onnxruntime-qnn package ({error}); "
            "pip install 'mlserver-npu[qnn]'"
        ) from error
    if not hasattr(ort, "register_execution_provider_library"):
        raise QNNUnavailable(
            f"onnxruntime {ort.__version__} cannot load plugin execution providers; "
            "onnxruntime-qnn needs onnxruntime >= 1.24.2"
        )
    try:
        ort.register_execution_provider_library(PROVIDER, onnxruntime_qnn.get_library_path())
    except Exception as error:  # e.g. registered meanwhile by another load
        if PROVIDER not in ort.get_available_providers():
            raise QNNUnavailable(f"onnxruntime cannot load onnxruntime-qnn: {error}") from error


def available() -> bool:
    try:
        register()
    except QNNUnavailable:
        return False
    return True


def static_dimensions(
    model: Union[Path, bytes], batch: int, fixed: Mapping[str, int]
) -> Dict[str, int]:
    """Symbolic dimensions to fix besides those `fixed` already: every symbol on axis 0, to
    `batch`; any other dynamic dimension fails, naming the input and the dimension."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    inputs = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    result: Dict[str, int] = {}
    for arg in inputs.get_inputs():
        for axis, dim in enumerate(arg.shape):
            if isinstance(dim, int) and dim >= 0 or dim in result or dim in fixed:
                continue
            if axis == 0 and isinstance(dim, str) and dim:
                result[dim] = batch
                continue
            hint = (
                f"set options.free_dimensions, e.g. {{\"{dim}\": 1}}"
                if isinstance(dim, str) and dim
                else f"set options.shape, e.g. {{\"{arg.name}\": "
                     f"{[1 if not isinstance(d, int) or d < 0 else d for d in arg.shape]}}}"
            )
            raise BackendError(
                f"input '{arg.name}' has dynamic dimension {axis} ({arg.shape}) and QNN needs "
                f"static shapes; {hint}"
            )
    return result


def open_session(
    model_path: Path,
    session_options: Callable[[], ort.SessionOptions],
    ep_options: Dict[str, str],
    batch: int,
    free_dimensions: Mapping[str, int],
    use_cache: bool,
    settings: Mapping[str, Any],
    reshaped: Optional[bytes] = None,
) -> Tuple[ort.InferenceSession, Dict[str, Any]]:
    """A session on the QNN devices, from the cached context binary when there is one.
    `settings` (the session options, `shape` included) are part of the cache key;
    `reshaped`: the model with `options.shape` applied, in place of the file."""
    register()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == PROVIDER]
    if not devices:
        raise QNNUnavailable("onnxruntime-qnn is installed but reports no QNN device")
    ep_options = {"backend_type": "htp", **ep_options}

    model: Union[Path, bytes] = reshaped if reshaped is not None else model_path

    def create(source: Union[Path, bytes], dimensions: Mapping[str, int],
               context: List[Tuple[str, str]]):
        so = session_options()
        for name, value in dimensions.items():
            so.add_free_dimension_override_by_name(name, value)
        for key, value in context:
            so.add_session_config_entry(key, value)
        so.add_provider_for_devices(devices, ep_options)
        return ort.InferenceSession(
            source if isinstance(source, bytes) else str(source), sess_options=so
        )

    if not use_cache:
        return create(model, static_dimensions(model, batch, free_dimensions), []), {}
    facts = {
        "sha256": files_sha256([model_path]), "ep_options": ep_options,
        "batch": batch, "free_dimensions": dict(free_dimensions), "settings": dict(settings),
        "onnxruntime": ort.__version__, "devices": [d.ep_vendor for d in devices],
    }
    slug = f"qnn-{ep_options['backend_type']}"
    with cache_entry("qnn", slug, facts, model_path) as entry:
        context = entry.folder / CONTEXT_MODEL
        if entry.cached:
            return create(context, {}, []), {"loaded_from_cache": True}
        session = create(
            model,
            static_dimensions(model, batch, free_dimensions),
            [("ep.context_enable", "1"), ("ep.context_file_path", str(context)),
             ("ep.context_embed_mode", "1")],
        )
        if not context.is_file():  # onnxruntime went on without QNN: say so
            raise QNNUnavailable(
                f"QNN ({ep_options['backend_type']}) took no node of '{model_path.name}'; the "
                "server log says why (e.g. a backend library that is missing)"
            )
    return session, {"loaded_from_cache": False}
