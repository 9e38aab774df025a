"""`parameters.uri` -> a local model file."""
from pathlib import Path

from mlserver.settings import ModelSettings
from mlserver.utils import to_absolute_path

WELL_KNOWN_FILES = ["model.onnx", "model.tflite"]


class SourceError(Exception):
    """The URI does not lead to a model file; the message says where we looked."""


def resolve_model_path(settings: ModelSettings) -> Path:
    """A file, or a folder holding a well-known model file; relative to model-settings.json.

    Without a `uri`, the folder of model-settings.json is searched.
    """
    uri = (settings.parameters.uri if settings.parameters else None) or "."
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise SourceError(f"unsupported URI scheme in '{uri}' (supported: local paths, file://)")
    path = Path(to_absolute_path(settings, uri))
    if path.is_file():
        return path
    if path.is_dir():
        for name in WELL_KNOWN_FILES:
            if (path / name).is_file():
                return path / name
        raise SourceError(f"folder '{path}' holds none of {', '.join(WELL_KNOWN_FILES)}")
    raise SourceError(f"model file '{path}' does not exist")
