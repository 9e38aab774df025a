"""The vocabulary of sources: what a URI resolved to, and why it did not. Error messages are
redacted when the error is made, so whoever logs or returns them cannot leak credentials."""
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .redact import redact_text


@dataclass(frozen=True)
class ModelSource:
    """The local model file a URI resolved to, the sha256 of what the URI pointed at (the file,
    or the archive it came in), and how it was obtained."""

    path: Path
    sha256: str
    how: Literal["local", "downloaded", "revalidated", "cached"]


class SourceError(Exception):
    """The URI does not lead to a usable model file; the message says what happened."""

    def __init__(self, message: str):
        super().__init__(redact_text(message))


class TransientError(SourceError):
    """A failure that may pass: connection lost, timeout, HTTP 5xx. Worth a retry."""


class DigestMismatch(SourceError):
    def __init__(self, what: str, expected: str, actual: str, note: str = ""):
        super().__init__(
            f"sha256 mismatch for {what}: parameters.extra.sha256 is {expected}, "
            f"the file's digest is {actual}{note}"
        )
