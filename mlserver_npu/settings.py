"""The `parameters.extra` contract of a model-settings.json, as a pydantic model, and the
process-wide `MLSERVER_NPU_*` environment settings.

MLServer drops unknown top-level keys silently; under `extra` we refuse them by name, so a
typo (`"session": 2`) fails the load instead of being ignored.
"""
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Type

from pydantic import (
    BaseModel, ByteSize, ConfigDict, Field, PositiveInt, ValidationError, field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .batcher import BatchingSettings
from .processing.postprocess import error_location, settings_type
from .processing.preprocess import PreprocessOps

PostprocessSettings = settings_type()

Backend = Literal["onnxruntime", "tflite", "furiosa", "openvino"]

BACKEND_BY_SUFFIX: Dict[str, Backend] = {
    ".onnx": "onnxruntime",
    ".tflite": "tflite",
    ".xml": "openvino",  # OpenVINO IR, with its .bin next to it
}

# Device strings that only one backend understands pick that backend, so that moving a model
# folder to an NPU takes nothing but a new `device`.
BACKEND_BY_DEVICE = re.compile(
    r"^(?:(?P<furiosa>(?i:warboy|npu[:\d]))"
    # OpenVINO's device names, upper case as OpenVINO spells them (`cpu` stays onnxruntime's)
    r"|(?P<openvino>(?:NPU|GPU)(?:\.\d+)?$|(?:AUTO|HETERO|MULTI)(?::|$)))"
)
# OpenVINO's meta-devices take a comma-separated list: `AUTO:NPU,CPU` is one device.
META_DEVICE = re.compile(r"^(auto|hetero|multi|batch):", re.IGNORECASE)


class NPUSettings(BaseModel):
    """Everything under `parameters.extra` in model-settings.json."""

    model_config = ConfigDict(extra="forbid")

    backend: Optional[Backend] = Field(
        None, description="Runtime that opens the sessions; default from the file suffix."
    )
    device: Optional[str] = Field(
        None,
        description="Device spec; a comma-separated list opens sessions on each device.",
    )
    sessions: int = Field(1, ge=1, description="Sessions (replicas) per device.")
    options: Dict[str, Any] = Field(
        default_factory=dict, description="Backend options, validated by the backend."
    )
    batching: Optional[BatchingSettings] = Field(
        None, description="The plugin's dynamic batcher (off when absent)."
    )
    sha256: Optional[str] = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    max_image_pixels: Optional[int] = Field(
        None, ge=1, description="Largest image (width x height) this model decodes; default "
        "MLSERVER_NPU_MAX_IMAGE_PIXELS."
    )
    image_pixel_budget: Optional[int] = Field(
        None, ge=1, description="Pixels this model decodes at once over all requests; "
        "default MLSERVER_NPU_IMAGE_PIXEL_BUDGET."
    )
    max_queue_size: Optional[int] = Field(
        None, ge=0, description="Requests this model holds, queued and running (0: no bound); "
        "past it a 429; default MLSERVER_NPU_MAX_QUEUE_SIZE."
    )
    preprocess: Optional[PreprocessOps] = Field(
        None, description="Image preprocessing: a preset name or a list of ops."
    )
    postprocess: Optional[PostprocessSettings] = Field(  # type: ignore[valid-type]
        None, description="Postprocessing: one {\"type\": ...} object or a list of them."
    )
    warmup_shapes: Dict[str, List[PositiveInt]] = Field(
        default_factory=dict,
        description="Warm-up feed shapes of inputs with dynamic dimensions, by input name.",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _json_strings(cls, value: Any) -> Any:
        """Seldon Core 2 writes a Model's `parameters` into `extra` as strings. Numbers and
        booleans ("2", "true") pydantic converts; a string holding a JSON object or list
        (`"options": '{"intra_op_threads": 1}'`) is read as that object or list."""
        if not isinstance(value, str) or not value.lstrip().startswith(("{", "[")):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"a string that is not valid JSON ({error})") from None

    @field_validator("device")
    @classmethod
    def _no_empty_device(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not [d for d in value.split(",") if d.strip()]:
            raise ValueError("must name at least one device, e.g. 'cpu'")
        return value

    @property
    def devices(self) -> List[Optional[str]]:
        """The device list; `[None]` means the backend's default device."""
        if self.device is None:
            return [None]
        devices: List[Optional[str]] = []
        parts = [d.strip() for d in self.device.split(",") if d.strip()]
        for index, part in enumerate(parts):
            if META_DEVICE.match(part):  # the rest of the list belongs to it
                return devices + [",".join(parts[index:])]
            devices.append(part)
        return devices

    def max_batch_rows(self, adaptive: Optional[int]) -> Optional[int]:
        """The most rows one device run gets: the batcher's `max_batch_size`, else MLServer's
        adaptive batching's (`adaptive`, which counts requests of one row each at best)."""
        if self.batching is not None and self.batching.max_batch_size:
            return self.batching.max_batch_size
        return adaptive

    def backend_for(self, model_path: Path) -> Backend:
        """`backend` if given, else the one the device string names, else the file suffix's."""
        if self.backend:
            return self.backend
        for device in self.devices:
            match = BACKEND_BY_DEVICE.match(device or "")
            if match:
                return match.lastgroup  # type: ignore[return-value]
        return BACKEND_BY_SUFFIX.get(model_path.suffix.lower(), "onnxruntime")


def describe_validation_error(
    error: ValidationError, prefix: str, model: Optional[Type[BaseModel]] = None,
    raw: Any = None,
) -> str:
    """One clause per problem, naming the key as the user wrote it (`parameters.extra.X`);
    `raw`: the value validated (`parameters.extra`), to tell one postprocess from a list."""
    problems = []
    for item in error.errors():
        loc = item["loc"]
        if loc and loc[0] == "postprocess":
            loc = error_location(loc, raw.get("postprocess") if isinstance(raw, dict) else None)
            if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "type")
        where = ".".join(str(part) for part in (prefix, *loc))
        if item["type"] == "extra_forbidden":
            top_level = model is not None and len(item["loc"]) == 1
            known = f" (known keys: {', '.join(model.model_fields)})" if top_level else ""
            problems.append(f"unknown key '{where}'{known}")
        elif item["type"] == "value_error":  # our own validators: no "Value error, " prefix
            problems.append(f"'{where}': {item['ctx']['error']}")
        else:
            problems.append(f"'{where}': {item['msg']}")
    return "; ".join(problems)


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlserver-npu"


class NPUEnvironment(BaseSettings):
    """Server-wide settings from `MLSERVER_NPU_*` environment variables, read at each load
    (so one server process shares one cache between its models)."""

    model_config = SettingsConfigDict(env_prefix="MLSERVER_NPU_", extra="ignore")

    # A 48-megapixel camera's full-size photo (8000x6000) fits; a detector sees 640x640 of it.
    # Pillow's own 89.5 M is a quarter of a gigabyte per RGB image.
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="largest image (width x height) a model decodes"
    )
    image_pixel_budget: int = Field(
        100_000_000, ge=1, description="pixels one model decodes at once, over all requests"
    )
    image_budget_wait: float = Field(
        10.0, ge=0, description="seconds a request waits for the pixel budget before a 503"
    )
    max_queue_size: int = Field(
        128, ge=0, description="requests one model holds (queued and running); 0: unbounded"
    )
    allowed_paths: str = Field(
        "", description="folders outside the model folders that settings may name "
        f"({os.pathsep}-separated)"
    )

    cache_dir: Path = Field(default_factory=_default_cache_dir)
    download_timeout: float = Field(
        60.0, gt=0, description="seconds to connect, or without a byte received, before a retry"
    )
    download_retries: int = Field(3, ge=0, description="retries after a transient failure")
    download_backoff: float = Field(
        1.0, ge=0, description="seconds before the first retry, doubled for each next one"
    )
    max_download_size: ByteSize = Field(
        ByteSize(16 * 2**30), gt=0, description="per download and per unpacked archive"
    )
    progress_interval: float = Field(10.0, gt=0, description="seconds between progress logs")
    zero_copy: bool = Field(True, description="gRPC raw tensors as numpy views (wire.py)")
    rest_boundary: bool = Field(True, description="the plugin's REST layers (rest.py)")
    max_request_bytes: ByteSize = Field(
        ByteSize(64 * 2**20), gt=0, description="largest REST request body, after decompression"
    )
    keep_going: bool = Field(
        False, description="serve on when a start-up model fails (serve, start: --keep-going)"
    )
    grpc_errors: bool = Field(
        True, description="one log line per gRPC client error, bounded details (grpc_errors.py)"
    )

    @property
    def allowed_folders(self) -> List[Path]:
        return [Path(part) for part in self.allowed_paths.split(os.pathsep) if part.strip()]

    @classmethod
    def from_env(cls) -> "NPUEnvironment":
        """Like `NPUEnvironment()`, but a bad value is a ValueError naming the variable."""
        try:
            return cls()
        except ValidationError as error:
            problems = [
                f"{cls.model_config['env_prefix']}{str(item['loc'][0]).upper()}: {item['msg']}"
                for item in error.errors()
            ]
            raise ValueError("; ".join(problems)) from None
