"""The start-up policy of `mlserver-npu serve` and `mlserver-npu start` (the image's command).

MLServer 1.7.1's `MLServer.start(models)` logs a failed start-up model, stops every server and
returns: `mlserver start` exits 0, so `--restart on-failure` never restarts it and the good
models go down with the bad one. Here the models are loaded by `start_models` after the
servers start, and:

- by default a failed model stops the server, and the command exits 1;
- with `keep_going` (`--keep-going`, `MLSERVER_NPU_KEEP_GOING=1`) the good models keep
  serving; each broken one is logged at ERROR with its reason, shown in the repository index
  as `UNAVAILABLE` with that reason, is not ready, and is loaded again once its files change
  (a watcher over the broken models' folders, as `--watch` does for all).

Readiness while a model is broken: MLServer drops a model whose load failed from its
registry, so `/v2/models/NAME/ready` is 404 and `/v2/health/ready` (every *loaded* model
ready) is 200 once the good models are ready.
"""
import asyncio
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Set, Tuple

from mlserver import MLServer
from mlserver.handlers import ModelRepositoryHandlers
from mlserver.settings import ModelSettings
from mlserver.types import State

from .errors import bounded
from .repository import PathsRepository, RepositoryError
from .sources.redact import redact_text
from .watch import ServerDriver, Watcher
from .wire import fingerprint

logger = logging.getLogger("mlserver.npu")

# `show_failures` wraps this method of one handlers object; the sha256 of its source in
# MLServer 1.7.1.
TO_ITEM_SHA256 = "f0da1777cc0e5a297413561edf363a182b4acdc2db438cf587a58aba723123f7"


def reason_of(error: BaseException) -> str:
    """A load failure's reason as the log and the index show it."""
    reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
    return bounded(redact_text(str(reason)))


async def load_all(server: MLServer, models: Sequence[ModelSettings]) -> Dict[str, str]:
    """Load `models` into the running `server`, all at once; the failures, name -> reason."""
    registry = server._model_registry
    results = await asyncio.gather(*(registry.load(m) for m in models), return_exceptions=True)
    failures: Dict[str, str] = {}
    for model, result in zip(models, results):
        if isinstance(result, asyncio.CancelledError):
            raise result
        if isinstance(result, BaseException):
            failures[model.name] = reason_of(result)
    return failures


def show_failures(handlers: ModelRepositoryHandlers, failures: Dict[str, str]) -> None:
    """The repository index of this server shows each model in `failures` as UNAVAILABLE with
    its reason (MLServer's index says UNAVAILABLE with an empty reason). Kept as MLServer's
    when its `_to_item` is not the method this was checked against."""
    original = handlers._to_item
    if fingerprint(type(handlers)._to_item) != TO_ITEM_SHA256:
        logger.warning("MLServer's index is not the one checked: load failures not shown in it")
        return

    async def to_item(model_settings: ModelSettings) -> Any:
        item = await original(model_settings)
        reason = failures.get(model_settings.name)
        if reason is not None and item.state != State.READY:
            item.state, item.reason = State.UNAVAILABLE, f"failed to load: {reason}"
        return item

    handlers._to_item = to_item  # type: ignore[method-assign]


def watcher_for(server: MLServer, roots: Sequence[Path], served: Set[str],
                failures: Dict[str, str], interval: float, watch_all: bool) -> Optional[Watcher]:
    """A watcher over `roots`: every model folder (`watch_all`, as `--watch`), else only the
    folders of the broken models, each loaded again once its files change; None when there
    is nothing to watch."""
    repository = PathsRepository(paths=[str(root) for root in roots])
    try:
        units = repository.units()
    except RepositoryError:
        return None
    broken: Set[Path] = set()
    for unit in units:
        try:
            if repository.read(unit).name in failures:
                broken.add(unit.path)
        except RepositoryError:
            continue
    if not broken and not watch_all:
        return None
    watcher = Watcher(repository, ServerDriver(server._model_repository_handlers), interval,
                      only=None if watch_all else broken, failures=failures)
    if watch_all:
        watcher.adopt(served)
    watcher.adopt_failed(broken)
    return watcher


async def start_models(
    server: MLServer,
    models: Sequence[ModelSettings],
    keep_going: bool,
    roots: Sequence[Path],
    poll_interval: float,
    watch_all: bool = False,
) -> Tuple[Dict[str, str], Optional[Watcher]]:
    """Load `models` into the started `server` under the policy above: the failures (name ->
    reason; the caller stops the server when there are any and not `keep_going`), and the
    watcher to run, if any."""
    failures = await load_all(server, models)
    for name, reason in failures.items():
        logger.error(
            "Model '%s' failed to load at start-up: %s%s", name, reason,
            " (not ready; the other models keep serving, and it is loaded again when its "
            "files change)" if keep_going else "",
        )
    if failures and not keep_going:
        return failures, None
    show_failures(server._model_repository_handlers, failures)  # and the watcher's, later
    served = {m.name for m in models if m.name not in failures}
    if not failures and not watch_all:
        return failures, None
    return failures, watcher_for(server, roots, served, failures, poll_interval, watch_all)
