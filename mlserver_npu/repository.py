"""The models that `mlserver-npu serve PATH...` serves, as an MLServer model repository.

Each PATH is a model file (settings from the file alone), a model folder (its
model-settings.json) or a repository (every model-settings.json under it, as `mlserver start`
finds them). MLServer's repository API (index, load by name) and the watcher see the same set.
"""
import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from mlserver.errors import ModelNotFound
from mlserver.repository import DEFAULT_MODEL_SETTINGS_FILENAME, ModelRepository
from mlserver.repository.load import load_model_settings
from mlserver.settings import ModelParameters, ModelSettings

from .settings import BACKEND_BY_SUFFIX

logger = logging.getLogger("mlserver.npu")

IMPLEMENTATION = "mlserver_npu.NPURuntime"
# The names a model-settings.json can give NPURuntime by.
RUNTIMES = (IMPLEMENTATION, "mlserver_npu.runtime.NPURuntime")


def is_npu_runtime(settings: ModelSettings) -> bool:
    return settings.implementation_ in RUNTIMES


class RepositoryError(ValueError):
    """A PATH that holds no model, or a model-settings.json that cannot be read."""


def file_model_name(path: Path) -> str:
    """The name of a model served from a bare file: its stem, or its folder's name for a
    file named `model.*` (as MLServer names a folder's model)."""
    folder = path.resolve().parent.name
    return folder if path.stem == "model" and folder else path.stem


def file_model_settings(
    path: Path, name: Optional[str] = None, extra: Optional[Dict[str, Any]] = None
) -> ModelSettings:
    """A model served from a bare file, named by `file_model_name` unless `name` is given."""
    if path.suffix.lower() not in BACKEND_BY_SUFFIX:
        raise RepositoryError(
            f"'{path}': not a model file this plugin knows "
            f"({', '.join(BACKEND_BY_SUFFIX)}), nor a folder"
        )
    return ModelSettings(
        name=name or file_model_name(path),
        implementation=IMPLEMENTATION,
        parameters=ModelParameters(uri=str(path.resolve()), extra=dict(extra or {})),
    )


def folder_model_settings(settings_file: Path) -> ModelSettings:
    """model-settings.json read as MLServer reads it (name defaults to the folder's)."""
    try:
        return load_model_settings(str(settings_file))
    except Exception as error:  # JSON or pydantic errors: say which file
        raise RepositoryError(f"'{settings_file}' cannot be read: {error}") from error


def settings_files(root: Path) -> List[Path]:
    """Every model-settings.json under `root`, skipping hidden folders (`.name`), where a
    folder can be copied before being renamed into place."""
    root = root.resolve()
    pattern = os.path.join(glob.escape(str(root)), "**", DEFAULT_MODEL_SETTINGS_FILENAME)
    matches = (Path(match) for match in glob.glob(pattern, recursive=True))
    return sorted(
        m for m in matches if not any(p.startswith(".") for p in m.relative_to(root).parts[:-1])
    )


@dataclass(frozen=True)
class Unit:
    """What one model comes from: a file, or a folder with its model-settings.json."""

    path: Path
    settings_file: Optional[Path] = None

    def read(self, name: Optional[str], extra: Dict[str, Any]) -> ModelSettings:
        if self.settings_file is None:
            return file_model_settings(self.path, name, extra)
        settings = folder_model_settings(self.settings_file)
        if extra and is_npu_runtime(settings):
            parameters = settings.parameters or ModelParameters()
            parameters.extra = {**(parameters.extra or {}), **extra}
            settings.parameters = parameters
        return settings


def units(paths: Sequence[Path]) -> List[Unit]:
    """The model sources under `paths`; a missing PATH is an error."""
    found: List[Unit] = []
    for path in paths:
        if path.is_file():
            found.append(Unit(path.resolve()))
        elif (path / DEFAULT_MODEL_SETTINGS_FILENAME).is_file():
            found.append(Unit(path.resolve(), path.resolve() / DEFAULT_MODEL_SETTINGS_FILENAME))
        elif path.is_dir():
            found.extend(Unit(f.parent, f) for f in settings_files(path))
        else:
            raise RepositoryError(f"'{path}' does not exist")
    return found


class PathsRepository(ModelRepository):
    """MLServer's `model_repository_implementation` for `serve`: the models under `paths`,
    with `extra` (from --device, --sessions) merged into each NPURuntime model's
    `parameters.extra`, and `name` naming a single model file."""

    def __init__(
        self,
        root: str = ".",
        paths: Sequence[str] = (),
        name: Optional[str] = None,
        extra: Optional[Dict[str, Any]] = None,
    ):
        self.paths = [Path(p) for p in paths or [root]]
        self.name = name
        self.extra = dict(extra or {})

    def read(self, unit: Unit) -> ModelSettings:
        return unit.read(self.name, self.extra)

    def units(self) -> List[Unit]:
        return units(self.paths)

    async def list(self) -> List[ModelSettings]:
        """The readable models; the others are logged, as MLServer's own repository does."""
        found = []
        for unit in self.units():
            try:
                found.append(self.read(unit))
            except RepositoryError:
                logger.exception("Model at '%s' skipped", unit.path)
        return found

    async def find(self, name: str) -> List[ModelSettings]:
        found = [s for s in await self.list() if s.name == name]
        if not found:
            raise ModelNotFound(name)
        return found
