"""Error replies of MLServer's REST app, bounded as the plugin's own are (a layer of rest.py).

MLServer's FastAPI app answers a body it cannot validate with a 422 that echoes the offending
value whole (a 100 KB `datatype` string gives a 100 KB reply), its 404 echoes the model name
however long, and an exception that is no MLServerError becomes a bare text
`Internal Server Error`. `BoundedErrors` holds every reply of status 400 or more until the
app is done with the request, then:

- a JSON body has each string cut in the middle (errors.bounded) and each list cut to its
  first items; a value FastAPI echoes (`input`) is shown as errors.shorten shows client data;
- a 500 whose request raised is answered `{"error": "internal error: <what failed>"}`,
  bounded; the exception goes on to the ASGI server, which logs its traceback.

Replies under 400 pass through untouched, unbuffered.
"""
import gzip
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional

import orjson

from .errors import MESSAGE_LIMIT, bounded, shorten

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

STRING_LIMIT = MESSAGE_LIMIT  # characters of one string in an error body
LIST_LIMIT = 10  # items of one list in an error body


def bound(value: Any, key: Optional[str] = None) -> Any:
    """A JSON value with its strings and lists cut; `input` (FastAPI's echo) as shorten."""
    if key == "input" and not isinstance(value, (int, float, bool, type(None))):
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        return text if len(text) <= 100 else shorten(value)
    if isinstance(value, str):
        return bounded(value, STRING_LIMIT)
    if isinstance(value, list):
        kept = [bound(item) for item in value[:LIST_LIMIT]]
        if len(value) > LIST_LIMIT:
            kept.append(f"... {len(value) - LIST_LIMIT} more")
        return kept
    if isinstance(value, dict):
        return {bounded(str(k), STRING_LIMIT): bound(v, str(k)) for k, v in value.items()}
    return value


def _header(headers: List[List[bytes]], name: bytes) -> Optional[bytes]:
    return next((value for key, value in headers if key.lower() == name), None)


def bounded_body(start: Message, body: bytes) -> Optional[bytes]:
    """The reply's body with its strings and lists bounded; None to leave it as it is."""
    headers = start.get("headers", [])
    if b"json" not in (_header(headers, b"content-type") or b""):
        return None
    if _header(headers, b"content-encoding") == b"gzip":
        body = gzip.decompress(body)
    try:
        return orjson.dumps(bound(orjson.loads(body)))
    except orjson.JSONDecodeError:
        return None


def _with_body(start: Message, body: bytes, content_type: Optional[bytes] = None) -> Message:
    skip = {b"content-length", b"content-encoding"} | ({b"content-type"} if content_type else set())
    headers = [[k, v] for k, v in start.get("headers", []) if k.lower() not in skip]
    headers.append([b"content-length", str(len(body)).encode()])
    if content_type:
        headers.append([b"content-type", content_type])
    return {**start, "headers": headers}


class BoundedErrors:
    """ASGI layer: error replies bounded, a failed request's bare 500 made to say what failed."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Dict[str, Any], receive: Callable, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Dict[str, Any] = {}  # the error reply: "start", "body"

        async def hold(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held["start"], held["body"] = message, []
            elif message["type"] == "http.response.body" and "start" in held:
                held["body"].append(message.get("body", b""))
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold)
        except Exception as error:
            if "start" in held and held["start"]["status"] == 500:
                body = orjson.dumps({"error": bounded(
                    f"internal error: {type(error).__name__}: {error}"
                )})
                await self._send(send, _with_body(held["start"], body, b"application/json"), body)
            raise
        if "start" in held:
            body = b"".join(held["body"])
            shorter = bounded_body(held["start"], body)
            if shorter is not None:
                await self._send(send, _with_body(held["start"], shorter), shorter)
            else:
                await self._send(send, held["start"], body)

    @staticmethod
    async def _send(send: Send, start: Message, body: bytes) -> None:
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})
