"""How MLServer's gRPC servicers report a failed call: one log line for a client's mistake,
bounded details, and 503 as UNAVAILABLE.

Why this module patches MLServer: every gRPC method of MLServer 1.7 is wrapped in
`mlserver.grpc.utils.handle_mlserver_error` (or `handle_mlserver_stream_error`), which calls
`logger.exception(err)` for any error, a client's 400 included: ~20 lines of traceback at
ERROR per rejected request, so under hostile traffic the log is mostly tracebacks. It then
aborts the call with `details=str(err)` (a runtime's whole report, or a 5 MB model name
echoed back) and maps statuses through `STATUS_CODE_MAPPING`, which has no 503 (a model being
unloaded becomes UNKNOWN). The servicers bind those wrappers when the gRPC server starts,
before any model (and this plugin) is imported, but the wrappers look up the module's
`logger` and `STATUS_CODE_MAPPING` at each call. `install` therefore replaces that `logger`
with `_CallLogger`, which:

- logs a client error (status < 500) as one INFO line naming the method, the model and the
  reason; a server fault keeps its traceback at ERROR (once: a `ServerFault` was logged where
  it was raised);
- bounds the error's message (errors.bounded) before the wrapper puts it into the details;

and adds 503 -> UNAVAILABLE (and 413, 429 -> RESOURCE_EXHAUSTED) to the mapping.

As wire.py, the patch is applied only to the MLServer versions whose code it was checked
against (`SUPPORTED`, and the source fingerprints in `CHECKED`); anything else logs a warning
and keeps MLServer's behaviour. `MLSERVER_NPU_GRPC_ERRORS=0` turns it off.
"""
import logging
import sys
from typing import Any, Callable, Dict, Optional, Tuple

import grpc
import mlserver.grpc.utils as grpc_utils
from mlserver.errors import MLServerError

from .errors import bounded, shorten
from .wire import incompatibility

logger = logging.getLogger("mlserver.npu")

# What the patch relies on, with the sha256 of its source in MLServer 1.7.1.
CHECKED: Dict[str, Tuple[Callable[[], Callable], str]] = {
    "mlserver.grpc.utils.handle_mlserver_error": (
        lambda: grpc_utils.handle_mlserver_error,
        "464632184af54a36bd6a996588744a4839895bbfd3a4fd4f2c1449c647ffad0b",
    ),
    "mlserver.grpc.utils.handle_mlserver_stream_error": (
        lambda: grpc_utils.handle_mlserver_stream_error,
        "72377bd65eaecce9f78e65bad1c53118202be148394e377ff3389b39d379cf40",
    ),
    "mlserver.grpc.utils._grpc_status_code": (
        lambda: grpc_utils._grpc_status_code,
        "369404d2d2f6b915fa83a4f41e2ab90c8e2f5cda086ad69dad883ed2c38d9839",
    ),
}

# Statuses MLServer's mapping lacks (it maps them to UNKNOWN).
STATUS_CODES = {
    503: grpc.StatusCode.UNAVAILABLE,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

_installed: Optional[bool] = None


class _CallLogger:
    """Stands in for `mlserver.grpc.utils.logger`, whose only use there is
    `logger.exception(err)` in the wrappers, just before they abort the call with `str(err)`."""

    def __init__(self, original: logging.Logger):
        self._original = original

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)

    def exception(self, error: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(error, BaseException):
            self._original.exception(error, *args, **kwargs)
            return
        message = str(error)
        if len(message) > len(bounded(message)):
            error.args = (bounded(message),)  # the details the wrapper sends
        method, model = _call(sys._getframe(1))
        where = f"{method} of model {shorten(model)}" if model else method
        status = getattr(error, "status_code", 500)
        if isinstance(error, MLServerError) and status < 500:
            self._original.info("%s refused (%s): %s", where, status, bounded(message, 300))
        elif getattr(error, "logged", False):
            self._original.error("%s failed (%s): %s", where, status, bounded(message, 300))
        else:
            self._original.error("%s failed: %s", where, bounded(message, 300), exc_info=error)


def _call(frame: Any) -> Tuple[str, Optional[str]]:
    """The gRPC method and the model a wrapper's frame is handling (`f`, `request`)."""
    names = frame.f_locals if frame is not None else {}
    method = getattr(names.get("f"), "__name__", "gRPC call")
    request = names.get("request")
    model = getattr(request, "model_name", None) or getattr(request, "name", None)
    return method, model or None


def install(enabled: bool = True) -> bool:
    """Put `_CallLogger` and the extra statuses into MLServer's gRPC error handling, once per
    process; False when off or unsafe."""
    global _installed
    if _installed is None:
        problem = None if enabled else "MLSERVER_NPU_GRPC_ERRORS=0"
        problem = problem or incompatibility(CHECKED)
        if problem:
            logger.warning("The plugin's gRPC error reports are off: %s", problem)
            _installed = False
        else:
            if not isinstance(grpc_utils.logger, _CallLogger):
                grpc_utils.logger = _CallLogger(grpc_utils.logger)
            for status, code in STATUS_CODES.items():
                grpc_utils.STATUS_CODE_MAPPING.setdefault(status, code)
            _installed = True
    return _installed


