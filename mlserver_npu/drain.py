"""Closing without failing work in progress: MLServer loads a model's new copy before it
unloads the old one, so the old one is closed while requests it took are still being served.
A `Drain` counts that work; `close()` waits for it, and work that starts later is refused
with a 503 (a retry reaches the new copy)."""
import asyncio

from .errors import ModelUnloaded


class Drain:
    def __init__(self, model_name: str):
        self._model_name = model_name
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False

    def running(self) -> "Drain":
        """Around one piece of work (`with drain.running():`); ModelUnloaded once `close()`
        has returned. (A class, not a generator: it is entered several times a request.)"""
        if self.closed:
            raise ModelUnloaded(self._model_name)
        return self

    def __enter__(self) -> None:
        self._running += 1
        self._idle.clear()

    def __exit__(self, *exc: object) -> None:
        self._running -= 1
        if not self._running:
            self._idle.set()

    async def close(self) -> None:
        """Wait until no work runs (work that starts meanwhile is waited for too)."""
        while self._running:
            await self._idle.wait()
        self.closed = True
