import pytest

from server import Server, copy_repository


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The example model repository served by one MLServer process per test module."""
    root = tmp_path_factory.mktemp("server")
    repository = copy_repository(root / "model-repository")
    running = Server.start(repository, root)
    yield running
    running.stop()


@pytest.fixture
def make_server(tmp_path):
    """Start a server on a custom repository: make_server(repository_dir, settings, env)."""
    started = []

    def start(repository, settings=None, env=None):
        started.append(Server.start(repository, tmp_path, settings, env))
        return started[-1]

    yield start
    for running in started:
        running.stop()
