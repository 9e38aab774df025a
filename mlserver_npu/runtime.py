"""NPURuntime: MLServer's MLModel for ONNX/TFLite models on NPUs. Thin orchestration only:
the model folder's stages (stages.py: settings -> source -> backend sessions -> pool ->
processing) serve each request: inputs (codecs, preprocessing) -> pool -> outputs
(postprocessing, codecs) -> response."""
import logging
from typing import Optional

from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    Parameters,
)

from . import wire
from .errors import ModelUnloaded
from .served import ServedModel
from .single_model import anchor_to_model_folder
from .stages import ModelStages

logger = logging.getLogger("mlserver.npu")


class NPURuntime(ServedModel):
    async def load(self) -> bool:
        with self.loading():
            anchor_to_model_folder(self.settings)
            self._stages = await ModelStages.open(self.settings)
            if not self.settings.inputs:
                self.inputs = self._stages.inputs.metadata()
            if not self.settings.outputs:
                self.outputs = self._stages.outputs.metadata()
            logger.info(
                "Model '%s': %s (sha256 %s) on %s",
                self.name, self._stages.model_path.name, self._stages.sha256,
                ", ".join(self._stages.pool.devices),
            )
        return True

    def configured_queue_size(self) -> Optional[int]:
        return self._stages.config.max_queue_size

    @property
    def stages(self) -> ModelStages:
        """The loaded model's stages (its file, pool and processing)."""
        return self._stages

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        stages = getattr(self, "_stages", None)
        if stages is None:
            raise ModelUnloaded(self.name)
        with self.admitted(), self._metrics.serving():
            outputs = await stages.infer(
                payload.inputs, payload.outputs, wire.carries_arrays(payload), payload.parameters
            )
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)

    async def metadata(self) -> MetadataModelResponse:
        metadata = await super().metadata()
        if getattr(self, "_stages", None) is not None:
            metadata.parameters = self._stages.describe(metadata.parameters or Parameters())
        return metadata

    async def unload(self) -> bool:
        self.unserve()
        stages = getattr(self, "_stages", None)
        if stages is not None:
            await stages.close()
            self._stages = None
        return True
