"""Pipeline: an MLServer model whose `parameters.extra.steps` run other model folders in one
request, passing numpy arrays between them (graph.py). Each model step is a model folder's
stages (stages.py) with its own backend, devices, sessions and preprocessing; the pipeline
decodes the request tensors a step takes with that step's decoder, and encodes its outputs
with an encoder of its own (its optional `postprocess`)."""
import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from mlserver.errors import InferenceError
from mlserver.repository.load import load_model_settings
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataTensor,
    Parameters,
    ResponseOutput,
)
from mlserver.utils import to_absolute_path
from PIL import Image
from pydantic import ValidationError

from . import wire
from .backends import TensorSpec
from .codecs.image import CONTENT_TYPE as IMAGE, decode_images
from .drain import Drain
from .errors import ConfigurationError, ModelLoadError
from .fanout import FanOut, post_arrays, post_specs
from .graph import Graph, ModelStep, PipelineSettings, settings_error
from .metrics import StepMetrics, stage
from .processing.inputs import Decoded, InputDecoder
from .processing.outputs import OutputEncoder
from .processing.postprocess import BuildContext, build_all
from .processing.regions import draw_output
from .repository import is_npu_runtime
from .served import ServedModel
from .settings import NPUEnvironment
from .sources import model_folder
from .sources.local import confined
from .stages import ModelStages, metadata_size, path_resolver, request_context
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
        confined(step.model, model_folder(self.settings), f"step '{step.name}': model",
                 NPUEnvironment.from_env().allowed_folders, follow_symlinks=False)
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
            self._step_outputs(),
        )
        self._fed: Dict[str, Dict[str, str]] = {}
        self._decoders: Dict[str, InputDecoder] = {}
        inputs: Dict[str, MetadataTensor] = {}
        taken_by: Dict[str, str] = {}

        def declare(step: str, name: str, tensor: MetadataTensor) -> None:
            tensor = tensor.model_copy(update={"name": name})
            if name in inputs and describe(inputs[name]) != describe(tensor):
                raise ConfigurationError(
                    f"step '{step}': pipeline input '{name}' is {describe(tensor)} "
                    f"here, but {describe(inputs[name])} in step '{taken_by[name]}'"
                )
            inputs.setdefault(name, tensor)
            taken_by.setdefault(name, step)

        for step in steps:
            stages = self._steps[step.name]
            fan = self._fanouts.get(step.name)
            fed = self._graph.pipeline_inputs(step, stages.pool.inputs, fan and fan.input)
            decoder = stages.input_decoder(list(fed))
            self._fed[step.name], self._decoders[step.name] = fed, decoder
            for tensor in decoder.metadata():
                declare(step.name, fed[tensor.name], tensor)
        for step in steps:
            if step.name in self._fanouts:
                image = MetadataTensor(name="image", datatype="BYTES", shape=[-1],
                                       parameters=Parameters(content_type=IMAGE))
                declare(step.name, step.regions.image.name, image)
        self._inputs = inputs
        self._wanted = self._graph.wanted()
        self._drawable = self._drawable_outputs(config)

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
            resolve=path_resolver(self.settings),
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

    def _step_outputs(self) -> Dict[str, List[TensorSpec]]:
        """Every model step's outputs: its model's and those its postprocesses add, or, for a
        step over regions, its outputs per image (FanOut)."""
        outputs: Dict[str, List[TensorSpec]] = {}
        self._fanouts: Dict[str, FanOut] = {}
        for step in self._graph.order:
            if not isinstance(step, ModelStep):
                continue
            stages = self._steps[step.name]
            if step.regions is None:
                model = list(stages.pool.outputs)
                outputs[step.name] = model + post_specs(stages.outputs.postprocesses, model)
                continue
            ref = step.regions.boxes
            where = f"step '{step.name}': regions.boxes"
            if ref.step not in outputs:
                raise ConfigurationError(f"{where} '{ref}' is not the output of a model step")
            found = {spec.name: spec for spec in outputs[ref.step]}
            if ref.name not in found:
                raise ConfigurationError(
                    f"{where} refers to '{ref}', but step '{ref.step}' has no output "
                    f"'{ref.name}'; its outputs are: " + ", ".join(found)
                )
            try:
                fan = FanOut(step.regions, stages, found[ref.name])
            except ConfigurationError as error:
                raise ConfigurationError(f"step '{step.name}': {error}") from None
            self._fanouts[step.name] = fan
            outputs[step.name] = fan.specs()
        return outputs

    def _drawable_outputs(
        self, config: PipelineSettings
    ) -> Dict[str, Tuple[str, str, Optional[str]]]:
        """Pipeline outputs that are regions, and so can be drawn on the request's images
        (`content_type: image`): name -> (step, its count output, its text output)."""
        drawable = {}
        for name, ref in config.outputs.items():
            fan = self._fanouts.get(ref.step)
            if fan is not None and ref.name == fan.settings.names[0]:
                join = fan.settings.join
                drawable[name] = (ref.step, fan.settings.names[1], join.output if join else None)
        return drawable

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with self.admitted(), self._requests.running(), self._metrics.serving():
            return await self._predict(payload)

    async def _predict(self, payload: InferenceRequest) -> InferenceResponse:
        request = match_inputs(payload.inputs, list(self._inputs.values()), "pipeline")
        with stage("decode"):
            plan = self._encoder.plan(payload.outputs, payload.parameters)
        tiles: List[List[int]] = []
        images: Dict[str, Decoded] = {}
        originals: Dict[str, List[Image.Image]] = {}  # pipeline image input -> decoded images
        step_results: Dict[str, Dict[str, np.ndarray]] = {}

        async def run_model(
            step: ModelStep, arrays: Dict[str, np.ndarray]
        ) -> Dict[str, np.ndarray]:
            start = time.perf_counter()
            fed = self._fed[step.name]
            taken = [
                request[name].model_copy(update={"name": model_input})
                for model_input, name in fed.items()
            ]
            decoder = self._decoders[step.name]
            stages = self._steps[step.name]
            wanted = self._wanted.get(step.name, set())
            try:
                with stage("decode"):
                    decoded = await decoder.decode(taken)
                for model_input, decoded_images in decoded.images.items():
                    originals.setdefault(fed[model_input], decoded_images)
                fan = self._fanouts.get(step.name)
                if fan is not None:
                    source = step.regions.image.name
                    if source not in originals:  # an input only the regions take
                        with stage("decode"):
                            originals[source] = await asyncio.to_thread(
                                decode_images, request[source], fan.max_image_pixels
                            )
                    results = await fan.run(
                        originals[source], arrays, wanted, payload.parameters
                    )
                else:
                    results = await stages.run_decoded(decoder, decoded, arrays)
                    context = request_context(decoded, decoder.image_input)
                    with stage("postprocess"):
                        results.update(post_arrays(
                            stages.outputs.postprocesses, results, context, wanted,
                            payload.parameters,
                        ))
            except InferenceError as error:
                raise InferenceError(f"step '{step.name}': {error}") from None
            if decoded.tiles is not None:
                tiles.append(decoded.tiles)
            if step.name == self._image_step:
                images["decoded"] = decoded
            step_results[step.name] = results
            self._step_metrics.step(step.name, time.perf_counter() - start)
            return results

        results = await self._graph.run(run_model)
        with stage("encode"):
            decoded = images.get("decoded") or Decoded({})
            image_input = self._decoders[self._image_step].image_input if self._image_step else None
            context = request_context(decoded, image_input, wire.carries_arrays(payload))
            context.tiles = tiles[0] if tiles else None
            names = [item.name for item in plan.items]
            drawn = {
                item.name: self._draw(item.name, step_results, originals)
                for item in plan.items if item.image and item.name in self._drawable
            }
            plan.items = [item for item in plan.items if item.name not in drawn]
            encoded = {o.name: o for o in self._encoder.encode(plan, results, context)}
            outputs = [drawn.get(name) or encoded[name] for name in names]
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)

    def _draw(
        self, name: str, results: Dict[str, Dict[str, np.ndarray]],
        originals: Dict[str, List[Image.Image]],
    ) -> ResponseOutput:
        step, count, text = self._drawable[name]
        fan = self._fanouts[step]
        found = results[step]
        return draw_output(
            name, originals.get(fan.settings.image.name), found[fan.settings.names[0]],
            found[count], found.get(text) if text else None,
        )

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

    def describe_postprocess(self) -> List[Dict[str, Any]]:
        return [post.describe() for post in self._encoder.postprocesses]

    def configured_queue_size(self) -> Optional[int]:
        return self._graph.config.max_queue_size

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
