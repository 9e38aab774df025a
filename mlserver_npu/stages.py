"""One model folder's stages, built from its model-settings: the input decoder (codecs and
preprocessing), the session pool on the devices, and the output encoder (postprocessing and
codecs). NPURuntime serves one; a Pipeline runs several in one request."""
import asyncio
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
from mlserver.errors import InferenceError
from mlserver.settings import ModelSettings
from mlserver.types import Parameters, RequestInput, RequestOutput, ResponseOutput
from pydantic import ValidationError

from .backends import BackendError, InvalidInput, get_backend, session_details
from .batcher import Batcher
from .codecs.budget import PixelBudget
from .drain import Drain
from .errors import ConfigurationError, ModelLoadError
from .metrics import stage
from .pool import SessionPool
from .processing.classification import Classifier
from .processing.inputs import InputDecoder
from .processing.outputs import OutputEncoder
from .settings import NPUEnvironment, NPUSettings, describe_validation_error
from .sources import ModelSource, SourceError, model_folder, resolve_model
from .sources.local import confined


def parse_extra(settings: ModelSettings, model: type, name: str):
    """`parameters.extra` as the pydantic `model`; a mistake is a load error naming the key."""
    extra = (settings.parameters.extra if settings.parameters else None) or {}
    try:
        return model.model_validate(extra)
    except ValidationError as error:
        raise ModelLoadError(
            name, describe_validation_error(error, "parameters.extra", model)
        ) from None


def _key_of(value: Any, path: str, where: str) -> Optional[str]:
    """Where in `value` (the settings' `parameters.extra`) the string `path` is written."""
    if value == path:
        return where
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ()
    )
    for key, item in items:
        found = _key_of(item, path, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]")
        if found:
            return found
    return None


def path_resolver(settings: ModelSettings) -> Callable[..., Path]:
    """The one way a postprocess (labels, palettes, dictionaries) gets a file its settings
    name: `resolve(path)` is the file, symlinks resolved, inside the model folder or the
    repository holding it (or a folder of MLSERVER_NPU_ALLOWED_PATHS); elsewhere it is a
    ConfigurationError naming the key (found in `parameters.extra`, or given as `key`)."""
    folder = model_folder(settings)
    allowed = NPUEnvironment.from_env().allowed_folders
    extra = (settings.parameters.extra if settings.parameters else None) or {}

    def resolve(path: str, key: Optional[str] = None) -> Path:
        key = key or _key_of(extra, path, "parameters.extra") or "a path in parameters.extra"
        return confined(path, folder, key, allowed)

    return resolve


class ModelStages:
    """Request tensors -> decoder -> pool -> encoder -> response tensors, for one model."""

    def __init__(
        self,
        settings: ModelSettings,
        config: NPUSettings,
        pool: SessionPool,
        backend: str,
        model_path: Path,
        sha256: str,
    ):
        self.settings = settings
        self.config = config
        self.pool = pool
        self.backend = backend
        self.model_path = model_path
        self.sha256 = sha256
        self.inputs: InputDecoder
        self.outputs: OutputEncoder
        self.batcher: Optional[Batcher] = None
        self._requests = Drain(settings.name)
        self._budget: Optional[PixelBudget] = None  # shared by this model's decoders

    @classmethod
    async def open(cls, settings: ModelSettings, label: Optional[str] = None) -> "ModelStages":
        """Load the model of `settings`; `label` names it in the metrics (default: its name).
        Any failure is a ModelLoadError that says why."""
        name = settings.name
        version = settings.parameters.version if settings.parameters else None
        config = parse_extra(settings, NPUSettings, name)
        try:
            # The cache keeps a new download only if the whole load succeeds.
            async with resolve_model(settings, config.sha256) as source:
                stages = await cls._open_pool(settings, config, source, label or name, version)
                try:
                    stages.inputs = stages.input_decoder([spec.name for spec in stages.pool.inputs])
                    stages.outputs = stages._output_encoder()
                    if config.batching is not None:
                        stages.batcher = Batcher(stages.pool, config.batching, settings)
                except ConfigurationError:
                    await stages.close()
                    raise
        except (BackendError, SourceError, ConfigurationError) as error:
            raise ModelLoadError(name, str(error)) from error
        stages.pool.publish_metrics()
        return stages

    def input_decoder(self, names: Sequence[str]) -> InputDecoder:
        """A decoder for the model inputs `names` only (a pipeline feeds the others)."""
        env = NPUEnvironment.from_env()
        if self._budget is None:
            self._budget = PixelBudget(
                self.config.image_pixel_budget or env.image_pixel_budget, env.image_budget_wait
            )
        return InputDecoder(
            [spec for spec in self.pool.inputs if spec.name in names],
            self.config.preprocess,
            self.config.max_image_pixels or env.max_image_pixels,
            declared=self.settings.inputs,
            budget=self._budget,
        )

    def _output_encoder(self) -> OutputEncoder:
        classifier = None
        if self.config.postprocess is not None:
            classifier = Classifier.build(
                self.config.postprocess, self.pool.outputs, path_resolver(self.settings)
            )
        return OutputEncoder(
            self.pool.outputs, classifier, self.settings.outputs, self.inputs.tiled
        )

    @classmethod
    async def _open_pool(
        cls,
        settings: ModelSettings,
        config: NPUSettings,
        source: ModelSource,
        name: str,
        version: Optional[str],
    ) -> "ModelStages":
        backend_name = config.backend_for(source.path)
        backend = get_backend(backend_name)
        try:
            # The context gives backends the model-level facts their defaults depend on.
            options = backend.Options.model_validate(
                config.options,
                context={"sessions": config.sessions, "max_batch_size": config.max_batch_rows(
                    settings.max_batch_size
                )},
            )
        except ValidationError as error:
            raise ModelLoadError(
                settings.name,
                describe_validation_error(error, "parameters.extra.options", backend.Options),
            ) from None
        opened = await asyncio.gather(
            *(
                backend.open(source.path, device, options)
                for device in config.devices
                for _ in range(config.sessions)
            ),
            return_exceptions=True,
        )
        sessions = [s for s in opened if not isinstance(s, BaseException)]
        failures = [s for s in opened if isinstance(s, BaseException)]
        pool = SessionPool(sessions, name, version) if sessions else None
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
        return cls(settings, config, pool, backend_name, source.path, source.sha256)

    async def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        try:
            with self._requests.running(), stage("device"):
                return await (self.batcher or self.pool).run(feeds)
        except InvalidInput as error:
            raise InferenceError(f"the model rejected the inputs: {error}") from error

    async def infer(
        self,
        request_inputs: Sequence[RequestInput],
        request_outputs: Optional[Sequence[RequestOutput]],
        as_arrays: bool = False,
    ) -> List[ResponseOutput]:
        """`as_arrays`: numeric outputs stay arrays (see tensors.encode_output)."""
        with self._requests.running():
            with stage("decode"):
                feeds, tiles = await self.inputs.decode(request_inputs)
                plan = self.outputs.plan(request_outputs)
            results = await self.run(feeds)
            with stage("encode"):
                return self.outputs.encode(plan, results, tiles, as_arrays)

    def describe(self, parameters: Parameters) -> Parameters:
        """Where the model runs, for its metadata's `parameters`."""
        parameters.backend = self.backend  # type: ignore[attr-defined]
        parameters.devices = ",".join(self.pool.devices)  # type: ignore[attr-defined]
        parameters.sha256 = self.sha256  # type: ignore[attr-defined]
        if self.pool.batch_size is not None:
            parameters.static_batch = self.pool.batch_size  # type: ignore[attr-defined]
        for key, value in session_details(self.pool.sessions).items():
            setattr(parameters, key, value)
        if self.pool.warnings:
            parameters.warnings = "; ".join(self.pool.warnings)  # type: ignore[attr-defined]
        return parameters

    async def close(self) -> None:
        """Once the requests in progress are answered; a request after this is a 503."""
        if self.batcher is not None:
            self.batcher.hurry()
        await self._requests.close()
        if self.batcher is not None:
            await self.batcher.close()
            self.batcher = None
        await self.pool.close()
