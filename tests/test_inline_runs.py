"""OnnxRuntimeSession decides inline-or-thread from what a run costs (the fastest run seen
per input element), not from how slow the latest, contended run looked."""
import asyncio
from pathlib import Path

import numpy as np
import pytest

from mlserver_npu.backends import onnxruntime as backend

DIGITS = Path(__file__).resolve().parents[1] / "model-repository" / "digits" / "model.onnx"


def test_a_tiny_run_stays_inline_after_a_slow_contended_run(monkeypatch):
    session = backend._open(DIGITS, "cpu", backend.Options())
    feeds = {"input": np.zeros((1, 64), np.float32)}

    async def scenario():
        for _ in range(20):  # the first runs (allocation) go to a thread: cost unknown
            await session.run(feeds)
        # A run that looked a second long, as a loaded machine makes it look.
        clock = iter([0.0, 1.0])
        monkeypatch.setattr(backend.time, "perf_counter", lambda: next(clock))
        session._run(feeds, 64)
        monkeypatch.undo()

        async def no_thread(*args, **kwargs):
            raise AssertionError("a tiny run went to a thread")

        monkeypatch.setattr(backend.asyncio, "to_thread", no_thread)
        outputs = await session.run(feeds)
        assert set(outputs) == {spec.name for spec in session.outputs}
        # a run of many more elements than the cost allows inline still goes to a thread
        with pytest.raises(AssertionError, match="went to a thread"):
            await session.run({"input": np.zeros((100_000, 64), np.float32)})

    asyncio.run(scenario())
