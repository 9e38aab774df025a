"""The `parameters.extra` contract of a model-settings.json, as a pydantic model.

MLServer drops unknown top-level keys silently; under `extra` we refuse them by name, so a
typo (`"session": 2`) fails the load instead of being ignored.
"""
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .processing.classification import ClassificationSettings
from .processing.preprocess import PreprocessOps

Backend = Literal["onnxruntime", "tflite", "furiosa"]

BACKEND_BY_SUFFIX: Dict[str, Backend] = {".onnx": "onnxruntime", ".tflite": "tflite"}


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
    sha256: Optional[str] = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    preprocess: Optional[PreprocessOps] = Field(
        None, description="Image preprocessing: a preset name or a list of ops."
    )
    postprocess: Optional[ClassificationSettings] = None

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
        return [d.strip() for d in self.device.split(",") if d.strip()]

    def backend_for(self, model_path: Path) -> Backend:
        if self.backend:
            return self.backend
        return BACKEND_BY_SUFFIX.get(model_path.suffix.lower(), "onnxruntime")


class NPUEnvironment(BaseSettings):
    """Server-wide settings from `MLSERVER_NPU_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="MLSERVER_NPU_", extra="ignore")

    # Pillow's own default: decoding more pixels than this is refused (decompression bombs).
    max_image_pixels: int = Field(89_478_485, ge=1)


def describe_validation_error(error: ValidationError, prefix: str) -> str:
    """One line per problem, naming the key as the user wrote it (`parameters.extra.X`)."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in (prefix, *item["loc"]))
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{where}'")
        elif item["type"] == "value_error":  # our own validators: no "Value error, " prefix
            problems.append(f"'{where}': {item['ctx']['error']}")
        else:
            problems.append(f"'{where}': {item['msg']}")
    return "; ".join(problems)
