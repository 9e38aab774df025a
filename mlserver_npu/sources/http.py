"""http(s):// downloads with httpx: streamed, conditional on the cached version, redirects
followed. URL user info is sent as basic auth (httpx drops it on a redirect to another host)."""
from typing import Optional

import httpx

from ..settings import NPUEnvironment
from .base import SourceError, TransientError
from .transfer import Sink, Validators

# Statuses that say "try again later" rather than "this will never work".
RETRY_STATUSES = {408, 429}


def _status_error(response: httpx.Response) -> SourceError:
    message = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    if response.status_code >= 500 or response.status_code in RETRY_STATUSES:
        return TransientError(message)
    return SourceError(message)


async def download(
    uri: str, cached: Optional[Validators], sink: Sink, settings: NPUEnvironment
) -> Optional[Validators]:
    """Stream `uri` into `sink`. Returns the new version's validators, or None when the server
    says the `cached` version is still current (304)."""
    # identity: the byte count must match Content-Length, and the digest must be of the file.
    headers = {"Accept-Encoding": "identity"}
    if cached and cached.etag:
        headers["If-None-Match"] = cached.etag
    if cached and cached.last_modified:
        headers["If-Modified-Since"] = cached.last_modified
    timeout = settings.download_timeout
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
            async with client.stream("GET", uri, headers=headers) as response:
                if response.status_code == 304 and cached:
                    return None
                if response.status_code != 200:
                    raise _status_error(response)
                length = response.headers.get("Content-Length")
                sink.expect(int(length) if length and length.isdigit() else None)
                async for chunk in response.aiter_bytes():
                    await sink.write(chunk)
                return Validators(
                    response.headers.get("ETag"), response.headers.get("Last-Modified")
                )
    except httpx.TimeoutException:
        raise TransientError(
            f"no data for {timeout:g} s{_progress(sink)} (MLSERVER_NPU_DOWNLOAD_TIMEOUT)"
        ) from None
    except httpx.UnsupportedProtocol as error:
        raise SourceError(f"unsupported URL: {error}") from None
    except httpx.TransportError as error:
        what = "connection lost" if sink.size else "connection failed"
        raise TransientError(
            f"{what}{_progress(sink)}: {error or type(error).__name__}"
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL) as error:  # too many redirects, bad URL, ...
        raise SourceError(f"{type(error).__name__}: {error}") from None


def _progress(sink: Sink) -> str:
    return f" after {sink.size} bytes" if sink.size else ""
