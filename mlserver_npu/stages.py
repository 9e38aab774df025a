"""One model folder's stages, built from its model-settings: the input decoder (codecs and
preprocessing), the session pool on the devices, and the output encoder (postprocessing and
codecs). NPURuntime serves one; a Pipeline runs several in one request."""
import ast
import asyncio
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from mlserver.errors import InferenceError, MLServerError
from mlserver.settings import ModelSettings
from mlserver.types import Parameters, RequestInput, RequestOutput, ResponseOutput
from pydantic import ValidationError

from .backends import BackendError, InvalidInput, get_backend, model_metadata, session_details
from .batcher import Batcher
from .codecs.budget import PixelBudget
from .drain import Drain
from .errors import ConfigurationError, ModelLoadError, ServerFault, bounded
from .metrics import stage
from .pool import SessionPool
from .processing.inputs import Decoded, InputDecoder
from .processing.outputs import OutputEncoder
from .processing.postprocess import BuildContext, RequestContext, build_all
from .settings import NPUEnvironment, NPUSettings, describe_validation_error
from .sources import ModelSource, SourceError, model_folder, resolve_model
from .sources.local import confined

logger = logging.getLogger("mlserver.npu")


def parse_extra(settings: ModelSettings, model: type, name: str):
    """`parameters.extra` as the pydantic `model`; a mistake is a load error naming the key."""
    extra = (settings.parameters.extra if settings.parameters else None) or {}
    try:
        return model.model_validate(extra)
    except ValidationError as error:
        raise ModelLoadError(
            name, describe_validation_error(error, "parameters.extra", model, extra)
        ) from None


def metadata_size(metadata: Mapping[str, str]) -> Optional[Tuple[int, int]]:
    """(height, width) from a model's own metadata `imgsz` (Ultralytics: "[640, 640]" or
    "640"), when it has one."""
    try:
        value = ast.literal_eval(metadata.get("imgsz", ""))
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, int):
        value = [value, value]
    if (
        isinstance(value, (list, tuple)) and len(value) == 2
        and all(isinstance(v, int) and v > 0 for v in value)
    ):
        return value[0], value[1]
    return None


def request_context(
    decoded: Decoded, image_input: Optional[str], as_arrays: bool = False
) -> RequestContext:
    """The RequestContext of one request whose images fed `image_input`."""
    return RequestContext(
        geometry=decoded.geometry.get(image_input) if image_input else None,
        images=decoded.images.get(image_input) if image_input else None,
        tiles=decoded.tiles,
        as_arrays=as_arrays,
    )


def parallel_workers() -> int:
    """MLServer's `parallel_workers` when this process is one of its inference workers (the
    model is then loaded once per worker), else 0."""
    import multiprocessing

    from mlserver.parallel.worker import Worker

    process = multiprocessing.current_process()
    return process._settings.parallel_workers if isinstance(process, Worker) else 0


def exclusive_devices(backend: str, devices: Sequence[Optional[str]]) -> List[str]:
    """The devices of `devices` that one process at a time can hold: FuriosaAI NPUs, QNN's
    HTP, OpenVINO's NPU."""
    held = []
    for device in devices:
        name = (device or "").strip()
        if (backend == "furiosa"
                or (backend == "onnxruntime" and name.lower().startswith("qnn"))
                or (backend == "openvino" and "NPU" in name.upper())):
            held.append(name or "default")
    return held


def check_not_shared(name: str, backend: str, devices: Sequence[Optional[str]]) -> None:
    """A load error when several MLServer worker processes would each open a device that
    cannot be shared."""
    workers = parallel_workers()
    held = exclusive_devices(backend, devices) if workers > 1 else []
    if held:
        raise ModelLoadError(
            name,
            f"parallel_workers is {workers}: each worker process would open device "
            f"'{held[0]}' ({backend}), which one process at a time can hold; set "
            "parallel_workers to 0 (settings.json, or MLSERVER_PARALLEL_WORKERS=0 where "
            "settings.json does not set it) and use `sessions` and `batching` for concurrency",
        )


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


def stack_rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate on axis 0; the other axes padded with zeros to the largest (the outputs of
    runs of different widths, e.g. a recognizer's timesteps)."""
    if len(arrays) == 1:
        return arrays[0]
    shape = np.max([a.shape for a in arrays], axis=0)
    if all(a.shape[1:] == tuple(shape[1:]) for a in arrays):
        return np.concatenate(arrays)
    padded = [
        np.pad(a, [(0, 0)] + [(0, int(m) - d) for m, d in zip(shape[1:], a.shape[1:])])
        for a in arrays
    ]
    return np.concatenate(padded)


def ragged_rows(
    decoder: InputDecoder, decoded: Decoded, feeds: Mapping[str, np.ndarray]
) -> Optional[List[Dict[str, np.ndarray]]]:
    """One feed per row when a request's images have different sizes at a model of dynamic
    height and width (the preprocessing padded them into one batch), each cut back to its own
    size; None when the rows share one size."""
    for name, geometries in decoded.geometry.items():
        if len({g.input_size for g in geometries}) < 2 or len(geometries) != len(feeds[name]):
            continue
        preprocessor = decoder.preprocessor(name)
        axes = (2, 3) if getattr(preprocessor, "layout", "NCHW") == "NCHW" else (1, 2)
        rows = []
        for index, geometry in enumerate(geometries):
            row = {key: array[index : index + 1] for key, array in feeds.items()}
            cut = [slice(None)] * row[name].ndim
            for axis, size in zip(axes, geometry.input_size):
                cut[axis] = slice(0, size)
            row[name] = np.ascontiguousarray(row[name][tuple(cut)])
            rows.append(row)
        return rows
    return None


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
        self.model_metadata: Dict[str, str] = {}
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
                    stages.model_metadata = model_metadata(stages.pool.sessions, source.path)
                    stages.inputs = stages.input_decoder([spec.name for spec in stages.pool.inputs])
                    await stages._warm_up()
                    stages.outputs = stages._output_encoder()
                    if config.batching is not None:
                        stages.batcher = Batcher(stages.pool, config.batching, settings)
                except BaseException:
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

    def build_context(self, image_input: Optional[str] = None) -> BuildContext:
        """What this model's postprocessing may use at load (see BuildContext)."""
        image_input = image_input or self.inputs.image_input
        size = self.inputs.input_size(image_input) if image_input else None
        return BuildContext(
            resolve=path_resolver(self.settings),
            metadata=self.model_metadata,
            input_size=size or metadata_size(self.model_metadata),
            image_input=image_input,
            tiled=self.inputs.tiled,
        )

    def _output_encoder(self) -> OutputEncoder:
        postprocesses = build_all(self.config.postprocess, self.pool.outputs, self.build_context())
        return OutputEncoder(
            self.pool.outputs, postprocesses, self.settings.outputs, self.inputs.tiled
        )

    async def _warm_up(self) -> None:
        """Warm up with feeds the model accepts: a dynamic height and width takes the size
        the preprocessing gives, else the model metadata's `imgsz`; `warmup_shapes` wins."""
        shapes: Dict[str, List[int]] = {}
        unsure = []
        for spec in self.pool.sessions[0].inputs:
            if None not in spec.shape[1:]:
                continue
            shape = self.config.warmup_shapes.get(spec.name) or self.inputs.warm_up_shape(
                spec.name, metadata_size(self.model_metadata)
            )
            if shape is None:
                unsure.append(spec)
            else:
                shapes[spec.name] = list(shape)
        try:
            await self.pool.warm_up(shapes)
        except Exception as error:
            # The runtime refusing the warm-up feeds (InvalidInput) is what the hint is for.
            if isinstance(error, (BackendError, ModelLoadError)) and not isinstance(
                error, InvalidInput
            ):
                raise
            fed = ", ".join(
                f"'{spec.name}' {self.pool.warm_up_shape(spec, shapes)}"
                for spec in self.pool.sessions[0].inputs
            )
            hint = ""
            if unsure:
                example = {
                    s.name: [640 if d is None and i else d or 1 for i, d in enumerate(s.shape)]
                    for s in unsure
                }
                hint = (
                    "; the dynamic dimensions of "
                    + ", ".join(f"'{s.name}' {s.v2_shape}" for s in unsure)
                    + " were fed as 1: set parameters.extra.warmup_shapes to shapes the model "
                    f"accepts, e.g. {example}, or a preprocess that fixes the image size"
                )
            raise BackendError(
                f"warm-up inference failed (fed {fed}): {error}{hint}"
            ) from error

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
        check_not_shared(settings.name, backend_name, config.devices)
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
        if failures:
            if pool:
                await pool.close()
            raise failures[0]
        return cls(settings, config, pool, backend_name, source.path, source.sha256)

    async def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        try:
            with self._requests.running(), stage("device"):
                return await (self.batcher or self.pool).run(feeds)
        except InvalidInput as error:
            raise InferenceError(bounded(f"the model rejected the inputs: {error}")) from error
        except MLServerError:
            raise
        except Exception as error:  # the device or the runtime failed: the server's fault
            logger.exception("Model '%s': the device run failed", self.settings.name)
            raise ServerFault(f"the device run of model '{self.settings.name}' failed",
                              error) from error

    async def run_decoded(
        self,
        decoder: InputDecoder,
        decoded: Decoded,
        extra: Optional[Mapping[str, np.ndarray]] = None,
    ) -> Dict[str, np.ndarray]:
        """Run a request's decoded feeds (and `extra` ones). Images of different sizes at a
        model of dynamic height and width run one by one at their own size, concurrently (the
        padding that made them one batch would change what the model sees); their outputs
        are padded with zeros to one tensor."""
        feeds = {**decoded.feeds, **(extra or {})}
        rows = ragged_rows(decoder, decoded, feeds)
        if rows is None:
            return await self.run(feeds)
        runs = await asyncio.gather(*(self.run(row) for row in rows))
        return {name: stack_rows([run[name] for run in runs]) for name in runs[0]}

    async def infer(
        self,
        request_inputs: Sequence[RequestInput],
        request_outputs: Optional[Sequence[RequestOutput]],
        as_arrays: bool = False,
        parameters: Optional[Parameters] = None,
    ) -> List[ResponseOutput]:
        """`as_arrays`: numeric outputs stay arrays (see tensors.encode_output); `parameters`:
        the request's (per-request postprocess overrides)."""
        with self._requests.running():
            with stage("decode"):
                plan = self.outputs.plan(request_outputs, parameters)
                decoded = await self.inputs.decode(
                    request_inputs, keep_images=any(item.image for item in plan.items)
                )
            results = await self.run_decoded(self.inputs, decoded)
            with stage("encode"):
                return self.outputs.encode(plan, results, self.request_context(decoded, as_arrays))

    def request_context(self, decoded: Decoded, as_arrays: bool = False) -> RequestContext:
        """What the postprocessing of one request gets to know of its images."""
        return request_context(decoded, self.inputs.image_input, as_arrays)

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
