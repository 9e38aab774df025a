"""The REST boundary: one ASGI layer in front of MLServer's FastAPI app, for what the plugin
must do to REST requests before MLServer parses them, or to replies after MLServer renders
them (bounds on bodies, Triton's binary tensor extension, bounded error bodies, load shedding).

Why this module patches MLServer: MLServer 1.7 builds its FastAPI app (`mlserver.rest.app.
create_app`) before any model is imported and offers no hook to wrap it. Every model load,
though, passes the model to `RESTServer.add_custom_handlers` (an on-load callback of the model
registry, called after the model object is created and before its `load`), and that method
holds the app. `install`, called when a plugin model is created (`ServedModel.__init__`), wraps
that method once per process; its first call wraps the app's ASGI stack in `LAYERS`, outermost
first. Each layer is an ASGI middleware class (`Layer(app)`), kept in the module of the concern
it serves. `INNER` layers go the other end, right in front of the router (inside MLServer's
metrics, CORS, gzip and exception middleware), for what answers a route in MLServer's place
(rest_tensors.py's infer endpoint): MLServer's exception handlers then render its errors and
its request metrics count its requests. `data_plane` is the server's DataPlane, for them.

As wire.py, the patch is applied only to the MLServer versions whose code it was checked
against (`SUPPORTED`, and the source fingerprints in `CHECKED`); anything else logs a warning
and keeps MLServer's REST app as it is. `MLSERVER_NPU_REST_BOUNDARY=0` turns it off.
"""
import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

from mlserver.handlers import DataPlane
from mlserver.rest.server import RESTServer
from starlette.applications import Starlette

from .limits import Limits
from .rest_errors import BoundedErrors
from .rest_tensors import CHECKED as TENSORS_CHECKED
from .rest_tensors import Decompress, InferEndpoint
from .wire import incompatibility

logger = logging.getLogger("mlserver.npu")

ASGIApp = Callable[..., Any]

# The ASGI middleware classes the boundary puts in front of MLServer's app, outermost first.
LAYERS: List[Callable[[ASGIApp], ASGIApp]] = [
    Limits,  # limits.py: request body size (413) and per-model load shedding (429)
    BoundedErrors,  # rest_errors.py: MLServer's own error bodies bounded, no bare 500
    Decompress,  # rest_tensors.py: gzip / deflate bodies inflated within max_request_bytes
]
# The ones it puts right in front of the router, outermost first.
INNER: List[Callable[[ASGIApp], ASGIApp]] = [InferEndpoint]

data_plane: Optional[DataPlane] = None

# What `install` wraps, with the sha256 of its source in MLServer 1.7.1.
CHECKED: Dict[str, Tuple[Callable[[], Callable], str]] = {
    "RESTServer.add_custom_handlers": (
        lambda: RESTServer.add_custom_handlers,
        "5151a1884ab7f44b456dc903573c6895f8c013abce440b1a7d494a1a4f66944a",
    ),
    **TENSORS_CHECKED,
}

_installed: Optional[bool] = None


def install(enabled: bool = True) -> bool:
    """Wrap `RESTServer.add_custom_handlers`, once per process; False when off or unsafe."""
    global _installed
    if _installed is None:
        problem = None if enabled else "MLSERVER_NPU_REST_BOUNDARY=0"
        problem = problem or incompatibility(CHECKED)
        if problem:
            logger.warning("The plugin's REST boundary is off: %s", problem)
            _installed = False
        else:
            _wrap()
            _installed = True
    return _installed


def _wrap() -> None:
    original = RESTServer.add_custom_handlers

    async def add_custom_handlers(self: RESTServer, model: Any) -> Any:
        global data_plane
        data_plane = self._data_plane
        wrap_app(self._app)
        return await original(self, model)

    add_custom_handlers.__wrapped__ = original  # type: ignore[attr-defined]
    RESTServer.add_custom_handlers = add_custom_handlers  # type: ignore[method-assign]


def wrap_app(app: Starlette) -> None:
    """Put LAYERS in front of `app`'s middleware stack (built now if it was not yet) and INNER
    in front of its router, once."""
    if getattr(app, "_npu_boundary", False) or not (LAYERS or INNER):
        return
    stack = app.middleware_stack or app.build_middleware_stack()
    _wrap_router(stack, app.router)
    for layer in reversed(LAYERS):
        stack = layer(stack)
    app.middleware_stack = stack
    app._npu_boundary = True  # type: ignore[attr-defined]


def _wrap_router(stack: ASGIApp, router: ASGIApp) -> None:
    """INNER in front of `router`, found down the stack's `.app` links (Starlette's and
    FastAPI's middleware keep the next app there)."""
    layer = stack
    for _ in range(64):
        inner = getattr(layer, "app", None)
        if inner is None:
            break
        if inner is router:
            for cls in reversed(INNER):
                inner = cls(inner)
            layer.app = inner
            return
        layer = inner
    if INNER:
        logger.warning("The plugin's REST infer endpoint is off: the router of MLServer's app "
                       "is not where it was checked to be")
