"""A remote URI -> a verified model file in the cache, downloaded at most once at a time.

With a pinned sha256, a cached entry of that digest is used without asking the server; without
one, a cached entry is revalidated (conditional GET) when the server gave an ETag or a
Last-Modified, and used as it is otherwise. No failure removes an entry: another model may be
using it.
"""
import asyncio
import logging
import re
import shutil
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Optional, Tuple
from urllib.parse import unquote, urlsplit

from ..settings import NPUEnvironment
from .archive import archive_kind, unpack
from .base import DigestMismatch, ModelSource, SourceError, TransientError
from .cache import Cache, Entry
from .local import find_model_file
from .redact import redact_uri
from .transfer import Sink, Validators, with_retries

logger = logging.getLogger("mlserver.npu")

SCHEMES = ("http", "https", "s3")

Download = Callable[[str, Optional[Validators], Sink, NPUEnvironment], Awaitable[Optional[Validators]]]


def _downloader(scheme: str) -> Download:
    # Imported on first use: boto3 takes a while to import and only S3 users need it.
    if scheme == "s3":
        from . import s3

        return s3.download
    from . import http

    return http.download


def _file_name(uri: str) -> str:
    """The URI's last path segment, safe as a file name (`model` if it has none)."""
    name = unquote(urlsplit(uri).path.rstrip("/").rpartition("/")[2])
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or "model"


@asynccontextmanager
async def fetch(uri: str, pin: Optional[str], settings: NPUEnvironment) -> AsyncIterator[ModelSource]:
    """`async with fetch(...) as source`, holding the URI's lock: a new download is in the
    cache during the block and is undone, restoring what it replaced, if the block raises.
    A failure to fetch changes nothing in the cache."""
    try:
        path = urlsplit(uri).path
    except ValueError as error:
        raise SourceError(f"invalid URI: {error}") from None
    shown = redact_uri(uri)
    if path.endswith("/"):
        raise SourceError(
            f"{shown} names a folder, which cannot be listed remotely: point the uri at the "
            "model file, or at a .tar.gz or .zip archive of the folder"
        )
    cache = Cache(settings.cache_dir)
    async with cache.lock(uri):
        source, previous = await _obtain(cache, uri, pin, settings)
        try:
            yield source
        except BaseException:
            if source.how == "downloaded":
                cache.restore(uri, previous)
                logger.info("The load failed: the download of %s leaves the cache", shown)
            raise
        cache.forget(previous)


async def _obtain(
    cache: Cache, uri: str, pin: Optional[str], settings: NPUEnvironment
) -> Tuple[ModelSource, Optional[Path]]:
    """The cached copy if it will do, else a download committed to the cache (and the entry it
    replaced, set aside). Call with the URI locked."""
    shown = redact_uri(uri)
    cached = cache.read(uri)
    if cached:
        entry, path = cached
        if (pin and entry.sha256 == pin) or (not pin and not entry.validators):
            logger.info("Using the cached copy of %s", shown)
            return ModelSource(path, entry.sha256, "cached"), None
    # A pinned URI whose cached digest differs is downloaded afresh.
    known = cached if cached and not pin else None
    staging = cache.staging(uri)
    try:
        entry = await _download(
            uri, known[0].validators if known else None, pin, staging, settings
        )
        if entry is None:
            assert known is not None
            logger.info("The cached copy of %s is current", shown)
            return ModelSource(known[1], known[0].sha256, "revalidated"), None
        path, previous = cache.commit(uri, staging, entry)
        return ModelSource(path, entry.sha256, "downloaded"), previous
    except TransientError as error:
        if known:
            logger.warning("Cannot revalidate %s (%s); using the cached copy", shown, error)
            return ModelSource(known[1], known[0].sha256, "cached"), None
        raise SourceError(f"cannot fetch {shown}: {error}") from None
    except DigestMismatch:
        raise
    except SourceError as error:
        raise SourceError(f"cannot fetch {shown}: {error}") from None
    except OSError as error:
        raise SourceError(f"cannot store {shown} in the cache '{cache.root}': {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


async def _download(
    uri: str,
    cached: Optional[Validators],
    pin: Optional[str],
    staging: Path,
    settings: NPUEnvironment,
) -> Optional[Entry]:
    """Fetch `uri` into `staging`, check the pin, unpack an archive; None if `cached` is still
    current."""
    download = _downloader(urlsplit(uri).scheme.lower())
    target = staging / _file_name(uri)

    async def attempt() -> Optional[Tuple[Validators, int, str]]:
        async with Sink(target, uri, settings) as sink:
            validators = await download(uri, cached, sink, settings)
            if validators is None:
                return None
            return validators, sink.size, sink.finish()

    result = await with_retries(attempt, uri, settings)
    if result is None:
        return None
    validators, size, digest = result
    if pin and digest != pin:
        raise DigestMismatch(redact_uri(uri), pin, digest, "; nothing was kept in the cache")
    model = target
    kind = archive_kind(urlsplit(uri).path)
    if kind:
        root = await asyncio.to_thread(
            unpack, target, kind, staging / "content", int(settings.max_download_size)
        )
        target.unlink()
        model = find_model_file(root, where="the archive")
    return Entry(
        uri=redact_uri(uri),
        model=model.relative_to(staging).as_posix(),
        sha256=digest,
        size=size,
        etag=validators.etag,
        last_modified=validators.last_modified,
    )
