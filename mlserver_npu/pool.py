"""Sessions over devices: each run goes to the session with the fewest runs in flight.

A model compiled for a static batch (axis 0 fixed, as NPU compilers and most TFLite exports
do) takes any batch from clients: a large batch is split into runs of the static size that go
to several sessions at once, a short one is padded, and the padding is cut from the outputs.
Each device run records its request rows (padding excluded) in `mlserver_npu_batch_rows`.
"""
import asyncio
import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .backends import Session, TensorSpec
from .drain import Drain
from .metrics import ModelMetrics, SessionMetrics


def static_batch(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Optional[int]:
    """The fixed batch of a model whose inputs share one fixed axis 0 that every output
    repeats (or leaves dynamic); None when axis 0 is dynamic or not a batch axis."""
    sizes = {spec.shape[0] if len(spec.shape) else None for spec in inputs}
    if len(sizes) != 1:
        return None
    (size,) = sizes
    if size is None or any(not len(spec.shape) or spec.shape[0] not in (None, size)
                           for spec in outputs):
        return None
    return size


def _any_batch(specs: Sequence[TensorSpec]) -> List[TensorSpec]:
    return [dataclasses.replace(spec, shape=[None, *spec.shape[1:]]) for spec in specs]


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    """Fill axis 0 up to `size` by repeating the last row (real data, so no NaN surprises)."""
    missing = size - len(array)
    if missing == 0:
        return array
    if len(array) == 0:
        return np.zeros((size, *array.shape[1:]), array.dtype)
    return np.pad(array, [(0, missing)] + [(0, 0)] * (array.ndim - 1), mode="edge")


class SessionPool:
    def __init__(
        self,
        sessions: List[Session],
        model_name: str = "",
        model_version: Optional[str] = None,
    ):
        if not sessions:
            raise ValueError("a pool needs at least one session")
        self.sessions = sessions
        self.in_flight = [0] * len(sessions)
        self.batch_size = static_batch(sessions[0].inputs, sessions[0].outputs)
        self._labels = (model_name, model_version)
        self._drain = Drain(model_name)
        self._metrics: Optional[Tuple[SessionMetrics, ModelMetrics]] = None
        self._empty_outputs = self._outputs_of_no_rows()

    def _series(self) -> Tuple[SessionMetrics, ModelMetrics]:
        """The pool's metric series, created once its model has loaded (`publish_metrics`)
        or at its first run after warm-up: a model whose load failed leaves none."""
        if self._metrics is None:
            self._metrics = (
                SessionMetrics(*self._labels, self.devices), ModelMetrics(*self._labels)
            )
        return self._metrics

    def publish_metrics(self) -> None:
        """Show every session's series (at 0) from the end of a successful load."""
        self._series()

    @property
    def inputs(self) -> List[TensorSpec]:
        """What clients may send: any batch size, also to a static-batch model."""
        specs = self.sessions[0].inputs
        return specs if self.batch_size is None else _any_batch(specs)

    @property
    def outputs(self) -> List[TensorSpec]:
        specs = self.sessions[0].outputs
        return specs if self.batch_size is None else _any_batch(specs)

    @property
    def devices(self) -> List[str]:
        return [session.device for session in self.sessions]

    @property
    def warnings(self) -> List[str]:
        return list(dict.fromkeys(w for session in self.sessions for w in session.warnings))

    async def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        with self._drain.running():
            if self._empty_outputs is not None and all(
                array.ndim and not len(array) for array in feeds.values()):
                return {spec.name: np.zeros((0, *spec.shape[1:]), spec.dtype)
                        for spec in self._empty_outputs}
            return await self._run(feeds)

    def _outputs_of_no_rows(self) -> Optional[List[TensorSpec]]:
        """The outputs a request of 0 rows gets without a device run (zeros of 0 rows), when
        every tensor has a batch axis 0 and the outputs' other axes are fixed; else None."""
        outputs = self.outputs
        if (
            any(not spec.shape or spec.shape[0] is not None for spec in [*self.inputs, *outputs])
            or any(None in spec.shape[1:] for spec in outputs)
        ):
            return None
        return outputs

    async def _run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        size = self.batch_size
        rows = len(next(iter(feeds.values())))
        if size is None:
            return await self._run_on_least_busy(feeds, rows)
        parts = await asyncio.gather(
            *(
                self._run_on_least_busy(
                    {name: _pad(a[start : start + size], size) for name, a in feeds.items()},
                    min(size, rows - start),
                )
                for start in range(0, max(rows, 1), size)
            )
        )
        return {
            spec.name: np.concatenate([part[spec.name] for part in parts])[:rows]
            for spec in self.sessions[0].outputs
        }

    async def _run_on_least_busy(
        self, feeds: Mapping[str, np.ndarray], rows: int
    ) -> Dict[str, np.ndarray]:
        """One device run; `rows` of its batch are the requests' (the rest is padding)."""
        # min() keeps the first of equals, so an idle pool always starts at session 0.
        index = min(range(len(self.sessions)), key=self.in_flight.__getitem__)
        sessions, model = self._series()
        self.in_flight[index] += 1
        sessions.started(index)
        model.rows(rows)
        try:
            return await self.sessions[index].run(feeds)
        finally:
            self.in_flight[index] -= 1
            sessions.finished(index)

    async def warm_up(self, shapes: Optional[Mapping[str, Sequence[int]]] = None) -> None:
        """One batch of ones on every session (outside the metrics), so that first-run costs
        (allocation, compilation, delegate set-up) are paid at load, and a broken session
        fails the load rather than a request. `shapes`: the feed shape of inputs with
        dynamic dimensions (default: 1 for each dynamic dimension). Ones, not zeros: a model
        that divides by an input (a temperature) would divide by 0, and QNN's HTP emulator
        logs an ERROR line for each element it does so."""
        feeds = {
            spec.name: np.ones(self.warm_up_shape(spec, shapes), spec.dtype)
            for spec in self.sessions[0].inputs
        }
        await asyncio.gather(*(session.run(feeds) for session in self.sessions))

    @staticmethod
    def warm_up_shape(
        spec: TensorSpec, shapes: Optional[Mapping[str, Sequence[int]]] = None
    ) -> List[int]:
        """The warm-up feed shape of input `spec`: `shapes`' where the model's is dynamic."""
        wanted = list((shapes or {}).get(spec.name) or ())
        if len(wanted) != len(spec.shape):
            wanted = [1] * len(spec.shape)
        return [want if dim is None else dim for dim, want in zip(spec.shape, wanted)]

    async def close(self) -> None:
        """Once the runs in flight are done; a run after this is a 503."""
        await self._drain.close()
        await asyncio.gather(*(session.close() for session in self.sessions))
