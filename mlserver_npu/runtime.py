"""NPURuntime: MLServer's MLModel for ONNX/TFLite models on NPUs. Thin orchestration only:
settings -> source -> backend sessions -> pool -> processing; request -> inputs (codecs,
preprocessing) -> pool -> outputs (postprocessing, codecs) -> response."""
import asyncio
import logging
import time
from pathlib import Path
from typing import Tuple

from mlserver import MLModel
from mlserver.errors import InferenceError
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    Parameters,
)
from mlserver.utils import to_absolute_path
from pydantic import ValidationError

from . import wire
from .backends import BackendError, InvalidInput, get_backend, session_details
from .batcher import Batcher
from .errors import ConfigurationError, ModelLoadError
from .metrics import ModelMetrics, stage
from .pool import SessionPool
from .processing.classification import Classifier
from .processing.inputs import InputDecoder
from .processing.outputs import OutputEncoder
from .settings import NPUEnvironment, NPUSettings, describe_validation_error
from .single_model import anchor_to_model_folder
from .sources import SourceError, resolve_model
from .sources.redact import redact_text

logger = logging.getLogger("mlserver.npu")


class NPURuntime(MLModel):
    async def load(self) -> bool:
        started = time.perf_counter()
        self._metrics = ModelMetrics(self.name, self.version)
        anchor_to_model_folder(self.settings)
        try:
            await self._load()
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
        self._metrics.load(time.perf_counter() - started)
        return True

    async def _load(self) -> None:
        config = self._parse_settings()
        try:
            # The cache keeps a new download only if the whole load succeeds.
            async with resolve_model(self.settings, config.sha256) as source:
                self._model_path, self._sha256 = source.path, source.sha256
                self._pool = await self._open_pool(config)
                try:
                    self._inputs, self._outputs = self._processing(config)
                    self._batcher = None
                    if config.batching is not None:
                        self._batcher = Batcher(self._pool, config.batching, self.settings)
                except ConfigurationError:
                    await self._pool.close()
                    raise
        except (BackendError, SourceError, ConfigurationError) as error:
            raise ModelLoadError(self.name, str(error)) from error
        if not self.settings.inputs:
            self.inputs = self._inputs.metadata()
        if not self.settings.outputs:
            self.outputs = self._outputs.metadata()
        logger.info(
            "Model '%s': %s (sha256 %s) on %s",
            self.name, self._model_path.name, self._sha256, ", ".join(self._pool.devices),
        )
        self._zero_copy = wire.register(self.settings, NPUEnvironment.from_env().zero_copy)

    def _processing(self, config: NPUSettings) -> Tuple[InputDecoder, OutputEncoder]:
        inputs = InputDecoder(
            self._pool.inputs,
            config.preprocess,
            config.max_image_pixels or NPUEnvironment.from_env().max_image_pixels,
            declared=self.settings.inputs,
        )
        classifier = None
        if config.postprocess is not None:
            classifier = Classifier.build(
                config.postprocess,
                self._pool.outputs,
                lambda path: Path(to_absolute_path(self.settings, path)),
            )
        return inputs, OutputEncoder(self._pool.outputs, classifier, self.settings.outputs)

    def _parse_settings(self) -> NPUSettings:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        try:
            return NPUSettings.model_validate(extra)
        except ValidationError as error:
            raise ModelLoadError(
                self.name, describe_validation_error(error, "parameters.extra", NPUSettings)
            ) from None

    async def _open_pool(self, config: NPUSettings) -> SessionPool:
        self._backend = config.backend_for(self._model_path)
        backend = get_backend(self._backend)
        try:
            # The context gives backends the model-level facts their defaults depend on.
            options = backend.Options.model_validate(
                config.options,
                context={"sessions": config.sessions,
                         "max_batch_size": self.settings.max_batch_size},
            )
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
        with self._metrics.serving():
            with stage("decode"):
                feeds = await self._inputs.decode(payload.inputs)
                plan = self._outputs.plan(payload.outputs)
            with stage("device"):
                try:
                    results = await (self._batcher or self._pool).run(feeds)
                except InvalidInput as error:
                    raise InferenceError(f"the model rejected the inputs: {error}") from error
            with stage("encode"):
                outputs = self._outputs.encode(plan, results, wire.carries_arrays(payload))
        return InferenceResponse(
            model_name=self.name, model_version=self.version, outputs=outputs
        )

    async def metadata(self) -> MetadataModelResponse:
        metadata = await super().metadata()
        if getattr(self, "_pool", None) is not None:
            parameters = metadata.parameters or Parameters()
            parameters.backend = self._backend  # type: ignore[attr-defined]
            parameters.devices = ",".join(self._pool.devices)  # type: ignore[attr-defined]
            parameters.sha256 = self._sha256  # type: ignore[attr-defined]
            if self._pool.batch_size is not None:
                parameters.static_batch = self._pool.batch_size  # type: ignore[attr-defined]
            for key, value in session_details(self._pool.sessions).items():
                setattr(parameters, key, value)
            if self._pool.warnings:
                parameters.warnings = "; ".join(self._pool.warnings)  # type: ignore[attr-defined]
            metadata.parameters = parameters
        return metadata

    async def unload(self) -> bool:
        if getattr(self, "_zero_copy", False):
            wire.unregister(self.settings)
            self._zero_copy = False
        if getattr(self, "_batcher", None) is not None:
            await self._batcher.close()
            self._batcher = None
        pool = getattr(self, "_pool", None)
        if pool is not None:
            await pool.close()
            self._pool = None
        return True
