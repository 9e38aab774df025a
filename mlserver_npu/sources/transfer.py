"""What every remote scheme shares: a body streamed into a file in chunks under a size limit,
hashed on the way, with progress logs, and retried with backoff on transient failures."""
import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Optional, TypeVar

import aiofiles

from ..settings import NPUEnvironment
from .base import SourceError, TransientError
from .redact import redact_uri

logger = logging.getLogger("mlserver.npu")

CHUNK = 1 << 20
MAX_BACKOFF = 30.0
T = TypeVar("T")


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Validators:
    """What identifies the version the server sent (ETag, Last-Modified): sent back later to
    ask whether the cached copy is still current."""

    etag: Optional[str] = None
    last_modified: Optional[str] = None

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)


class Sink:
    """One download attempt into `path`: counts, hashes, enforces the size limit, logs progress.

    Use as `async with Sink(...) as sink`; the file is truncated at each attempt.
    """

    def __init__(self, path: Path, uri: str, settings: NPUEnvironment):
        self.path = path
        self.shown = redact_uri(uri)
        self.limit = int(settings.max_download_size)
        self.interval = settings.progress_interval
        self.size = 0
        self.total: Optional[int] = None
        self._hash = hashlib.sha256()
        # Network reads come in small pieces; the file gets them in CHUNK-sized writes.
        self._buffer = bytearray()

    async def __aenter__(self) -> "Sink":
        self._file = await aiofiles.open(self.path, "wb")
        self._started = self._logged = time.monotonic()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if exc_info[0] is None:
                await self._flush()
        finally:
            await self._file.close()

    async def _flush(self) -> None:
        if self._buffer:
            await self._file.write(bytes(self._buffer))
            self._buffer.clear()

    def expect(self, total: Optional[int]) -> None:
        """The size the server announced, checked against the limit before any byte is read."""
        if total is not None and total > self.limit:
            raise SourceError(
                f"{self.shown} is {human_size(total)}, more than MLSERVER_NPU_MAX_DOWNLOAD_SIZE "
                f"({human_size(self.limit)})"
            )
        self.total = total
        logger.info(
            "Downloading %s (%s)", self.shown, human_size(total) if total is not None else "size unknown"
        )

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise SourceError(
                f"{self.shown} is larger than MLSERVER_NPU_MAX_DOWNLOAD_SIZE "
                f"({human_size(self.limit)}); download stopped"
            )
        self._hash.update(chunk)
        self._buffer += chunk
        if len(self._buffer) >= CHUNK:
            await self._flush()
        now = time.monotonic()
        if now - self._logged >= self.interval:
            self._logged = now
            done = human_size(self.size)
            if self.total:
                done += f" of {human_size(self.total)} ({100 * self.size // self.total}%)"
            logger.info("Downloading %s: %s, %s/s", self.shown, done, self._rate(now))

    def finish(self) -> str:
        """Check the body is whole; log the result; return its sha256."""
        if self.total is not None and self.size != self.total:
            raise TransientError(f"connection closed after {self.size} of {self.total} bytes")
        digest = self._hash.hexdigest()
        elapsed = time.monotonic() - self._started
        logger.info(
            "Downloaded %s: %s in %.1f s (%s/s), sha256 %s",
            self.shown, human_size(self.size), elapsed, self._rate(time.monotonic()), digest,
        )
        return digest

    def _rate(self, now: float) -> str:
        return human_size(self.size / max(now - self._started, 1e-6))


async def with_retries(attempt: Callable[[], Awaitable[T]], uri: str, settings: NPUEnvironment) -> T:
    """Run `attempt` until it succeeds, retrying a TransientError with exponential backoff."""
    attempts = settings.download_retries + 1
    for number in range(1, attempts + 1):
        try:
            return await attempt()
        except TransientError as error:
            if number == attempts:
                raise TransientError(
                    f"{error} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})"
                ) from None
            delay = min(settings.download_backoff * 2 ** (number - 1), MAX_BACKOFF)
            logger.warning(
                "Fetching %s failed: %s; retry %d of %d in %.1f s",
                redact_uri(uri), error, number, attempts - 1, delay,
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
