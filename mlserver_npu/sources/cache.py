"""The download cache: one folder per URI (named by the URI's sha256), built in a staging
folder and renamed into place only once complete and verified, so an interrupted download
never leaves an entry that a later load would use. A new entry is undone (the one it replaced
restored) when the load that fetched it fails: a failed load leaves the cache as it was.

    <cache>/<key>/meta.json        what was fetched (redacted URI, sha256, ETag, ...)
    <cache>/<key>/<file or folder> the model file, or the unpacked archive
    <cache>/.staging/              downloads in progress
    <cache>/.locks/<key>.lock      one fetch of a URI at a time across processes
"""
import asyncio
import hashlib
import logging
import os
import shutil
import time
import uuid
import weakref
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Optional, Tuple

from filelock import FileLock, Timeout
from pydantic import BaseModel, ValidationError

from .base import SourceError
from .redact import redact_uri
from .transfer import Validators

logger = logging.getLogger("mlserver.npu")

META = "meta.json"
LOCK_POLL = 0.1

# One asyncio lock per (event loop, URI key) in this process: a second model that asks for a
# URI being fetched waits for that fetch instead of starting its own. Weak values: a lock
# lives as long as someone holds or awaits it.
_locks: "weakref.WeakValueDictionary[Tuple[int, str], asyncio.Lock]" = (
    weakref.WeakValueDictionary()
)


class Entry(BaseModel):
    """meta.json of a cache entry."""

    uri: str  # redacted: a cache folder must not hold credentials
    model: str  # the model file, relative to the entry folder
    sha256: str
    size: int
    etag: Optional[str] = None
    last_modified: Optional[str] = None
    fetched_at: float = 0.0

    @property
    def validators(self) -> Validators:
        return Validators(self.etag, self.last_modified)


class Cache:
    def __init__(self, root: Path):
        self.root = root.expanduser()
        self.staging_root = self.root / ".staging"
        self.locks_root = self.root / ".locks"
        try:
            self.staging_root.mkdir(parents=True, exist_ok=True)
            self.locks_root.mkdir(exist_ok=True)
        except OSError as error:
            raise SourceError(
                f"cannot use the cache folder '{self.root}' (MLSERVER_NPU_CACHE_DIR): {error}"
            ) from None

    @staticmethod
    def key(uri: str) -> str:
        return hashlib.sha256(uri.encode()).hexdigest()

    @asynccontextmanager
    async def lock(self, uri: str) -> AsyncIterator[None]:
        """Hold the URI: first within this process, then across processes."""
        key = self.key(uri)
        slot = (id(asyncio.get_running_loop()), key)
        lock = _locks.get(slot)
        if lock is None:
            lock = _locks[slot] = asyncio.Lock()
        async with lock:
            file_lock = FileLock(self.locks_root / f"{key}.lock", thread_local=False)
            waiting = False
            while True:
                try:
                    file_lock.acquire(blocking=False)
                    break
                except Timeout:
                    if not waiting:
                        logger.info("Waiting for another process fetching %s", redact_uri(uri))
                        waiting = True
                    await asyncio.sleep(LOCK_POLL)
            try:
                yield
            finally:
                file_lock.release()

    def read(self, uri: str) -> Optional[Tuple[Entry, Path]]:
        """The complete entry for `uri` and its model file, if there is one."""
        folder = self.root / self.key(uri)
        try:
            entry = Entry.model_validate_json((folder / META).read_text())
        except (OSError, ValidationError):
            return None
        model = folder / entry.model
        return (entry, model) if model.exists() else None

    def staging(self, uri: str) -> Path:
        """A fresh staging folder for `uri`. Call with the URI locked: any other staging folder
        of this URI is then the leftover of a process that died, and is removed."""
        key = self.key(uri)
        for leftover in self.staging_root.glob(f"{key}.*"):
            shutil.rmtree(leftover, ignore_errors=True)
        folder = self.staging_root / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        return folder

    def commit(self, uri: str, staging: Path, entry: Entry) -> Tuple[Path, Optional[Path]]:
        """Move a complete, verified staging folder into place. Returns the model file and the
        entry it replaced, set aside for `restore` (if the load fails) or `forget`."""
        entry.fetched_at = time.time()
        (staging / META).write_text(entry.model_dump_json(indent=2))
        final = self.root / self.key(uri)
        previous = None
        if final.exists():
            previous = self.staging_root / f"{final.name}.previous.{uuid.uuid4().hex[:8]}"
            final.rename(previous)
        staging.rename(final)
        return final / entry.model, previous

    def restore(self, uri: str, previous: Optional[Path]) -> None:
        """Undo `commit`: the new entry goes, the one it replaced (if any) comes back."""
        final = self.root / self.key(uri)
        shutil.rmtree(final, ignore_errors=True)
        if previous is not None:
            previous.rename(final)

    @staticmethod
    def forget(previous: Optional[Path]) -> None:
        """Confirm `commit`: the replaced entry is deleted."""
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
