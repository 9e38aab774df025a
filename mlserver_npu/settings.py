"""The `parameters.extra` contract of a model-settings.json, as a pydantic model.

MLServer drops unknown top-level keys silently; under `extra` we refuse them by name, so a
typo (`"session": 2`) fails the load instead of being ignored.
"""
import re
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Type, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Backend = Literal["onnxruntime", "tflite", "furiosa"]

BACKEND_BY_SUFFIX: Dict[str, Backend] = {".onnx": "onnxruntime", ".tflite": "tflite"}

# Device strings that only one backend understands pick that backend, so that moving a model
# folder to an NPU takes nothing but a new `device`.
BACKEND_BY_DEVICE = re.compile(r"^(?P<furiosa>warboy|npu[:\d])", re.IGNORECASE)


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
    preprocess: Optional[Union[str, List[Any]]] = None
    postprocess: Optional[Dict[str, Any]] = None

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
        """`backend` if given, else the one the device string names, else the file suffix's."""
        if self.backend:
            return self.backend
        for device in self.devices:
            match = BACKEND_BY_DEVICE.match(device or "")
            if match:
                return match.lastgroup  # type: ignore[return-value]
        return BACKEND_BY_SUFFIX.get(model_path.suffix.lower(), "onnxruntime")


def describe_validation_error(
    error: ValidationError, prefix: str, model: Optional[Type[BaseModel]] = None
) -> str:
    """One clause per problem, naming the key as the user wrote it (`parameters.extra.X`)."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in (prefix, *item["loc"]))
        if item["type"] == "extra_forbidden":
            top_level = model is not None and len(item["loc"]) == 1
            known = f" (known keys: {', '.join(model.model_fields)})" if top_level else ""
            problems.append(f"unknown key '{where}'{known}")
        else:
            problems.append(f"'{where}': {item['msg']}")
    return "; ".join(problems)
