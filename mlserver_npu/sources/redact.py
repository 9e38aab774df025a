"""Credentials never reach a log line or an error message: URL user info, query strings
(tokens, presigned signatures) and the AWS keys in the environment are masked."""
import os
import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def redact_uri(uri: str) -> str:
    """`https://user:pw@host/m.onnx?sig=x` -> `https://***@host/m.onnx?sig=***`.

    Every query value is masked, not only well-known names: a signature or token can hide
    under any parameter name.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparsable URI>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{piece.partition('=')[0]}={MASK}" if "=" in piece else MASK
        for piece in parts.query.split("&")
        if piece
    )
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str) -> str:
    """Mask every URL in `text` as `redact_uri` does, and any AWS secret from the environment."""
    text = _URL.sub(lambda match: redact_uri(match.group(0)), text)
    for variable in _SECRET_VARIABLES:
        secret = os.environ.get(variable, "")
        if len(secret) >= 4:
            text = text.replace(secret, MASK)
    return text
