"""The plugin's dynamic batcher: concurrent requests merged into full device runs.

Requests reach it decoded and checked against the model (InputDecoder), so a bad request
fails alone before it can join a batch. Rows are a stream: a batch takes up to
`max_batch_size` rows from the oldest requests (a larger request is spread over several
batches) and runs through the session pool as one numpy batch; each request gets back
exactly its own rows of every output. A full batch leaves at once (up to four per session
in flight, so a device always has its next batch queued); a short one only once
`max_delay_ms` has passed and a session is idle: while every session is busy, rows that
arrive make up a full batch rather than a short one that would only wait behind.
"""
import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
from mlserver.settings import ModelSettings
from pydantic import BaseModel, ConfigDict, Field

from .drain import Drain
from .errors import ConfigurationError
from .metrics import add_stage
from .pool import SessionPool

Feeds = Mapping[str, np.ndarray]

logger = logging.getLogger("mlserver.npu")


class BatchingSettings(BaseModel):
    """`parameters.extra.batching` in model-settings.json."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: Optional[int] = Field(
        None, ge=1, description="rows per batch; default: the model's static batch"
    )
    max_delay_ms: float = Field(
        2.0, ge=0, le=60_000, description="how long a request waits for more rows"
    )
    preferred_batch_sizes: Optional[List[int]] = Field(
        None, description="sizes sent at once, without waiting; default: multiples of the "
        "static batch up to max_batch_size"
    )
    max_concurrent_batches: Optional[int] = Field(
        None, ge=1, description="batches in flight; default: four per session (per set of "
        "sessions when a batch needs several runs)"
    )


def _check_no_adaptive_batching(model: ModelSettings) -> None:
    if model.max_batch_size > 1 and model.max_batch_time > 0:
        raise ConfigurationError(
            "'parameters.extra.batching' and MLServer's adaptive batching (max_batch_size "
            f"{model.max_batch_size}, max_batch_time {model.max_batch_time}) are both set; "
            "use one: remove max_batch_size/max_batch_time, or 'batching'"
        )


def _check_batch_axes(pool: SessionPool) -> None:
    """Merging and splitting need axis 0 to be the batch of every tensor."""
    if pool.batch_size is not None:
        return  # pool.static_batch checked it
    for kind, specs in (("input", pool.inputs), ("output", pool.outputs)):
        for spec in specs:
            if not len(spec.shape) or spec.shape[0] is not None:
                raise ConfigurationError(
                    f"'parameters.extra.batching' needs a batch axis 0 on every tensor, but "
                    f"{kind} '{spec.name}' has shape {spec.v2_shape}"
                )


@dataclass(eq=False)
class _Request:
    feeds: Feeds
    rows: int
    key: Tuple
    arrived: float
    future: asyncio.Future
    taken: int = 0  # rows already put in a batch
    done: int = 0  # rows whose results are back
    queued: Optional[float] = None  # seconds until its last rows were put in a batch
    pieces: Dict[int, Dict[str, np.ndarray]] = field(default_factory=dict)  # by first row

    def deliver(self, piece: "_Slice", outputs: Dict[str, np.ndarray]) -> None:
        """The outputs of rows `piece.start:piece.stop`; the last piece completes the request."""
        if self.future.done():
            return
        self.pieces[piece.start] = outputs
        self.done += piece.stop - piece.start
        if self.done >= self.rows:
            parts = [self.pieces[s] for s in sorted(self.pieces)]
            self.future.set_result(
                parts[0] if len(parts) == 1 else
                {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
            )

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass(frozen=True)
class _Slice:
    request: _Request
    start: int
    stop: int

    def feeds(self) -> Dict[str, np.ndarray]:
        whole = self.start == 0 and self.stop == self.request.rows
        return {n: a if whole else a[self.start : self.stop] for n, a in self.request.feeds.items()}


class Batcher:
    """`await batcher.run(feeds)` instead of `await pool.run(feeds)`: same results, merged."""

    def __init__(
        self,
        pool: SessionPool,
        settings: BatchingSettings,
        model: ModelSettings,
    ):
        _check_no_adaptive_batching(model)
        _check_batch_axes(pool)
        static = pool.batch_size
        size = settings.max_batch_size or static
        if size is None:
            raise ConfigurationError(
                "'parameters.extra.batching.max_batch_size' is required for a model with a "
                "dynamic batch axis (it has no static batch to default to)"
            )
        preferred = settings.preferred_batch_sizes
        if preferred is None:
            preferred = list(range(static, size, static)) if static else []
        wrong = [p for p in preferred if not 1 <= p <= size]
        if wrong:
            raise ConfigurationError(
                f"'parameters.extra.batching.preferred_batch_sizes': {wrong} not between 1 "
                f"and max_batch_size {size}"
            )
        runs = math.ceil(size / static) if static else 1
        self.max_batch_size = size
        self.preferred = sorted(set(preferred), reverse=True)
        self.delay = settings.max_delay_ms / 1000
        self.pool_width = max(1, len(pool.sessions) // runs)  # batches that keep it busy
        self.max_in_flight = settings.max_concurrent_batches or 4 * self.pool_width
        self._pool = pool
        self._queue: List[_Request] = []
        self._arrived: Optional[asyncio.Event] = None
        self._slots: Optional[asyncio.Semaphore] = None
        self._loop_task: Optional[asyncio.Task] = None
        self._in_flight: set = set()
        self._running = 0  # batches dispatched and not done
        self._drain = Drain(model.name)
        self._hurry = False

    async def run(self, feeds: Feeds) -> Dict[str, np.ndarray]:
        with self._drain.running():
            return await self._run(feeds)

    async def _run(self, feeds: Feeds) -> Dict[str, np.ndarray]:
        rows = len(next(iter(feeds.values())))
        if rows == 0:
            return await self._pool.run(feeds)
        loop = asyncio.get_running_loop()
        if self._arrived is None:  # the event loop exists only now
            self._arrived, self._slots = asyncio.Event(), asyncio.Semaphore(self.max_in_flight)
        if self._loop_task is None:
            self._loop_task = loop.create_task(self._batch_forever())
            self._loop_task.add_done_callback(self._stopped)
        key = tuple((name, array.dtype.str, array.shape[1:]) for name, array in feeds.items())
        request = _Request(feeds, rows, key, loop.time(), loop.create_future())
        self._queue.append(request)
        self._arrived.set()
        try:
            return await request.future
        finally:
            if request.queued is not None:
                add_stage("queue", request.queued)

    def _pending_rows(self) -> int:
        """Rows waiting that can join the oldest request's batch (same shapes after axis 0)."""
        key = self._queue[0].key
        return sum(r.rows - r.taken for r in self._queue if r.key == key)

    def _ready(self) -> Optional[int]:
        """The size of the batch to send now without waiting, if any."""
        pending = self._pending_rows()
        if pending >= self.max_batch_size:
            return self.max_batch_size
        return next((p for p in self.preferred if p <= pending), None)

    async def _batch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._prune()
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._slots.acquire()
            size = await self._next_size(loop)
            batch = self._take(size, loop.time()) if size else []
            if not batch:
                self._slots.release()
                continue
            self._running += 1
            task = loop.create_task(self._dispatch(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _next_size(self, loop: asyncio.AbstractEventLoop) -> Optional[int]:
        """Wait until a batch should leave, and say how many rows: a full or preferred batch
        leaves at once; fewer rows leave after `max_delay_ms`, and only for an idle session
        (while every session is busy, a short batch would only queue behind, and more rows
        may come to fill it)."""
        while True:
            self._prune()
            if not self._queue:
                return None
            size = self._ready()
            if size is not None:
                return size
            idle = self._running < self.pool_width
            wait = self._queue[0].arrived + self.delay - loop.time()
            if idle and (wait <= 0 or self._hurry):
                return self.max_batch_size
            self._arrived.clear()  # set by an arrival, or when a batch is done
            try:
                await asyncio.wait_for(self._arrived.wait(), wait if idle else None)
            except asyncio.TimeoutError:
                pass

    def _prune(self) -> None:
        """Forget requests whose clients are gone (cancelled) or that already failed."""
        if any(r.future.done() for r in self._queue):
            self._queue = [r for r in self._queue if not r.future.done()]

    def _stopped(self, task: asyncio.Task) -> None:
        """A batching loop that died of a bug fails what it held; the next request restarts it."""
        if task.cancelled() or task.exception() is None:
            return
        logger.error("batching stopped", exc_info=task.exception())
        for request in self._queue:
            request.fail(RuntimeError(f"batching failed: {task.exception()}"))
        self._queue, self._loop_task = [], None

    def _take(self, size: int, now: float) -> List[_Slice]:
        key, room, batch = self._queue[0].key, size, []
        for request in self._queue:
            if room == 0:
                break
            if request.key != key:
                continue
            rows = min(room, request.rows - request.taken)
            batch.append(_Slice(request, request.taken, request.taken + rows))
            request.taken += rows
            room -= rows
            if request.taken == request.rows:
                request.queued = now - request.arrived
        self._queue = [r for r in self._queue if r.taken < r.rows]
        return batch

    async def _dispatch(self, batch: List[_Slice]) -> None:
        try:
            if len(batch) == 1:
                return await self._run_alone(batch[0])
            feeds = {
                name: np.concatenate([s.request.feeds[name][s.start : s.stop] for s in batch])
                for name in batch[0].request.feeds
            }
            try:
                results = await self._pool.run(feeds)
                _check_rows(results, sum(s.stop - s.start for s in batch))
            except Exception:
                # One request's data made the merged run fail: run each alone, so that only
                # the request that causes the error gets it.
                await asyncio.gather(*(self._run_alone(s) for s in batch))
                return
            offset = 0
            for piece in batch:
                rows = piece.stop - piece.start
                piece.request.deliver(
                    piece, {n: a[offset : offset + rows] for n, a in results.items()}
                )
                offset += rows
        finally:
            self._running -= 1
            self._slots.release()
            self._arrived.set()

    async def _run_alone(self, piece: _Slice) -> None:
        try:
            results = await self._pool.run(piece.feeds())
            _check_rows(results, piece.stop - piece.start)
        except Exception as error:
            piece.request.fail(error)
        else:
            piece.request.deliver(piece, results)

    def hurry(self) -> None:
        """From now on a short batch leaves as soon as a session is idle (the model is being
        unloaded: nothing is worth waiting for)."""
        self._hurry = True
        if self._arrived is not None:
            self._arrived.set()

    async def close(self) -> None:
        """Serve the requests queued (at once, see `hurry`) or arriving meanwhile, then stop;
        a request after this is a 503."""
        self.hurry()
        await self._drain.close()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, *self._in_flight, return_exceptions=True)


def _check_rows(results: Dict[str, np.ndarray], rows: int) -> None:
    wrong = {n: a.shape for n, a in results.items() if not a.ndim or len(a) != rows}
    if wrong:
        raise RuntimeError(f"a batch of {rows} rows gave outputs of shapes {wrong}")
