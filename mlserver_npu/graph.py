"""The steps of a pipeline (`parameters.extra` of an `mlserver_npu.Pipeline` model) as a graph:
references between steps, checks that name the step at fault, combine steps, and a run that
starts every step as soon as its inputs are ready (independent steps run concurrently).

References are Seldon Core 2's: `inputs.<pipeline input>` and `<step>.outputs.<output>`.
"""
import asyncio
from typing import (
    Annotated, Any, Awaitable, Callable, Dict, List, Literal, Optional, Sequence, Set, Union,
)

import numpy as np
from pydantic import (
    BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
)

from .backends import TensorSpec
from .errors import ConfigurationError
from .processing.regions import RegionsSettings
from .references import Ref, Reference
from .settings import PostprocessSettings
from .settings import describe_validation_error
from .tensors import describe

STEP_NAME = r"^[A-Za-z0-9_-]+$"


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=STEP_NAME)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == "inputs":
            raise ValueError("'inputs' is reserved for the pipeline's inputs")
        return value


class ModelStep(_Step):
    """A model folder run inside the pipeline. `inputs` maps its model's inputs to
    references; a model input not listed takes the pipeline input of the same name. With
    `regions`, the model runs on regions cut from the request's images (all of them as one
    batch) and its outputs come back per image."""

    model: str = Field(description="model folder, relative to this model-settings.json")
    inputs: Dict[str, Ref] = Field(default_factory=dict)
    regions: Optional[RegionsSettings] = None


COMBINE = Literal["mean", "max", "concat"]


class CombineStep(_Step):
    """Step outputs combined elementwise (`mean`, `max`) or on the last axis (`concat`)."""

    combine: COMBINE
    inputs: List[Ref] = Field(min_length=2)


def _step_kind(value: Any) -> str:
    return "combine" if isinstance(value, dict) and "combine" in value else "model"


Step = Annotated[
    Union[Annotated[ModelStep, Tag("model")], Annotated[CombineStep, Tag("combine")]],
    Discriminator(_step_kind),
]


class PipelineSettings(BaseModel):
    """Everything under `parameters.extra` of a pipeline's model-settings.json."""

    model_config = ConfigDict(extra="forbid")

    steps: List[Step] = Field(min_length=1)
    outputs: Dict[str, Ref] = Field(min_length=1, description="pipeline output -> reference")
    postprocess: Optional[PostprocessSettings] = None  # type: ignore[valid-type]
    max_queue_size: Optional[int] = Field(
        None, ge=0, description="Requests the pipeline holds at once (0: no bound); past it a "
        "429; default MLSERVER_NPU_MAX_QUEUE_SIZE."
    )


def settings_error(error: ValidationError, extra: Any) -> str:
    """The pydantic errors of PipelineSettings as the user wrote the keys, led by the names of
    the steps at fault (pydantic puts the step kind in the path: it is left out)."""
    items, steps = [], []
    for item in error.errors():
        loc = list(item["loc"])
        if len(loc) > 2 and loc[0] == "steps" and isinstance(loc[1], int):
            del loc[2]  # the union's tag
            raw = extra.get("steps", [])[loc[1]] if isinstance(extra, dict) else None
            name = raw.get("name") if isinstance(raw, dict) else None
            steps.append(f"step '{name}'" if name else f"step {loc[1]}")
        items.append({**item, "loc": tuple(loc)})
    cleaned = ValidationError.from_exception_data(error.title, items)
    lead = ", ".join(dict.fromkeys(steps))
    described = describe_validation_error(cleaned, "parameters.extra", PipelineSettings, extra)
    return f"{lead}: {described}" if lead else described


def references(step: Union[ModelStep, CombineStep]) -> Dict[str, Reference]:
    """The step's references by what they feed: a model input name, a combine position, or
    a role of its regions (`regions.boxes`, ...)."""
    if isinstance(step, CombineStep):
        return {f"inputs[{index}]": ref for index, ref in enumerate(step.inputs)}
    if step.regions is not None:
        return {**step.inputs, **step.regions.references()}
    return dict(step.inputs)


def model_references(step: ModelStep) -> Dict[str, Reference]:
    """The references that feed the step's model inputs by name."""
    return dict(step.inputs)


def _fits(want: TensorSpec, got: TensorSpec) -> bool:
    """Same dtype, and the shapes agree wherever both are static."""
    return (
        np.dtype(want.dtype) == np.dtype(got.dtype)
        and len(want.shape) == len(got.shape)
        and all(a is None or b is None or a == b for a, b in zip(want.shape, got.shape))
    )


def _combined_spec(name: str, kind: str, specs: Sequence[TensorSpec]) -> TensorSpec:
    first = specs[0]
    if kind != "concat":
        for spec in specs[1:]:
            if not _fits(first, spec):
                raise ValueError(
                    f"{kind} needs tensors of one datatype and shape, got "
                    + ", ".join(describe(s) for s in specs)
                )
        shape = [
            next((dim for dim in dims if dim is not None), None)
            for dims in zip(*(spec.shape for spec in specs))
        ]
        return TensorSpec(name, first.dtype, shape)
    heads = [TensorSpec(s.name, s.dtype, list(s.shape[:-1])) for s in specs]
    if any(not s.shape for s in specs) or not all(_fits(heads[0], h) for h in heads[1:]):
        raise ValueError(
            "concat needs tensors of one datatype that agree on all but the last axis, got "
            + ", ".join(describe(s) for s in specs)
        )
    lasts = [s.shape[-1] for s in specs]
    last = None if None in lasts else sum(lasts)
    return TensorSpec(name, first.dtype, [*_combined_spec(name, "mean", heads).shape, last])


def combine(kind: str, arrays: Sequence[np.ndarray]) -> np.ndarray:
    if kind == "concat":
        return np.concatenate(arrays, axis=-1)
    if kind == "max":
        return np.maximum.reduce(arrays)
    return (np.sum(arrays, axis=0) / len(arrays)).astype(arrays[0].dtype)


def combined_name(step: CombineStep) -> str:
    """The output of a combine step keeps its inputs' name when they share one, else `output`."""
    names = {ref.name for ref in step.inputs}
    return names.pop() if len(names) == 1 else "output"


class Graph:
    """The steps in an order where every step comes after those it takes outputs from."""

    def __init__(self, config: PipelineSettings):
        self.config = config
        steps = {}
        for step in config.steps:
            if step.name in steps:
                raise ConfigurationError(f"step '{step.name}' is defined twice")
            steps[step.name] = step
        self.steps = steps
        for step in config.steps:
            for key, ref in references(step).items():
                self._check_known(f"step '{step.name}': input '{key}'", ref)
                if ref.step is None and isinstance(step, CombineStep):
                    raise ConfigurationError(
                        f"step '{step.name}': combine steps take step outputs, not '{ref}'"
                    )
            regions = step.regions if isinstance(step, ModelStep) else None
            if regions is not None:
                if regions.image.step is not None:
                    raise ConfigurationError(
                        f"step '{step.name}': regions.image is the pipeline's image input "
                        f"('inputs.<name>'), not '{regions.image}'"
                    )
                for key, ref in regions.references().items():
                    if ref.step is None:
                        raise ConfigurationError(
                            f"step '{step.name}': {key} is a step output "
                            f"('<step>.outputs.<name>'), not '{ref}'"
                        )
                if regions.input is not None and regions.input in step.inputs:
                    raise ConfigurationError(
                        f"step '{step.name}': input '{regions.input}' is fed by the regions: "
                        "leave it out of 'inputs'"
                    )
        for name, ref in config.outputs.items():
            self._check_known(f"output '{name}'", ref)
            if ref.step is None:
                raise ConfigurationError(
                    f"output '{name}': pipeline outputs are step outputs, not '{ref}'"
                )
        self.order = self._ordered()

    def _check_known(self, where: str, ref: Reference) -> None:
        if ref.step is not None and ref.step not in self.steps:
            raise ConfigurationError(
                f"{where} refers to '{ref}', but there is no step '{ref.step}'; the steps are: "
                + ", ".join(self.steps)
            )

    def _ordered(self) -> List[Union[ModelStep, CombineStep]]:
        order: List[Union[ModelStep, CombineStep]] = []
        state: Dict[str, str] = {}  # name -> "visiting" | "done"

        def visit(name: str, path: List[str]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                cycle = path[path.index(name):] + [name]
                raise ConfigurationError(
                    f"step '{name}': its inputs form a cycle: " + " -> ".join(cycle)
                )
            state[name] = "visiting"
            for ref in references(self.steps[name]).values():
                if ref.step is not None:
                    visit(ref.step, path + [name])
            state[name] = "done"
            order.append(self.steps[name])

        for name in self.steps:
            visit(name, [])
        return order

    def output_specs(
        self,
        model_inputs: Dict[str, Sequence[TensorSpec]],
        model_outputs: Dict[str, Sequence[TensorSpec]],
    ) -> Dict[str, Dict[str, TensorSpec]]:
        """Check every reference against the loaded models' specs (model step -> its model's
        inputs and outputs); return the outputs of every step, combine steps included."""
        outputs: Dict[str, Dict[str, TensorSpec]] = {}

        def resolve(where: str, ref: Reference) -> TensorSpec:
            specs = outputs[ref.step]
            if ref.name not in specs:
                raise ConfigurationError(
                    f"{where} refers to '{ref}', but step '{ref.step}' has no output "
                    f"'{ref.name}'; its outputs are: " + ", ".join(specs)
                )
            return specs[ref.name]

        for step in self.order:
            where = f"step '{step.name}'"
            if isinstance(step, CombineStep):
                specs = [resolve(f"{where}: input '{key}'", ref)
                         for key, ref in references(step).items()]
                name = combined_name(step)
                try:
                    outputs[step.name] = {name: _combined_spec(name, step.combine, specs)}
                except ValueError as error:
                    raise ConfigurationError(f"{where}: {error}") from None
                continue
            inputs = {spec.name: spec for spec in model_inputs[step.name]}
            if step.regions is not None:
                for key, ref in step.regions.references().items():
                    resolve(f"{where}: {key}", ref)
            for key, ref in model_references(step).items():
                if key not in inputs:
                    raise ConfigurationError(
                        f"{where}: 'inputs' maps '{key}', which is not an input of its model; "
                        "the model's inputs are: " + ", ".join(inputs)
                    )
                if ref.step is None:
                    continue
                got = resolve(f"{where}: input '{key}'", ref)
                if not _fits(inputs[key], got):
                    raise ConfigurationError(
                        f"{where}: input '{key}' takes {describe(inputs[key])}, but '{ref}' "
                        f"is {describe(got)}"
                    )
            outputs[step.name] = {spec.name: spec for spec in model_outputs[step.name]}
        for name, ref in self.config.outputs.items():
            resolve(f"output '{name}'", ref)
        return outputs

    def wanted(self) -> Dict[str, Set[str]]:
        """The outputs of each step that other steps or the pipeline's outputs take."""
        wanted: Dict[str, Set[str]] = {}
        refs = [ref for step in self.order for ref in references(step).values()]
        for ref in refs + list(self.config.outputs.values()):
            if ref.step is not None:
                wanted.setdefault(ref.step, set()).add(ref.name)
        return wanted

    def pipeline_inputs(
        self, step: ModelStep, model_inputs: Sequence[TensorSpec], cropped: Optional[str] = None
    ) -> Dict[str, str]:
        """Model input -> pipeline input, for the inputs of `step` that the request feeds
        (`cropped`: the input its regions feed)."""
        taken = model_references(step)
        fed = {}
        for spec in model_inputs:
            if spec.name == cropped:
                continue
            ref = taken.get(spec.name)
            if ref is None:
                fed[spec.name] = spec.name
            elif ref.step is None:
                fed[spec.name] = ref.name
        return fed

    async def run(
        self,
        run_model: Callable[[ModelStep, Dict[str, np.ndarray]], Awaitable[Dict[str, np.ndarray]]],
    ) -> Dict[str, np.ndarray]:
        """Every step as a task that waits for the steps it takes outputs from; the pipeline's
        outputs by name. `run_model(step, arrays)` runs a model step on the step outputs it
        takes (by model input name) and the request's tensors it feeds itself."""
        tasks: Dict[str, "asyncio.Future[Dict[str, np.ndarray]]"] = {}

        async def one(step: Union[ModelStep, CombineStep]) -> Dict[str, np.ndarray]:
            arrays = {}
            for key, ref in references(step).items():
                if ref.step is not None:
                    arrays[key] = (await tasks[ref.step])[ref.name]
            if isinstance(step, CombineStep):
                return {combined_name(step): combine(step.combine, list(arrays.values()))}
            return await run_model(step, arrays)

        for step in self.order:
            tasks[step.name] = asyncio.ensure_future(one(step))
        # Every step ends (a failure fails its dependents at once); in this order, the first
        # failure is the one at the root.
        results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return {
            name: tasks[ref.step].result()[ref.name] for name, ref in self.config.outputs.items()
        }
