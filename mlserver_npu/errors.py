"""The kinds of failure the plugin reports, as MLServer errors with status codes.

MLServer turns an `MLServerError` into an HTTP status with a JSON `error` message (and the
matching gRPC status); any other exception becomes a bare 500.
"""
import reprlib
from typing import Any

from fastapi import status
from mlserver.errors import InferenceError, MLServerError

__all__ = [
    "ConfigurationError",
    "InferenceError",
    "ModelLoadError",
    "ModelUnloaded",
    "ServerFault",
    "bounded",
    "shorten",
]

# The longest error message a reply carries (REST body, gRPC details): any longer text keeps
# its head and tail.
MESSAGE_LIMIT = 1000

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


def bounded(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` (a message that may quote client data or a runtime's report) cut in the middle
    to at most about `limit` characters, so that both its start and its end survive:
    `Model 'nnnn...[4999800 characters cut]...nnnn' not found`."""
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 20)
    head, tail = keep * 2 // 3, keep // 3
    return f"{text[:head]}...[{len(text) - head - tail} characters cut]...{text[-tail:]}"


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


class ServerFault(MLServerError):
    """A failure of the server or the device, not of the request: a 500 (gRPC INTERNAL) that
    says what failed, bounded. Whoever raises it has logged its traceback (`logged`)."""

    logged = True

    def __init__(self, what: str, error: BaseException):
        super().__init__(
            bounded(f"{what}: {type(error).__name__}: {error}"),
            status.HTTP_500_INTERNAL_SERVER_ERROR,
        )


class ConfigurationError(ValueError):
    """A processing setting that does not fit the model (e.g. preprocessing that yields 3
    channels for a 1-channel input); the runtime reports it as a `ModelLoadError`."""
