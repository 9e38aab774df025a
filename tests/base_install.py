"""A server process that sees only what `pip install -e .` installs: the packages that only the
extras bring (setup.py's extras_require, minus everything install_requires pulls in) cannot be
imported in it. Installing into a fresh virtualenv takes minutes; hiding them takes none."""
import runpy
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, List, Set

import setuptools
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from server import REPO

SITECUSTOMIZE = '''\
import sys

HIDDEN = {hidden!r}


class _Hidden:
    """Modules of packages only the extras install: as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _Hidden())
'''


def _setup_arguments() -> dict:
    captured: dict = {}
    real = setuptools.setup
    setuptools.setup = lambda **arguments: captured.update(arguments)
    try:
        runpy.run_path(str(REPO / "setup.py"))
    finally:
        setuptools.setup = real
    return captured


def _closure(requirements: Iterable[str]) -> Set[str]:
    """The distributions these requirements install, transitively (as installed here)."""
    seen: Set[str] = set()
    stack = [Requirement(r) for r in requirements]
    while stack:
        requirement = stack.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        environments = [{"extra": extra} for extra in {"", *requirement.extras}]
        for line in requires:
            child = Requirement(line)
            if child.marker is None or any(child.marker.evaluate(e) for e in environments):
                stack.append(child)
    return seen


def hidden_modules() -> List[str]:
    """Top-level modules that belong only to distributions the extras bring."""
    arguments = _setup_arguments()
    base = _closure(arguments["install_requires"])
    extras = {
        canonicalize_name(Requirement(line).name)
        for lines in arguments["extras_require"].values() for line in lines
    } - base
    return sorted(
        module for module, distributions in metadata.packages_distributions().items()
        if all(canonicalize_name(d) in extras for d in distributions)
    )


def environment(folder: Path) -> Dict[str, str]:
    """Server environment (PYTHONPATH) that hides the extras' modules; writes its sitecustomize."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(hidden=hidden_modules()))
    return {"PYTHONPATH": str(folder)}
