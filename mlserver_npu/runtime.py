"""NPURuntime: MLServer's MLModel for ONNX/TFLite models on NPUs. Thin orchestration only:
the model folder's stages (stages.py: settings -> source -> backend sessions -> pool ->
processing) serve each request: inputs (codecs, preprocessing) -> pool -> outputs
(postprocessing, codecs) -> response."""
import logging
import time

from mlserver import MLModel
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    Parameters,
)

from . import wire
from .errors import ModelLoadError
from .metrics import ModelMetrics
from .settings import NPUEnvironment
from .single_model import anchor_to_model_folder
from .sources.redact import redact_text
from .stages import ModelStages

logger = logging.getLogger("mlserver.npu")


class NPURuntime(MLModel):
    async def load(self) -> bool:
        started = time.perf_counter()
        try:
            anchor_to_model_folder(self.settings)
            self._stages = await ModelStages.open(self.settings)
        except ModelLoadError as error:
            # MLServer itself logs only "Couldn't load model 'x'" at INFO: the reason goes here.
            logger.error("%s", redact_text(str(error)))
            raise
        except Exception as error:
            logger.error(
                "Model '%s' could not be loaded: %s",
                self.name, redact_text(f"{type(error).__name__}: {error}"),
            )
            logger.debug("Traceback of the failed load of '%s'", self.name, exc_info=True)
            raise
        if not self.settings.inputs:
            self.inputs = self._stages.inputs.metadata()
        if not self.settings.outputs:
            self.outputs = self._stages.outputs.metadata()
        logger.info(
            "Model '%s': %s (sha256 %s) on %s",
            self.name, self._stages.model_path.name, self._stages.sha256,
            ", ".join(self._stages.pool.devices),
        )
        self._zero_copy = wire.register(self.settings, NPUEnvironment.from_env().zero_copy)
        self._metrics = ModelMetrics(self.name, self.version)  # no series for a failed load
        self._metrics.load(time.perf_counter() - started)
        return True

    @property
    def stages(self) -> ModelStages:
        """The loaded model's stages (its file, pool and processing)."""
        return self._stages

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with self._metrics.serving():
            outputs = await self._stages.infer(
                payload.inputs, payload.outputs, wire.carries_arrays(payload)
            )
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)

    async def metadata(self) -> MetadataModelResponse:
        metadata = await super().metadata()
        if getattr(self, "_stages", None) is not None:
            metadata.parameters = self._stages.describe(metadata.parameters or Parameters())
        return metadata

    async def unload(self) -> bool:
        if getattr(self, "_zero_copy", False):
            wire.unregister(self.settings)
            self._zero_copy = False
        stages = getattr(self, "_stages", None)
        if stages is not None:
            await stages.close()
            self._stages = None
        return True
