"""NPURuntime: MLServer's MLModel for ONNX/TFLite models on NPUs. Thin orchestration only:
settings -> source -> backend sessions -> pool; request -> tensors -> pool -> response."""
import asyncio
import logging
from typing import List

from mlserver import MLModel
from mlserver.errors import InferenceError
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataTensor,
    Parameters,
)
from pydantic import ValidationError

from .backends import BackendError, InvalidInput, TensorSpec, get_backend
from .errors import ModelLoadError
from .pool import SessionPool
from .settings import NPUSettings, describe_validation_error
from .sources import SourceError, resolve_model_path
from .tensors import datatype_of, decode_inputs, encode_output, requested_outputs

logger = logging.getLogger("mlserver_npu")


def _metadata(specs: List[TensorSpec]) -> List[MetadataTensor]:
    return [
        MetadataTensor(name=spec.name, datatype=datatype_of(spec.dtype), shape=spec.v2_shape)
        for spec in specs
    ]


class NPURuntime(MLModel):
    async def load(self) -> bool:
        try:
            self._pool = await self._open_pool()
        except (BackendError, SourceError) as error:
            raise ModelLoadError(self.name, str(error)) from error
        if not self.settings.inputs:
            self.inputs = _metadata(self._pool.inputs)
        if not self.settings.outputs:
            self.outputs = _metadata(self._pool.outputs)
        logger.info(
            "Model '%s': %s on %s", self.name, self._model_path.name, ", ".join(self._pool.devices)
        )
        return True

    def _parse_settings(self) -> NPUSettings:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        try:
            return NPUSettings.model_validate(extra)
        except ValidationError as error:
            raise ModelLoadError(
                self.name, describe_validation_error(error, "parameters.extra", NPUSettings)
            ) from None

    async def _open_pool(self) -> SessionPool:
        config = self._parse_settings()
        self._model_path = resolve_model_path(self.settings)
        self._backend = config.backend_for(self._model_path)
        backend = get_backend(self._backend)
        try:
            options = backend.Options.model_validate(config.options)
        except ValidationError as error:
            raise ModelLoadError(
                self.name, describe_validation_error(
                    error, "parameters.extra.options", backend.Options
                )
            ) from None
        opened = await asyncio.gather(
            *(
                backend.open(self._model_path, device, options)
                for device in config.devices
                for _ in range(config.sessions)
            ),
            return_exceptions=True,
        )
        sessions = [s for s in opened if not isinstance(s, BaseException)]
        failures = [s for s in opened if isinstance(s, BaseException)]
        pool = SessionPool(sessions, self.name, self.version) if sessions else None
        try:
            if failures:
                raise failures[0]
            await pool.warm_up()
        except Exception as error:
            if pool:
                await pool.close()
            if isinstance(error, (BackendError, ModelLoadError)):
                raise
            raise BackendError(f"warm-up inference failed: {error}") from error
        return pool

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = decode_inputs(payload.inputs, self._pool.inputs)
        names = requested_outputs(payload.outputs, self._pool.outputs)
        try:
            results = await self._pool.run(feeds)
        except InvalidInput as error:
            raise InferenceError(f"the model rejected the inputs: {error}") from error
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[encode_output(name, results[name]) for name in names],
        )

    async def metadata(self) -> MetadataModelResponse:
        metadata = await super().metadata()
        if getattr(self, "_pool", None) is not None:
            parameters = metadata.parameters or Parameters()
            parameters.backend = self._backend  # type: ignore[attr-defined]
            parameters.devices = ",".join(self._pool.devices)  # type: ignore[attr-defined]
            if self._pool.batch_size is not None:
                parameters.static_batch = self._pool.batch_size  # type: ignore[attr-defined]
            if self._pool.warnings:
                parameters.warnings = "; ".join(self._pool.warnings)  # type: ignore[attr-defined]
            metadata.parameters = parameters
        return metadata

    async def unload(self) -> bool:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            await pool.close()
            self._pool = None
        return True
