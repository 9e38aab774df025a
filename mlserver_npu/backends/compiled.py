"""Compiled-model caches: what a device compiler made of a model, kept so that a restart, a
second replica or a container image built with `mlserver-npu compile` does not compile again.

    <MLSERVER_NPU_CACHE_DIR>/compiled/<backend>/<key>/       one entry: the runtime's own files
    <MLSERVER_NPU_CACHE_DIR>/compiled/<backend>/<key>/entry.json   what it was compiled from
    <MLSERVER_NPU_CACHE_DIR>/compiled/<backend>/.staging/     entries being written

The key covers the model files' digest, the device, the compile options and the runtime's
version, so a changed model, another device or another option never meets a stale blob. An
entry is filled in a staging folder and renamed into place only when the compile succeeded:
a failed or interrupted compile leaves nothing that a later load would use, and two
processes filling one entry at once both succeed (the first rename wins).
"""
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

from ..settings import NPUEnvironment

logger = logging.getLogger("mlserver.npu")

ENTRY = "entry.json"
BLOCK = 1 << 20


def files_sha256(paths: Iterable[Path]) -> str:
    """One digest over the files a model is made of (an IR's .xml and .bin). Blocking."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as file:
            while block := file.read(BLOCK):
                digest.update(block)
    return digest.hexdigest()


def entry_key(slug: str, facts: Mapping[str, Any]) -> str:
    """`<slug>-<digest of facts>`: readable in a listing, unique for what was compiled."""
    blob = json.dumps(facts, sort_keys=True, default=str).encode()
    safe = "".join(c if c.isalnum() or c in "._" else "_" for c in slug)[:40]
    return f"{safe}-{hashlib.sha256(blob).hexdigest()[:32]}"


def cache_root(backend: str) -> Path:
    return NPUEnvironment.from_env().cache_dir.expanduser() / "compiled" / backend


def cache_folder(backend: str, slug: str, facts: Mapping[str, Any]) -> Optional[Path]:
    """The folder for `facts`, for runtimes that write their compiled files there themselves,
    one at a time as they need them (TensorRT engines): keyed like an entry, not staged.
    None when the cache cannot be written."""
    folder = cache_root(backend) / entry_key(slug, facts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        logger.warning("the compiled-model cache %s cannot be written (%s)", folder, error)
        return None
    return folder


@dataclass
class Entry:
    """A cache entry being used: `folder` to read from, or to fill when `cached` is false."""

    folder: Path
    cached: bool


@contextmanager
def cache_entry(
    backend: str, slug: str, facts: Mapping[str, Any], source: Path
) -> Iterator[Entry]:
    """The entry for `facts` (what decides the compiled result: model digest, device,
    options, versions; not where the file is): as it is when it exists, else a staging folder
    that becomes the entry when the block succeeds and is removed when it fails."""
    root = cache_root(backend)
    key = entry_key(slug, facts)
    final = root / key
    if (final / ENTRY).is_file():
        yield Entry(final, True)
        return
    staging = root / ".staging" / f"{key}-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
    except OSError as error:  # e.g. a read-only file system: compile, keep nothing
        logger.warning("the compiled-model cache %s cannot be written (%s): compiling "
                       "without it", root, error)
        with tempfile.TemporaryDirectory() as scratch:
            yield Entry(Path(scratch), False)
        return
    try:
        yield Entry(staging, False)
        (staging / ENTRY).write_text(
            json.dumps({**facts, "source": str(source), "compiled_at": time.time()}, indent=2,
                       default=str)
        )
        try:
            os.rename(staging, final)
        except OSError:  # another process filled it first (or a broken entry without ENTRY)
            if not (final / ENTRY).is_file():
                shutil.rmtree(final, ignore_errors=True)
                os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
