"""Prometheus metrics of the plugin, kept in MLServer's metrics registry.

MLServer 1.7.1 serves its own registry (`mlserver.metrics.REGISTRY`, where `mlserver.register`
puts custom metrics) only through the multiprocess collector, i.e. with `parallel_workers` > 0;
with `parallel_workers: 0` its metrics endpoint shows prometheus_client's default registry
alone. The first use here registers MLServer's registry into the default one, so the metrics
appear on the metrics port in both modes.
"""
import logging
import time
from contextvars import ContextVar
from typing import Any, Dict, List, Optional, Tuple

from mlserver.metrics import REGISTRY
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger("mlserver.npu")

IN_FLIGHT = "mlserver_npu_session_in_flight"
RUNS = "mlserver_npu_session_runs"
LABELS = ["model_name", "model_version", "session", "device"]


_SERVED = False


def _serve_mlserver_registry() -> None:
    global _SERVED
    if _SERVED:
        return
    _SERVED = True
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


STAGES = ("decode", "preprocess", "queue", "device", "postprocess", "encode")
OUTCOMES = ("ok", "client_error", "server_error", "rejected")
MODEL_LABELS = ["model_name", "model_version"]
# Seconds: a device run on an NPU is ~1 ms, decoding a large JSON body can take 100 ms.
STAGE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _model_metric(kind: type, name: str, documentation: str, labels: List[str], **kwargs):
    """One metric in MLServer's registry, created on first use (a reload of this module, as
    MLServer does on every model load, finds it there)."""
    if name in REGISTRY:
        return REGISTRY[name]
    _serve_mlserver_registry()
    return kind(name, documentation, labelnames=labels, registry=REGISTRY, **kwargs)


class ModelMetrics:
    """Per-model metrics of the user-facing contract (README, "Metrics"):

    - `mlserver_npu_stage_seconds{stage}`: time per request in each stage of STAGES;
    - `mlserver_npu_batch_rows`: request rows per device run, padding excluded;
    - `mlserver_npu_load_seconds`: download, compile and warm-up of one load;
    - `mlserver_npu_requests_total{outcome}`: requests by outcome in OUTCOMES (`rejected`:
      refused by load shedding, admission.py).

    `model_version` is always a string ("" when the model has none), never "None".
    """

    def __init__(self, model_name: str, model_version: Optional[str]):
        labels = (model_name, model_version or "")
        stages = _model_metric(
            Histogram, "mlserver_npu_stage_seconds",
            "Seconds a request spends in one stage of the plugin",
            MODEL_LABELS + ["stage"], buckets=STAGE_BUCKETS,
        )
        self._stages = {stage: stages.labels(*labels, stage) for stage in STAGES}
        self._rows = _model_metric(
            Histogram, "mlserver_npu_batch_rows",
            "Request rows per device run (padding excluded)", MODEL_LABELS, buckets=ROW_BUCKETS,
        ).labels(*labels)
        self._load = _model_metric(
            Histogram, "mlserver_npu_load_seconds",
            "Seconds one model load took (download, compile, warm-up)", MODEL_LABELS,
            buckets=LOAD_BUCKETS,
        ).labels(*labels)
        requests = _model_metric(
            Counter, "mlserver_npu_requests", "Requests by outcome", MODEL_LABELS + ["outcome"]
        )
        self._requests = {outcome: requests.labels(*labels, outcome) for outcome in OUTCOMES}

    def stage(self, stage: str, seconds: float) -> None:
        self._stages[stage].observe(seconds)

    def rows(self, rows: int) -> None:
        self._rows.observe(rows)

    def load(self, seconds: float) -> None:
        self._load.observe(seconds)

    def request(self, outcome: str) -> None:
        self._requests[outcome].inc()

    def serving(self) -> "_Serving":
        """Around one request: `stage()` blocks inside it add up per stage; at the end each
        stage in REQUEST_STAGES (and any other that ran, e.g. `queue`) is observed once, and
        the outcome counted. A cancelled request (client gone) is not counted."""
        return _Serving(self)


class _Serving:
    # A class rather than a @contextmanager generator, as `stage` below: these are entered
    # several times per request, and a generator costs a tiny request's budget several times.
    __slots__ = ("metrics", "root", "token")

    def __init__(self, metrics: ModelMetrics):
        self.metrics = metrics

    def __enter__(self) -> None:
        self.root = _Block({})
        self.token = _CURRENT.set(self.root)

    def __exit__(self, kind: Optional[type], error: Optional[BaseException], _: Any) -> None:
        _CURRENT.reset(self.token)
        if kind is None:
            outcome = "ok"
        elif isinstance(error, Exception):
            outcome = "client_error" if getattr(error, "status_code", 500) < 500 else \
                "server_error"
        else:  # cancelled
            return
        seconds = self.root.seconds
        for name in REQUEST_STAGES:
            self.metrics.stage(name, seconds.get(name, 0.0))
        for name in seconds:
            if name not in REQUEST_STAGES:
                self.metrics.stage(name, seconds[name])
        self.metrics.request(outcome)


# Observed for every request, 0 when the stage had nothing to do (no preprocessing, say);
# `queue` only for a request that went through the batcher.
REQUEST_STAGES = ("decode", "preprocess", "device", "postprocess", "encode")


class _Block:
    __slots__ = ("seconds", "inner")

    def __init__(self, seconds: Dict[str, float]):
        self.seconds = seconds  # the request's: shared by all its blocks
        self.inner = 0.0  # seconds of the blocks nested in this one


_CURRENT: ContextVar[Optional[_Block]] = ContextVar("mlserver_npu_stage", default=None)


class stage:
    """`with stage(name):` times a block as stage `name` of the request being served (a no-op
    outside `ModelMetrics.serving`, e.g. at warm-up). A nested block's time counts for its
    own stage only, so the stages of a request never add up to more than its time. Works
    across `asyncio.to_thread`, which copies the context."""

    __slots__ = ("name", "parent", "block", "token", "start")

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> None:
        self.parent = parent = _CURRENT.get()
        if parent is not None:
            self.block = _Block(parent.seconds)
            self.token = _CURRENT.set(self.block)
            self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        parent = self.parent
        if parent is None:
            return
        elapsed = time.perf_counter() - self.start
        _CURRENT.reset(self.token)
        parent.inner += elapsed
        seconds = parent.seconds
        seconds[self.name] = seconds.get(self.name, 0.0) + max(elapsed - self.block.inner, 0.0)


def add_stage(name: str, seconds: float) -> None:
    """Count `seconds` measured outside a `stage()` block (the batcher's queue wait of the
    request being served) as stage `name`, and not also as the block around it."""
    block = _CURRENT.get()
    if block is None:
        return
    block.inner += seconds
    block.seconds[name] = block.seconds.get(name, 0.0) + seconds


class StepMetrics:
    """`mlserver_npu_step_seconds{step}`: time per request in each step of a pipeline, from its
    inputs being ready to its outputs (decoding of the request tensors it takes included)."""

    def __init__(self, model_name: str, model_version: Optional[str]):
        self._labels = (model_name, model_version or "")
        self._steps = _model_metric(
            Histogram, "mlserver_npu_step_seconds",
            "Seconds a request spends in one step of a pipeline", MODEL_LABELS + ["step"],
            buckets=STAGE_BUCKETS,
        )
        self._children: Dict[str, Any] = {}

    def step(self, step: str, seconds: float) -> None:
        child = self._children.get(step)
        if child is None:  # one label lookup per step, not per request
            child = self._children[step] = self._steps.labels(*self._labels, step)
        child.observe(seconds)
