"""mlserver-npu: serve ONNX and TFLite models on NPUs through MLServer."""
from .pipeline import Pipeline
from .runtime import NPURuntime

__version__ = "0.1.0"

__all__ = ["NPURuntime", "Pipeline", "__version__"]
