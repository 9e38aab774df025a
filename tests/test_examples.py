"""The example generators are byte-for-byte deterministic: regenerated into a temp folder, every
file they write equals the committed one, so the pinned sha256 of examples/remote-repository
and the digest quoted in docs/remote-models.md hold. (With the toolchain setup.py installs: a
scikit-learn, skl2onnx, onnx or Pillow release that changes what it writes fails this test;
rerun the generators, commit, and update the pinned sha256.)"""
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server import REPO

GENERATORS = ["examples/make_models.py", "examples/make_npu_models.py"]


def _digests(root: Path) -> dict:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    for script in GENERATORS:
        subprocess.run(
            [sys.executable, str(REPO / script), "--root", str(root)],
            check=True, capture_output=True, timeout=300,
        )
    return root


def test_regenerated_example_models_equal_the_committed_files(regenerated):
    made = _digests(regenerated)
    assert "model-repository/digits/model.onnx" in made
    assert "examples/tflite-repository/digits-uint8/model.tflite" in made
    committed = {name: hashlib.sha256((REPO / name).read_bytes()).hexdigest() for name in made}
    different = sorted(name for name in made if made[name] != committed[name])
    assert different == [], "regenerated files differ from the committed ones"


def test_the_pinned_and_quoted_digests_are_the_committed_files():
    digits = hashlib.sha256((REPO / "model-repository/digits/model.onnx").read_bytes()).hexdigest()
    settings = json.loads(
        (REPO / "examples/remote-repository/digits-http/model-settings.json").read_text()
    )
    assert settings["parameters"]["extra"]["sha256"] == digits
    # docs/remote-models.md quotes examples/remote-repository/digits-http/model-settings.json
    quoted = re.findall(
        r'"name": "digits-http".*?"sha256": "([0-9a-f]{64})"',
        (REPO / "docs" / "remote-models.md").read_text(),
        re.S,
    )
    assert quoted == [digits]


def test_example_repositories_have_settings_that_survive_a_copy():
    """README: copy a repository folder; the shipped settings turn gzip off."""
    for path in sorted((REPO / "examples").glob("*/settings.json")):
        assert not path.is_symlink(), path  # a relative link breaks in a copy
        assert json.loads(path.read_text())["gzip_enabled"] is False, path
