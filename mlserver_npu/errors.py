"""The kinds of failure the plugin reports, as MLServer errors with status codes.

MLServer turns an `MLServerError` into an HTTP status with a JSON `error` message (and the
matching gRPC status); any other exception becomes a bare 500.
"""
import reprlib
from typing import Any

from fastapi import status
from mlserver.errors import InferenceError, MLServerError

__all__ = ["ConfigurationError", "InferenceError", "ModelLoadError", "ModelUnloaded", "shorten"]

# Client data in messages: a 20 MB string or a million-element list must not come back whole.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 100
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3


def shorten(value: Any, limit: int = 100) -> str:
    """`value` (a name, a value, a shape: anything a client sent) as messages quote it: its
    repr, cut to at most `limit` characters, `...` marking the cut."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int too long for str() (Python's 4300-digit limit)
        text = f"<{type(value).__name__} too long to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ModelLoadError(MLServerError):
    """A model that cannot be loaded: bad configuration, missing or corrupt file, no device."""

    def __init__(self, model_name: str, reason: str):
        super().__init__(
            f"Model '{model_name}' could not be loaded: {reason}",
            status.HTTP_400_BAD_REQUEST,
        )
        self.reason = reason


class ModelUnloaded(MLServerError):
    """A request that reached a model copy already unloaded (a reload's old copy): 503."""

    def __init__(self, model_name: str):
        super().__init__(
            f"model '{model_name}' was unloaded before this request ran; retry",
            status.HTTP_503_SERVICE_UNAVAILABLE,
        )


class ConfigurationError(ValueError):
    """A processing setting that does not fit the model (e.g. preprocessing that yields 3
    channels for a 1-channel input); the runtime reports it as a `ModelLoadError`."""
