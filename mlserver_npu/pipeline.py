"""Pipeline: an MLServer model whose `parameters.extra.steps` run other model folders in one
request, passing numpy arrays between them (graph.py). Each model step is a model folder's
stages (stages.py) with its own backend, devices, sessions and preprocessing; the pipeline
decodes the request tensors a step takes with that step's decoder, and encodes its outputs
with an encoder of its own (its optional `postprocess`)."""
import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
from mlserver.errors import InferenceError
from mlserver.repository.load import load_model_settings
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataTensor,
    Parameters,
)
from mlserver.utils import to_absolute_path
from pydantic import ValidationError

from . import wire
from .backends import TensorSpec
from .drain import Drain
from .errors import ConfigurationError, ModelLoadError
from .graph import Graph, ModelStep, PipelineSettings, settings_error
from .metrics import StepMetrics, stage
from .processing.inputs import Decoded, InputDecoder
from .processing.outputs import OutputEncoder
from .processing.postprocess import BuildContext, build_all
from .repository import is_npu_runtime
from .served import ServedModel
from .stages import ModelStages, metadata_size, request_context, resolve_path
from .tensors import describe, match_inputs

logger = logging.getLogger("mlserver.npu")


class Pipeline(ServedModel):
    async def load(self) -> bool:
        self._requests = Drain(self.name)
        with self.loading():
            await self._load()
        logger.info("Pipeline '%s': steps %s", self.name, ", ".join(self._graph.steps))
        return True

    async def _load(self) -> None:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        try:
            config = PipelineSettings.model_validate(extra)
        except ValidationError as error:
            raise ModelLoadError(self.name, settings_error(error, extra)) from None
        try:
            self._graph = Graph(config)
        except ConfigurationError as error:
            raise ModelLoadError(self.name, str(error)) from None
        steps = [step for step in self._graph.order if isinstance(step, ModelStep)]
        opened = await asyncio.gather(*(self._open(step) for step in steps), return_exceptions=True)
        self._steps = {
            step.name: stages for step, stages in zip(steps, opened)
            if not isinstance(stages, BaseException)
        }
        try:
            for step, stages in zip(steps, opened):
                if isinstance(stages, ModelLoadError):
                    raise ConfigurationError(f"step '{step.name}': {stages.reason}")
                if isinstance(stages, BaseException):
                    raise stages
            self._wire(config, steps)
        except ConfigurationError as error:
            await self.unload()
            raise ModelLoadError(self.name, str(error)) from None
        except BaseException:
            await self.unload()
            raise

    async def _open(self, step: ModelStep) -> ModelStages:
        folder = Path(to_absolute_path(self.settings, step.model))
        path = folder if folder.name == "model-settings.json" else folder / "model-settings.json"
        if not path.is_file():
            raise ConfigurationError(f"step '{step.name}': no model-settings.json in '{folder}'")
        try:
            settings = load_model_settings(str(path))
        except (ValidationError, ValueError) as error:
            raise ConfigurationError(f"step '{step.name}': '{path}': {error}") from None
        if not is_npu_runtime(settings):
            raise ConfigurationError(
                f"step '{step.name}': '{path}' has implementation "
                f"'{settings.implementation_}'; steps are mlserver_npu.NPURuntime models"
            )
        return await ModelStages.open(settings, f"{self.name}.{step.name}")

    def _wire(self, config: PipelineSettings, steps: Sequence[ModelStep]) -> None:
        """Check the references against the loaded models and build the pipeline's decoders
        (one per model step, for the request tensors it takes) and its output encoder."""
        specs = self._graph.output_specs(
            {name: stages.pool.inputs for name, stages in self._steps.items()},
            {name: stages.pool.outputs for name, stages in self._steps.items()},
        )
        self._fed: Dict[str, Dict[str, str]] = {}
        self._decoders: Dict[str, InputDecoder] = {}
        inputs: Dict[str, MetadataTensor] = {}
        taken_by: Dict[str, str] = {}
        for step in steps:
            stages = self._steps[step.name]
            fed = self._graph.pipeline_inputs(step, stages.pool.inputs)
            decoder = stages.input_decoder(list(fed))
            self._fed[step.name], self._decoders[step.name] = fed, decoder
            for tensor in decoder.metadata():
                name = fed[tensor.name]
                tensor = tensor.model_copy(update={"name": name})
                if name in inputs and describe(inputs[name]) != describe(tensor):
                    raise ConfigurationError(
                        f"step '{step.name}': pipeline input '{name}' is {describe(tensor)} "
                        f"here, but {describe(inputs[name])} in step '{taken_by[name]}'"
                    )
                inputs.setdefault(name, tensor)
                taken_by.setdefault(name, step.name)
        self._inputs = inputs

        outputs = [
            TensorSpec(name, specs[ref.step][ref.name].dtype, specs[ref.step][ref.name].shape)
            for name, ref in config.outputs.items()
        ]
        tiled = any(decoder.tiled for decoder in self._decoders.values())
        # The geometry of the first step that takes images is the one results map back to.
        self._image_step = next(
            (step.name for step in steps if self._decoders[step.name].image_input
             and self._decoders[step.name].image_input in self._fed[step.name]),
            None,
        )
        first = next(iter(config.outputs.values()))
        source = self._steps.get(first.step)
        image_decoder = self._decoders[self._image_step] if self._image_step else None
        image_input = image_decoder.image_input if image_decoder else None
        metadata = source.model_metadata if source is not None else {}
        context = BuildContext(
            resolve=lambda path: resolve_path(self.settings, path),
            metadata=metadata,
            input_size=(image_decoder.input_size(image_input) if image_decoder else None)
            or metadata_size(metadata),
            image_input=image_input,
            tiled=tiled,
        )
        postprocesses = build_all(config.postprocess, outputs, context)
        self._encoder = OutputEncoder(outputs, postprocesses, self.settings.outputs, tiled)
        if not self.settings.inputs:
            self.inputs = list(inputs.values())
        if not self.settings.outputs:
            self.outputs = self._encoder.metadata()
        self._step_metrics = StepMetrics(self.name, self.version)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with self._requests.running(), self._metrics.serving():
            return await self._predict(payload)

    async def _predict(self, payload: InferenceRequest) -> InferenceResponse:
        request = match_inputs(payload.inputs, list(self._inputs.values()), "pipeline")
        with stage("decode"):
            plan = self._encoder.plan(payload.outputs, payload.parameters)
        tiles: List[List[int]] = []
        images: Dict[str, Decoded] = {}

        async def run_model(
            step: ModelStep, arrays: Dict[str, np.ndarray]
        ) -> Dict[str, np.ndarray]:
            start = time.perf_counter()
            taken = [
                request[name].model_copy(update={"name": model_input})
                for model_input, name in self._fed[step.name].items()
            ]
            try:
                with stage("decode"):
                    decoded = await self._decoders[step.name].decode(taken)
                results = await self._steps[step.name].run({**decoded.feeds, **arrays})
            except InferenceError as error:
                raise InferenceError(f"step '{step.name}': {error}") from None
            if decoded.tiles is not None:
                tiles.append(decoded.tiles)
            if step.name == self._image_step:
                images["decoded"] = decoded
            self._step_metrics.step(step.name, time.perf_counter() - start)
            return results

        results = await self._graph.run(run_model)
        with stage("encode"):
            decoded = images.get("decoded") or Decoded({})
            image_input = self._decoders[self._image_step].image_input if self._image_step else None
            context = request_context(decoded, image_input, wire.carries_arrays(payload))
            context.tiles = tiles[0] if tiles else None
            outputs = self._encoder.encode(plan, results, context)
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)

    def describe_steps(self) -> List[Dict[str, Any]]:
        """The steps in the order of the settings: a model step's folder and where it runs
        (ModelStages.describe), a combine step's kind and inputs."""
        described: List[Dict[str, Any]] = []
        for step in self._graph.config.steps:
            if isinstance(step, ModelStep):
                where = self._steps[step.name].describe(Parameters())
                described.append(
                    {"name": step.name, "model": step.model, **where.model_dump(exclude_none=True)}
                )
            else:
                described.append({"name": step.name, "combine": step.combine,
                                  "inputs": [str(ref) for ref in step.inputs]})
        return described

    async def metadata(self) -> MetadataModelResponse:
        metadata = await super().metadata()
        parameters = metadata.parameters or Parameters()
        parameters.steps = ",".join(self._graph.steps)  # type: ignore[attr-defined]
        metadata.parameters = parameters
        return metadata

    async def unload(self) -> bool:
        self.unserve()
        if hasattr(self, "_requests"):
            await self._requests.close()
        steps, self._steps = getattr(self, "_steps", {}), {}
        await asyncio.gather(*(stages.close() for stages in steps.values()))
        return True
