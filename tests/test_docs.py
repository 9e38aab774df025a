"""The documentation site builds with `mkdocs build --strict`: no broken link, anchor or nav
entry, no page missing from the nav; README's links reach pages and headings that exist."""
import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server import REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log
    assert "WARNING" not in log, log
    return folder


def test_the_site_builds_strict_with_every_page(site):
    for page in sorted((REPO / "docs").glob("*.md")):
        assert _html(site, page.relative_to(REPO)).is_file(), page
    assert "mlserver-npu" in (site / "index.html").read_text()


def test_readme_links_reach_files_and_headings_that_exist(site):
    readme = (REPO / "README.md").read_text()
    links = [t for t in LINK.findall(readme) if not re.match(r"^[a-z]+:", t)]
    assert any(t.startswith("docs/") and "#" in t for t in links)
    for target in links:
        path, _, anchor = target.partition("#")
        assert (REPO / path).exists(), target
        if anchor and path.endswith(".md"):
            assert f'id="{anchor}"' in _html(site, Path(path)).read_text(), target


def _html(site: Path, page: Path) -> Path:
    """Where the site puts a Markdown page: docs/x.md -> x/index.html; a repository page the
    docs link (bench/README.md) at its own path."""
    page = page.relative_to("docs") if page.parts[0] == "docs" else page
    folder = page.parent if page.name in ("index.md", "README.md") else page.with_suffix("")
    return site / folder / "index.html"


def test_readme_is_a_landing_page():
    """The reference lives in docs/; README keeps the quick start and points there."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert 'pip install -e .' in readme and "mlserver start model-repository" in readme


def test_readme_quick_start_is_the_site_home_page():
    """README up to its list of pages is docs/index.md, links aside: one edited, both edited."""
    def text(markdown: str) -> str:
        return LINK.sub("]()", markdown).strip()

    readme = (REPO / "README.md").read_text().split("\n## Documentation\n")[0]
    home = (REPO / "docs" / "index.md").read_text()
    diff = difflib.unified_diff(
        text(readme).splitlines(), text(home).splitlines(), "README.md", "docs/index.md", lineterm=""
    )
    assert text(readme) == text(home), "edit both:\n" + "\n".join(diff)


def test_readme_links_every_page():
    """README is where a reader of the repository finds the pages: each one is in its list."""
    readme = (REPO / "README.md").read_text()
    linked = {t.partition("#")[0] for t in LINK.findall(readme)}
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if f"docs/{p.name}" not in linked]
    assert missing == [], "add to README's Documentation table: " + ", ".join(missing)
