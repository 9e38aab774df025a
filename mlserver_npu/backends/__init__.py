"""Backends by name. Each module is imported only when a model asks for it, so a missing
optional runtime (LiteRT, FuriosaAI, OpenVINO) fails only the models that need it."""
import importlib

from .base import (
    Backend, BackendError, InvalidInput, Session, TensorSpec, model_metadata, session_details,
)

# backend name -> (module, class)
BACKENDS = {
    "onnxruntime": ("mlserver_npu.backends.onnxruntime", "OnnxRuntimeBackend"),
    "tflite": ("mlserver_npu.backends.tflite", "TFLiteBackend"),
    "furiosa": ("mlserver_npu.backends.furiosa", "FuriosaBackend"),
    "openvino": ("mlserver_npu.backends.openvino", "OpenVINOBackend"),
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend '{name}'; known: {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # vendor SDKs raise more than ImportError without a driver
        raise BackendError(f"backend '{name}' is not usable here: {error}") from error
    return getattr(module, class_name)()


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "InvalidInput",
    "Session",
    "TensorSpec",
    "get_backend",
    "model_metadata",
    "session_details",
]
