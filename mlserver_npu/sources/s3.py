"""s3://bucket/key downloads with boto3: credentials, region and endpoint come from the
standard AWS environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_ENDPOINT_URL for MinIO and other
S3-compatible stores, ...). boto3 blocks, so each call runs in a thread."""
import asyncio
from typing import Any, Optional, Tuple
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ResponseStreamingError,
)

from ..settings import NPUEnvironment
from .base import SourceError, TransientError
from .transfer import CHUNK, Sink, Validators

THROTTLING = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed"}
# Connection refused or lost, timeouts, bodies cut short: worth another attempt.
_TRANSIENT = (BotoConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError)


def parse_uri(uri: str) -> Tuple[str, str]:
    parts = urlsplit(uri)
    key = parts.path.lstrip("/")
    if not parts.netloc or not key:
        raise SourceError(f"'{uri}' is not of the form s3://bucket/key")
    return parts.netloc, key


def _client(settings: NPUEnvironment) -> Any:
    # Retries are ours (with_retries), so that a body cut mid-stream is retried too.
    config = Config(
        connect_timeout=settings.download_timeout,
        read_timeout=settings.download_timeout,
        retries={"total_max_attempts": 1},
    )
    return boto3.session.Session().client("s3", config=config)


def _error(error: Exception) -> SourceError:
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return SourceError(
            f"{error}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = details.get("Code", "")
        message = f"S3 {code or status}: {details.get('Message', '')}".rstrip(": ")
        if status >= 500 or code in THROTTLING:
            return TransientError(message)
        return SourceError(message)
    if isinstance(error, _TRANSIENT):
        return TransientError(str(error))
    return SourceError(f"{type(error).__name__}: {error}")


def _not_modified(error: ClientError) -> bool:
    return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 304


async def download(
    uri: str, cached: Optional[Validators], sink: Sink, settings: NPUEnvironment
) -> Optional[Validators]:
    """Stream the object into `sink`. Returns its validators, or None when the `cached`
    version is still current (S3 answers a matching If-None-Match with 304)."""
    bucket, key = parse_uri(uri)
    conditions = {"IfNoneMatch": cached.etag} if cached and cached.etag else {}
    try:
        client = await asyncio.to_thread(_client, settings)
        response = await asyncio.to_thread(
            client.get_object, Bucket=bucket, Key=key, **conditions
        )
        body = response["Body"]
        try:
            sink.expect(response.get("ContentLength"))
            chunks = body.iter_chunks(CHUNK)
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                await sink.write(chunk)
        finally:
            body.close()
    except ClientError as error:
        if conditions and _not_modified(error):
            return None
        raise _error(error) from None
    except BotoCoreError as error:
        raise _error(error) from None
    modified = response.get("LastModified")
    return Validators(response.get("ETag"), modified.isoformat() if modified else None)
