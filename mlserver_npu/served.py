"""What every model of the plugin (NPURuntime, Pipeline) does around its own `load` and
`predict`: the reason of a failed load in the log, the zero-copy gRPC path (wire.py), the
request and load metrics (metrics.py), and streams answered request by request."""
import logging
import time
from contextlib import contextmanager
from typing import Any, AsyncIterator, Iterator

from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse

from . import rest, wire
from .errors import ModelLoadError
from .metrics import ModelMetrics
from .settings import NPUEnvironment
from .sources.redact import redact_text

logger = logging.getLogger("mlserver.npu")


class ServedModel(MLModel):
    rest_tensors = True  # rest_tensors.py parses and renders this model's REST tensors

    def __init__(self, *args: Any, **kwargs: Any):
        # Before MLServer's on-load callbacks run, which hand the REST app to rest.py.
        rest.install(NPUEnvironment.from_env().rest_boundary)
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
        self._zero_copy = wire.register(self.settings, NPUEnvironment.from_env().zero_copy)
        self._metrics = ModelMetrics(self.name, self.version)  # no series for a failed load
        self._metrics.load(time.perf_counter() - started)

    def unserve(self) -> None:
        """At `unload`: undo what `loading` registered."""
        if getattr(self, "_zero_copy", False):
            wire.unregister(self.settings)
            self._zero_copy = False

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        """Every request of a gRPC stream (ModelStreamInfer) answered, in order; MLServer's
        default answers only the first."""
        async for payload in payloads:
            yield await self.predict(payload)
