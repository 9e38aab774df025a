"""README's client examples run as pasted against a real server of the example repository, and
print what README says they print: every python block that talks to `localhost:8080`/`8081`,
and every `$ python examples/...` command of a client script (one with a `--url` option)."""
import re
import subprocess
import sys
from typing import List, Optional, Tuple

import pytest

from server import REPO

README = (REPO / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
BLOCKS = [(kind, body) for kind, body in FENCE.findall(README)]


def _expected(lines: List[str]) -> Optional[str]:
    """The comment lines that end a python block: what it prints."""
    tail: List[str] = []
    for line in reversed(lines):
        if not line.startswith("# "):
            break
        tail.insert(0, line[2:])
    return "\n".join(tail) if tail else None


PYTHON = [body for kind, body in BLOCKS if kind == "python" and "localhost:808" in body]


def _commands() -> List[Tuple[str, str]]:
    """(command, its output as README shows it) for client scripts run in README."""
    commands = []
    for _, body in BLOCKS:
        command, output = None, []
        for line in body.splitlines() + ["$ "]:
            if line.startswith("$ "):
                if command:
                    commands.append((command, "\n".join(output)))
                command, output = line[2:], []
                script = command.split()[1] if command.startswith("python examples/") else ""
                if not script or "--url" not in (REPO / script).read_text():
                    command = None
            elif command:
                output.append(line)
    return commands


COMMANDS = _commands()


def _run(arguments: List[str]) -> str:
    completed = subprocess.run(
        arguments, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.rstrip("\n")


def test_readme_has_the_client_examples():
    assert len(PYTHON) >= 4 and len(COMMANDS) >= 4
    assert all(_expected(body.splitlines()) for body in PYTHON)


@pytest.mark.parametrize("snippet", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_a_python_snippet_runs_as_pasted_and_prints_what_readme_says(server, snippet):
    code = snippet.replace("localhost:8080", f"127.0.0.1:{server.http_port}").replace(
        "localhost:8081", server.grpc_target
    )
    assert _run([sys.executable, "-c", code]) == _expected(snippet.splitlines())


@pytest.mark.parametrize("command, output", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_a_client_command_prints_what_readme_says(server, command, output):
    arguments = command.split()
    url = server.grpc_target if "grpc" in arguments else f"127.0.0.1:{server.http_port}"
    assert _run([sys.executable, *arguments[1:], "--url", url]) == output


def test_the_docs_pages_readme_names_exist(server):
    for path in ("/v2/docs", "/v2/models/digits/docs", "/v2/docs/dataplane.json"):
        assert path in README, path
        assert server.http.get(path).status_code == 200, path
    assert server.http.get("/docs").status_code == 404  # README: "There is no `/docs`"
    assert "swagger" in server.http.get("/v2/docs").text.lower()
