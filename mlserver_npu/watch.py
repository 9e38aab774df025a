"""Watch mode: keep a server's models in step with their files (`serve --watch`, `watch`).

Every poll, each model source (a model folder, or a file given to `serve`) is fingerprinted
by the size and modification time of its files, and of the model file its `uri` names when
that lies outside the folder. A new source is loaded, a changed one reloaded (MLServer loads
the new copy before it drops the old one, and keeps the old one when the new one fails), a
removed one unloaded. A source acts only once two polls in a row saw the same fingerprint:
a folder still being copied changes between polls. A source that fails is logged with the
reason and tried again only once it changes.
"""
import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Protocol, Set, Tuple

import httpx
from mlserver.handlers import ModelRepositoryHandlers
from mlserver.utils import to_absolute_path

from .errors import bounded
from .repository import PathsRepository, RepositoryError, Unit

logger = logging.getLogger("mlserver.npu")

Fingerprint = Tuple[Tuple[str, int, int], ...]


class Unreachable(Exception):
    """The server did not answer: nothing is recorded, the next poll tries again."""


class Driver(Protocol):
    """Where loads and unloads go; `load` raises with the reason when the model fails."""

    async def load(self, name: str) -> None:
        ...

    async def unload(self, name: str) -> None:
        ...


class ServerDriver:
    """The MLServer in this process, through the handlers of its repository API."""

    def __init__(self, handlers: ModelRepositoryHandlers):
        self._handlers = handlers

    async def load(self, name: str) -> None:
        await self._handlers.load(name)

    async def unload(self, name: str) -> None:
        await self._handlers.unload(name)


class HTTPDriver:
    """Any running MLServer, through its REST repository API (`/v2/repository/...`)."""

    def __init__(self, url: str, timeout: float = 600):
        self._client = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout)

    async def _post(self, path: str, body: Optional[dict] = None) -> httpx.Response:
        try:
            response = await self._client.post(path, json=body)
        except httpx.TransportError as error:
            raise Unreachable(f"{self._client.base_url}: {error!r}") from error
        if response.status_code != 200:
            try:
                reason = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                reason = response.text[:300]
            raise RuntimeError(f"HTTP {response.status_code}: {reason}")
        return response

    async def load(self, name: str) -> None:
        await self._post(f"/v2/repository/models/{name}/load")

    async def unload(self, name: str) -> None:
        await self._post(f"/v2/repository/models/{name}/unload")

    async def ready_models(self) -> Set[str]:
        response = await self._post("/v2/repository/index", {"ready": True})
        return {item["name"] for item in response.json()}

    async def close(self) -> None:
        await self._client.aclose()


def _files(path: Path) -> Iterable[Path]:
    if path.is_file():
        yield path
    elif path.is_dir():
        yield from (p for p in path.rglob("*") if p.is_file())


@dataclass
class Served:
    fingerprint: Fingerprint
    name: Optional[str]  # the model the server holds from this source, if any


class Watcher:
    def __init__(
        self,
        repository: PathsRepository,
        driver: Driver,
        interval: float,
        only: Optional[Set[Path]] = None,
        failures: Optional[Dict[str, str]] = None,
    ):
        """`only`: the sources to watch (default: every one); `failures`: model name -> why
        its last load failed, kept up to date (the repository index shows it)."""
        self.repository = repository
        self.driver = driver
        self.interval = interval
        self.only = only
        self.failures = failures if failures is not None else {}
        self._known: Dict[Path, Served] = {}
        self._pending: Dict[Path, Fingerprint] = {}

    def fingerprint(self, unit: Unit) -> Fingerprint:
        paths = [unit.path]
        try:
            settings = self.repository.read(unit)
            uri = settings.parameters.uri if settings.parameters else None
            if uri and "://" not in uri:
                target = Path(to_absolute_path(settings, uri))
                if unit.path not in target.parents and target != unit.path:
                    paths.append(target)
        except RepositoryError:
            pass  # a folder whose settings cannot be read yet: its files alone
        stats = []
        for path in paths:
            for file in _files(path):
                try:
                    stat = file.stat()
                except FileNotFoundError:  # removed while we looked
                    continue
                stats.append((str(file), stat.st_size, stat.st_mtime_ns))
        return tuple(sorted(stats))

    def adopt(self, served: Set[str]) -> None:
        """Take the sources of the models the server holds already as they are now."""
        for unit in self.repository.units():
            try:
                name = self.repository.read(unit).name
            except RepositoryError:
                continue
            if name in served:
                self._known[unit.path] = Served(self.fingerprint(unit), name)

    def adopt_failed(self, paths: Set[Path]) -> None:
        """Take these sources, whose models failed to load, as they are now: each is tried
        again once it changes."""
        for unit in self.repository.units():
            if unit.path in paths:
                self._known[unit.path] = Served(self.fingerprint(unit), None)

    async def poll(self) -> None:
        units = {unit.path: unit for unit in self.repository.units()
                 if self.only is None or unit.path in self.only}
        for path, unit in units.items():
            fingerprint = self.fingerprint(unit)
            known = self._known.get(path)
            if known is not None and known.fingerprint == fingerprint:
                self._pending.pop(path, None)
            elif self._pending.get(path) != fingerprint:
                self._pending[path] = fingerprint  # changed since the last poll: wait
            else:
                await self._apply(unit, fingerprint, known)
        for path in set(self._known) - set(units):
            await self._remove(path, self._known[path])
        for path in set(self._pending) - set(units):
            del self._pending[path]

    async def _apply(self, unit: Unit, fingerprint: Fingerprint, known: Optional[Served]) -> None:
        previous = known.name if known else None
        name = None
        try:
            name = self.repository.read(unit).name
            await self.driver.load(name)
        except Unreachable as error:
            logger.warning("watch: server unreachable (%s); trying again", error)
            return
        except Exception as error:
            if name is not None:
                self.failures[name] = bounded(str(getattr(error, "reason", None) or error))
            kept = f"; model '{previous}' keeps serving its previous version" if previous else ""
            logger.error(
                "watch: '%s' failed to load: %s (tried again when it changes%s)",
                unit.path, error, kept,
            )
            self._known[unit.path] = Served(fingerprint, previous)
            self._pending.pop(unit.path, None)
            return
        self._pending.pop(unit.path, None)
        self._known[unit.path] = Served(fingerprint, name)
        self.failures.pop(name, None)
        logger.info("watch: %s model '%s' from '%s'",
                    "reloaded" if previous == name else "loaded", name, unit.path)
        if previous and previous != name:
            await self._unload(previous, f"renamed to '{name}'")

    async def _remove(self, path: Path, known: Served) -> None:
        if known.name is not None:
            try:
                await self._unload(known.name, f"'{path}' was removed")
            except Unreachable as error:
                logger.warning("watch: server unreachable (%s); trying again", error)
                return
        del self._known[path]

    async def _unload(self, name: str, why: str) -> None:
        try:
            await self.driver.unload(name)
        except Unreachable:
            raise
        except Exception as error:
            logger.error("watch: unloading model '%s' failed: %s", name, error)
            return
        logger.info("watch: unloaded model '%s' (%s)", name, why)

    async def run(self) -> None:
        """Poll until cancelled; a failed poll is logged and the next one goes on."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except (RepositoryError, OSError) as error:
                logger.error("watch: %s", error)
