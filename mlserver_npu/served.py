"""What every model of the plugin (NPURuntime, Pipeline) does around its own `load` and
`predict`: the reason of a failed load in the log, the zero-copy gRPC path (wire.py), the
request and load metrics (metrics.py), and streams answered request by request."""
import logging
import time
from contextlib import contextmanager, nullcontext
from typing import Any, AsyncIterator, ContextManager, Iterator, Optional

from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, MetadataModelResponse

from . import admission, grpc_errors, rest, wire
from .errors import ModelLoadError
from .metrics import ModelMetrics
from .settings import NPUEnvironment
from .sources.redact import redact_text

logger = logging.getLogger("mlserver.npu")


class ServedModel(MLModel):
    rest_tensors = True  # rest_tensors.py parses and renders this model's REST tensors

    def __init__(self, *args: Any, **kwargs: Any):
        # Before MLServer's on-load callbacks run, which hand the REST app to rest.py.
        environment = NPUEnvironment.from_env()
        rest.install(environment.rest_boundary)
        grpc_errors.install(environment.grpc_errors)
        super().__init__(*args, **kwargs)

    @contextmanager
    def loading(self) -> Iterator[None]:
        """Around `load`: a failure is logged at ERROR with its reason (MLServer itself logs
        only "Couldn't load model 'x'" at INFO); once the body succeeds, the model takes the
        zero-copy path and its load time is observed."""
        started = time.perf_counter()
        try:
            yield
        except ModelLoadError as error:
            logger.error("%s", redact_text(str(error)))
            raise
        except Exception as error:
            logger.error(
                "Model '%s' could not be loaded: %s",
                self.name, redact_text(f"{type(error).__name__}: {error}"),
            )
            logger.debug("Traceback of the failed load of '%s'", self.name, exc_info=True)
            raise
        environment = NPUEnvironment.from_env()
        self._zero_copy = wire.register(self.settings, environment.zero_copy)
        self._metrics = ModelMetrics(self.name, self.version)  # no series for a failed load
        self._metrics.load(time.perf_counter() - started)
        limit = self.configured_queue_size()
        self._admission = admission.register(
            self.name, environment.max_queue_size if limit is None else limit,
            lambda: self._metrics.request("rejected"),
        )

    def configured_queue_size(self) -> Optional[int]:
        """The loaded model's `parameters.extra.max_queue_size`, as its settings parsed it
        (None: the environment's)."""
        return None

    def admitted(self) -> ContextManager[None]:
        """Around `predict`: past the model's `max_queue_size`, a 429 at once (admission.py)."""
        held = getattr(self, "_admission", None)
        return held.admitted() if held is not None else nullcontext()

    async def metadata(self) -> MetadataModelResponse:
        """MLServer's, with `versions` listing the model's `parameters.version` (MLServer
        leaves it to the top-level `versions` key, which no one sets)."""
        metadata = await super().metadata()
        if not metadata.versions and self.version:
            metadata.versions = [self.version]
        return metadata

    def unserve(self) -> None:
        """At `unload`: undo what `loading` registered."""
        if getattr(self, "_zero_copy", False):
            wire.unregister(self.settings)
            self._zero_copy = False
        if getattr(self, "_admission", None) is not None:
            admission.unregister(self._admission)
            self._admission = None

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        """Every request of a gRPC stream (ModelStreamInfer) answered, in order; MLServer's
        default answers only the first."""
        async for payload in payloads:
            yield await self.predict(payload)
