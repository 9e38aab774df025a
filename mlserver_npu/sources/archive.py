"""Archives (.tar.gz, .zip, ...) that carry a model with its side files (`model.onnx.data`),
unpacked safely: members that would land outside the folder, links and devices are refused,
and so is an archive that unpacks to more than the size limit."""
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional, Tuple

from .base import SourceError
from .transfer import human_size

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar")
ZIP_SUFFIXES = (".zip",)
_S_IFMT, _S_IFLNK = 0o170000, 0o120000


def archive_kind(name: str) -> Optional[str]:
    """"tar", "zip" or None, from a file or URI path name."""
    name = name.lower()
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    return None


def _check_name(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise SourceError(f"archive member '{name}' would be written outside its folder")


def _check_sizes(members: Iterable[Tuple[str, int]], limit: int) -> None:
    total = 0
    for name, size in members:
        _check_name(name)
        total += size
        if total > limit:
            raise SourceError(
                f"the archive unpacks to more than MLSERVER_NPU_MAX_DOWNLOAD_SIZE "
                f"({human_size(limit)})"
            )


def _unpack_tar(archive: Path, destination: Path, limit: int) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            if not (member.isfile() or member.isdir()):
                raise SourceError(
                    f"archive member '{member.name}' is a link or a device; only files and "
                    "folders are unpacked"
                )
        _check_sizes(((m.name, m.size) for m in members), limit)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: belt and braces
            tar.extractall(destination, members=members, filter="data")
        else:
            tar.extractall(destination, members=members)


def _unpack_zip(archive: Path, destination: Path, limit: int) -> None:
    with zipfile.ZipFile(archive) as zip_file:
        infos = zip_file.infolist()
        for info in infos:
            if (info.external_attr >> 16) & _S_IFMT == _S_IFLNK:
                raise SourceError(f"archive member '{info.filename}' is a link; refused")
        _check_sizes(((i.filename, i.file_size) for i in infos), limit)
        zip_file.extractall(destination)


def unpack(archive: Path, kind: str, destination: Path, limit: int) -> Path:
    """Blocking: run it in a thread. Returns the content's root: the destination, or the one
    folder the archive holds (as `tar czf m.tar.gz m/` makes)."""
    destination.mkdir()
    try:
        if kind == "zip":
            _unpack_zip(archive, destination, limit)
        else:
            _unpack_tar(archive, destination, limit)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise SourceError(f"cannot unpack the {kind} archive: {error}") from None
    entries = list(destination.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return destination
