"""The two kinds of failure the plugin reports, as MLServer errors with status codes.

MLServer turns an `MLServerError` into an HTTP status with a JSON `error` message (and the
matching gRPC status); any other exception becomes a bare 500.
"""
from fastapi import status
from mlserver.errors import InferenceError, MLServerError

__all__ = ["ConfigurationError", "InferenceError", "ModelLoadError"]


class ModelLoadError(MLServerError):
    """A model that cannot be loaded: bad configuration, missing or corrupt file, no device."""

    def __init__(self, model_name: str, reason: str):
        super().__init__(
            f"Model '{model_name}' could not be loaded: {reason}",
            status.HTTP_400_BAD_REQUEST,
        )
        self.reason = reason


class ConfigurationError(ValueError):
    """A processing setting that does not fit the model (e.g. preprocessing that yields 3
    channels for a 1-channel input); the runtime reports it as a `ModelLoadError`."""
