"""Files on this machine: finding the model file in a folder, its digest, and keeping the
paths a model's settings name inside the folders the model may read."""
import hashlib
import os
from pathlib import Path
from typing import Sequence, Union

from ..errors import ConfigurationError, shorten
from .base import SourceError

WELL_KNOWN_FILES = ["model.onnx", "model.tflite", "model.xml"]
MODEL_SUFFIXES = {".onnx", ".tflite", ".xml"}  # .xml: OpenVINO IR, its .bin beside it
BLOCK = 1 << 20


def find_model_file(path: Path, where: str = "") -> Path:
    """A file as it is; in a folder, a well-known file name, else the folder's only model file
    (e.g. `resnet.onnx` next to its `resnet.onnx.data`)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise SourceError(f"model file '{path}' does not exist")
    for name in WELL_KNOWN_FILES:
        if (path / name).is_file():
            return path / name
    candidates = sorted(
        p.name for p in path.iterdir() if p.suffix.lower() in MODEL_SUFFIXES and p.is_file()
    )
    if len(candidates) == 1:
        return path / candidates[0]
    where = where or f"folder '{path}'"
    message = f"{where} holds none of {', '.join(WELL_KNOWN_FILES)}"
    if candidates:
        message += f" and several model files ({', '.join(candidates)}): name one in the uri"
    raise SourceError(message)


def file_sha256(path: Path) -> str:
    """Blocking: run it in a thread."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def confined(
    path: Union[str, Path], folder: Path, key: str, allowed: Sequence[Path] = (),
    follow_symlinks: bool = True,
) -> Path:
    """`path` (relative to the model's `folder`) when it lies inside `folder`, the repository
    holding it (its parent) or one of the `allowed` folders; else a ConfigurationError naming
    the settings `key`. A model folder's files can reach clients (labels in every answer), so
    a setting must not name `/etc/passwd`, nor a symlink out: symlinks are resolved first.
    Without `follow_symlinks` (the model file, which only the runtime reads, and which a
    cache or a shared store often links to) only the path as written is checked."""
    folder = Path(os.path.abspath(folder))
    # `..` first as written (as MLServer's to_absolute_path does), then the symlinks
    target = Path(os.path.normpath(folder / path))
    roots = [folder, folder.parent, *(Path(os.path.abspath(a)) for a in allowed)]
    if follow_symlinks:
        target = target.resolve()
        roots = [root.resolve() for root in roots]
    if any(target.is_relative_to(root) for root in roots):
        return target
    raise ConfigurationError(
        f"{key} {shorten(str(path))} resolves to {shorten(str(target))}, outside the model "
        f"folder '{folder}' and the repository holding it; move the file there, or allow "
        "its folder with MLSERVER_NPU_ALLOWED_PATHS"
    )
