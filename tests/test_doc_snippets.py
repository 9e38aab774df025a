"""The documentation's client examples run as pasted against one real server of the example
repository, and print what the page says they print: in README.md and every docs/*.md page,
every python block that talks to `localhost:8080`/`8081`, and every `$ python examples/...`
command of a client script (one with a `--url` option). A snippet shown on two pages (README's
quick start is also the site's home page) runs once. The server runs as after README's
`pip install -e .`: the packages only the extras install cannot be imported in it."""
import re
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

import pytest

import base_install
from server import REPO, Server, copy_repository, server_env

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _blocks() -> List[Tuple[str, str, str]]:
    """(page, kind, body) of every fenced block."""
    return [
        (page.relative_to(REPO).as_posix(), kind, body)
        for page in PAGES
        for kind, body in FENCE.findall(page.read_text())
    ]


BLOCKS = _blocks()


def _expected(lines: List[str]) -> Optional[str]:
    """The comment lines that end a python block: what it prints."""
    tail: List[str] = []
    for line in reversed(lines):
        if not line.startswith("# "):
            break
        tail.insert(0, line[2:])
    return "\n".join(tail) if tail else None


def _python() -> Dict[str, str]:
    """Snippet -> the first page that shows it."""
    snippets: Dict[str, str] = {}
    for page, kind, body in BLOCKS:
        if kind == "python" and "localhost:808" in body:
            snippets.setdefault(body, page)
    return snippets


PYTHON = _python()


def _commands() -> Dict[Tuple[str, str], str]:
    """(command, its output as the page shows it) -> the first page, for client scripts."""
    commands: Dict[Tuple[str, str], str] = {}
    for page, _, body in BLOCKS:
        command, output = None, []
        for line in body.splitlines() + ["$ "]:
            if line.startswith("$ "):
                if command:
                    commands.setdefault((command, "\n".join(output)), page)
                command, output = line[2:], []
                script = command.split()[1] if command.startswith("python examples/") else ""
                if not script or "--url" not in (REPO / script).read_text():
                    command = None
            elif command:
                output.append(line)
    return commands


COMMANDS = _commands()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The example repository served by a server that sees only the base install."""
    root = tmp_path_factory.mktemp("server")
    repository = copy_repository(root / "model-repository")
    running = Server.start(repository, root, env=base_install.environment(root / "base"))
    yield running
    running.stop()


def _run(arguments: List[str]) -> str:
    completed = subprocess.run(
        arguments, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.rstrip("\n")


def test_the_docs_have_the_client_examples():
    assert len(PYTHON) >= 4 and len(COMMANDS) >= 4
    assert all(_expected(body.splitlines()) for body in PYTHON)
    readme = [body for page, kind, body in BLOCKS if page == "README.md"]
    assert any("localhost:8080" in body for body in readme)  # the quick start's clients
    assert any("localhost:8081" in body for body in readme)


def _ids(pages: List[str]) -> List[str]:
    seen: Dict[str, int] = {}
    ids = []
    for page in pages:
        seen[page] = seen.get(page, -1) + 1
        ids.append(f"{page}-{seen[page]}")
    return ids


@pytest.mark.parametrize("snippet", list(PYTHON), ids=_ids(list(PYTHON.values())))
def test_a_python_snippet_runs_as_pasted_and_prints_what_the_page_says(server, snippet):
    code = snippet.replace("localhost:8080", f"127.0.0.1:{server.http_port}").replace(
        "localhost:8081", server.grpc_target
    )
    assert _run([sys.executable, "-c", code]) == _expected(snippet.splitlines())


@pytest.mark.parametrize("command, output", list(COMMANDS), ids=[c for c, _ in COMMANDS])
def test_a_client_command_prints_what_the_page_says(server, command, output):
    arguments = command.split()
    url = server.grpc_target if "grpc" in arguments else f"127.0.0.1:{server.http_port}"
    assert _run([sys.executable, *arguments[1:], "--url", url]) == output


def test_the_api_docs_pages_readme_names_exist(server):
    readme = (REPO / "README.md").read_text()
    for path in ("/v2/docs", "/v2/models/digits/docs", "/v2/docs/dataplane.json"):
        assert path in readme, path
        assert server.http.get(path).status_code == 200, path
    assert server.http.get("/docs").status_code == 404  # README: "There is no `/docs`"
    assert "swagger" in server.http.get("/v2/docs").text.lower()


def test_the_base_install_serves_every_example_model(server, tmp_path):
    """README: `pip install -e .` alone serves model-repository (onnxruntime on the CPU)."""
    env = server_env(base_install.environment(tmp_path))
    for module, importable in (("openvino", False), ("sklearn", False), ("onnxruntime", True)):
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, timeout=60)
        assert (probe.returncode == 0) == importable, module
    index = server.http.post("/v2/repository/index", json={}).json()
    folders = {p.parent.name for p in (REPO / "model-repository").glob("*/model-settings.json")}
    assert {m["name"] for m in index} == folders
    assert all(m["state"] == "READY" for m in index), index
