import pytest

from server import Server, copy_repository


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The example model repository served by one MLServer process per test module."""
    root = tmp_path_factory.mktemp("server")
    repository = copy_repository(root / "model-repository")
    running = Server(repository, root).wait_ready()
    yield running
    running.stop()


@pytest.fixture
def make_server(tmp_path):
    """Start a server on a custom repository: make_server(repository_dir, settings=None)."""
    started = []

    def start(repository, settings=None, **kwargs):
        started.append(Server(repository, tmp_path, settings, **kwargs))
        return started[-1].wait_ready()

    yield start
    for running in started:
        running.stop()
