"""MLServer's single-model environment mode (`MLSERVER_MODEL_NAME/IMPLEMENTATION/URI/EXTRA`,
no model-settings.json: how KServe starts a runtime), made to behave as a model-settings.json
in the model's folder would.

MLServer resolves relative paths of such a model against its working directory; next to a
model-settings.json they resolve against that file's folder. Anchoring the settings to the
folder of `MLSERVER_MODEL_URI` makes `"labels": "labels.txt"` mean the same in both modes.
"""
import os
from pathlib import Path

from mlserver.settings import ModelSettings

from .errors import ModelLoadError

SETTINGS_FILENAME = "model-settings.json"


def anchor_to_model_folder(settings: ModelSettings) -> None:
    """Give settings built from the environment the source a model-settings.json in the
    folder of their local `uri` would have; settings read from a file are left alone."""
    if settings._source is not None:
        return
    if not settings.name:
        raise ModelLoadError(
            "", "no model name: set MLSERVER_MODEL_NAME (KServe sets it to the InferenceService "
            "name), or give the model a model-settings.json"
        )
    uri = settings.parameters.uri if settings.parameters else None
    if not uri or ("://" in uri and not uri.startswith("file://")):
        return
    path = Path(uri.removeprefix("file://")).absolute()
    folder = path if path.is_dir() else path.parent
    settings.parameters.uri = str(path)  # type: ignore[union-attr]
    settings._source = os.path.join(folder, SETTINGS_FILENAME)
