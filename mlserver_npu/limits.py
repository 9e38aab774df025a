"""The REST boundary's limits (a layer of rest.LAYERS): a request body over
`MLSERVER_NPU_MAX_REQUEST_BYTES` is refused with a 413 before it is read in full (by its
Content-Length, or counted as a chunked body streams in), and an inference request for a
model that holds its `max_queue_size` already is refused with a 429 before its body is read
at all (admission.py). Both answers are small JSON `{"error": ...}` bodies, as MLServer's."""
import json
from typing import Any, Awaitable, Callable, Dict, Optional

from .admission import ADMISSIONS, held_by_boundary, overloaded_message
from .rest_tensors import INFER_PATH, max_request_bytes, reply, route_path

Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

class BodyTooLarge(Exception):
    pass


class Limits:
    """ASGI middleware: request body size and per-model load, checked before MLServer reads."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app
        self.max_bytes = max_request_bytes()

    async def __call__(self, scope: Dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            await _reply(send, 413, self._too_large(f"a body of {length} bytes"))
            return
        match = INFER_PATH.fullmatch(route_path(scope)) if scope["method"] == "POST" else None
        admission = ADMISSIONS.get(match["name"]) if match else None
        if admission is None:
            await self._bounded(scope, receive, send)
            return
        if not admission.enter():
            # The body read and dropped (cheap: it is not parsed) keeps the connection usable.
            drained = await self._drain(receive)
            message = overloaded_message(admission.model_name, admission.limit)
            await _reply(send, 429, message, close=not drained)
            return
        with held_by_boundary(admission):
            await self._bounded(scope, receive, send)

    async def _drain(self, receive: Receive) -> bool:
        """Read the request body to its end (False: it ended otherwise, or was too large)."""
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                return False
            if not message.get("more_body", False):
                return True

    def _too_large(self, what: str) -> str:
        return (
            f"request too large: {what}, over the limit of {self.max_bytes} bytes "
            "(MLSERVER_NPU_MAX_REQUEST_BYTES); send large tensors over gRPC, in several "
            "requests, or raise the limit"
        )

    async def _bounded(self, scope: Dict[str, Any], receive: Receive, send: Send) -> None:
        """The app, with a body that stops (and a 413 sent) at the limit as it streams in."""
        received = 0
        refused = False

        async def counted() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not refused:
                    refused = True
                    await _reply(send, 413, self._too_large("a streamed body"))
                    raise BodyTooLarge()
            return message

        async def guarded(message: Message) -> None:
            if not refused:  # the app's own answer, unless the 413 went out instead
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except BodyTooLarge:
            pass
        except Exception:
            if not refused:
                raise


def _content_length(scope: Dict[str, Any]) -> Optional[int]:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reply(send: Send, status: int, message: str, close: bool = True) -> None:
    """A complete JSON error reply; with `close`, the connection closes after it (the rest of
    the request body is not read)."""
    headers = [(b"connection", b"close")] if close else []
    await reply(send, status, json.dumps({"error": message}).encode(), headers)
