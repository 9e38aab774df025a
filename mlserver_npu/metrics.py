"""Prometheus metrics of the plugin, kept in MLServer's metrics registry.

MLServer 1.7.1 serves its own registry (`mlserver.metrics.REGISTRY`, where `mlserver.register`
puts custom metrics) only through the multiprocess collector, i.e. with `parallel_workers` > 0;
with `parallel_workers: 0` its metrics endpoint shows prometheus_client's default registry
alone. The first use here registers MLServer's registry into the default one, so the metrics
appear on the metrics port in both modes.
"""
import logging
from typing import List, Optional, Tuple

from mlserver.metrics import REGISTRY
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import Counter, Gauge

logger = logging.getLogger("mlserver.npu")

IN_FLIGHT = "mlserver_npu_session_in_flight"
RUNS = "mlserver_npu_session_runs"
LABELS = ["model_name", "model_version", "session", "device"]


def _serve_mlserver_registry() -> None:
    try:
        DEFAULT_REGISTRY.register(REGISTRY)
    except ValueError as error:  # a metric of the same name is there already
        logger.warning("MLServer's metrics registry is not served: %s", error)


def _session_metrics() -> Tuple[Gauge, Counter]:
    if IN_FLIGHT in REGISTRY:
        return REGISTRY[IN_FLIGHT], REGISTRY[RUNS]  # type: ignore[return-value]
    _serve_mlserver_registry()
    in_flight = Gauge(
        IN_FLIGHT,
        "Runs in flight on one session (device replica) of a model",
        labelnames=LABELS,
        registry=REGISTRY,
        multiprocess_mode="livesum",
    )
    runs = Counter(
        RUNS, "Runs started on one session of a model", labelnames=LABELS, registry=REGISTRY
    )
    return in_flight, runs


class SessionMetrics:
    """In-flight and started runs per session of one model, labelled by session index and device.

    Series stay after unload: a reload under the same name continues the counters.
    """

    def __init__(self, model_name: str, model_version: Optional[str], devices: List[str]):
        in_flight, runs = _session_metrics()
        labels = [
            (model_name, model_version or "", str(index), device)
            for index, device in enumerate(devices)
        ]
        self._in_flight = [in_flight.labels(*label) for label in labels]
        self._runs = [runs.labels(*label) for label in labels]

    def started(self, session: int) -> None:
        self._in_flight[session].inc()
        self._runs[session].inc()

    def finished(self, session: int) -> None:
        self._in_flight[session].dec()
