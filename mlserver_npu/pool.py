"""Sessions over devices: each run goes to the session with the fewest runs in flight."""
import asyncio
from typing import Dict, List, Mapping

import numpy as np

from .backends import Session, TensorSpec


class SessionPool:
    def __init__(self, sessions: List[Session]):
        if not sessions:
            raise ValueError("a pool needs at least one session")
        self.sessions = sessions
        self.in_flight = [0] * len(sessions)
        self.runs = [0] * len(sessions)

    @property
    def inputs(self) -> List[TensorSpec]:
        return self.sessions[0].inputs

    @property
    def outputs(self) -> List[TensorSpec]:
        return self.sessions[0].outputs

    @property
    def devices(self) -> List[str]:
        return [session.device for session in self.sessions]

    async def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        # min() keeps the first of equals, so an idle pool always starts at session 0.
        index = min(range(len(self.sessions)), key=self.in_flight.__getitem__)
        self.in_flight[index] += 1
        self.runs[index] += 1
        try:
            return await self.sessions[index].run(feeds)
        finally:
            self.in_flight[index] -= 1

    async def close(self) -> None:
        await asyncio.gather(*(session.close() for session in self.sessions))
