"""`parameters.uri` -> a local model file: local paths and file://, http(s):// and s3:// with
a verified download cache. `resolve_model` is the only entry point the runtime needs."""
import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Optional

from mlserver.settings import ModelSettings
from mlserver.utils import to_absolute_path

from ..settings import NPUEnvironment
from .base import DigestMismatch, ModelSource, SourceError
from .local import confined, file_sha256, find_model_file
from .remote import SCHEMES, fetch

__all__ = ["ModelSource", "SourceError", "model_folder", "resolve_model"]


def model_folder(settings: ModelSettings) -> Path:
    """The folder of the model's model-settings.json (the working directory without one),
    against which its relative paths resolve."""
    return Path(to_absolute_path(settings, ".")).absolute()


@asynccontextmanager
async def resolve_model(
    settings: ModelSettings, sha256: Optional[str] = None, sources: Optional[NPUEnvironment] = None
) -> AsyncIterator[ModelSource]:
    """`async with resolve_model(...) as source`: the model file `parameters.uri` names,
    checked against the `sha256` pin if given. Load the model inside the block: if the block
    raises, what was downloaded for it leaves the cache, which is then as it was before.

    Without a `uri`, the folder of model-settings.json is searched; relative paths resolve
    against it. `sources` defaults to the MLSERVER_NPU_* environment.
    """
    uri = (settings.parameters.uri if settings.parameters else None) or "."
    pin = sha256.lower() if sha256 else None
    if "://" not in uri or uri.startswith("file://"):
        yield await _local(settings, uri.removeprefix("file://"), pin)
        return
    scheme = uri.partition("://")[0].lower()
    if scheme not in SCHEMES:
        raise SourceError(
            f"unsupported URI scheme '{scheme}://' (supported: local paths, file://, "
            + ", ".join(f"{s}://" for s in SCHEMES)
            + ")"
        )
    try:
        sources = sources or NPUEnvironment.from_env()
    except ValueError as error:
        raise SourceError(str(error)) from None
    async with fetch(uri, pin, sources) as source:
        yield source


async def _local(settings: ModelSettings, uri: str, pin: Optional[str]) -> ModelSource:
    if not Path(uri).is_absolute():  # an absolute uri is the operator's own choice
        confined(uri, model_folder(settings), "parameters.uri",
                 NPUEnvironment.from_env().allowed_folders, follow_symlinks=False)
    path = find_model_file(Path(to_absolute_path(settings, uri)))
    digest = await asyncio.to_thread(file_sha256, path)
    if pin and digest != pin:
        raise DigestMismatch(f"'{path}'", pin, digest)
    return ModelSource(path, digest, "local")
