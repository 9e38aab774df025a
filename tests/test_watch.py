"""Watch mode: `serve --watch` and the `watch --url` sidecar load added folders, reload changed
ones, unload removed ones, never load a folder still being copied, and log a broken one once,
while another model keeps serving without an error."""
import json
import shutil
import subprocess
import sys
import threading
import time

import httpx
import pytest

import reference
from reference import v2_input
from server import MODEL_REPOSITORY, Serve, Server, copy_model, server_env, terminate

POLL = "0.3"


def wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout}s")


def ready(server, model):
    return server.http.get(f"/v2/models/{model}/ready").status_code == 200


class Traffic(threading.Thread):
    """Requests to one model in a loop, counting the answers that are not 200."""

    def __init__(self, url, model):
        super().__init__(daemon=True)
        self.url, self.model = url, model
        self.body = {"inputs": [v2_input("input", reference.digits(2))]}
        self.done, self.errors = 0, []
        self._halt = threading.Event()

    def run(self):
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._halt.is_set():
                response = client.post(f"/v2/models/{self.model}/infer", json=self.body)
                if response.status_code == 200:
                    self.done += 1
                else:
                    self.errors.append(response.text[:200])

    def stop(self):
        self._halt.set()
        self.join()
        return self


def _settings(folder):
    return json.loads((folder / "model-settings.json").read_text())


def _edit(folder, **extra):
    settings = _settings(folder)
    settings["parameters"]["extra"].update(extra)
    (folder / "model-settings.json").write_text(json.dumps(settings))


def _slow_copy(source, folder, chunks=12, pause=0.1):
    """model-settings.json first, then the model file a chunk at a time (several polls)."""
    folder.mkdir()
    settings = _settings(source)
    settings["name"] = folder.name
    (folder / "model-settings.json").write_text(json.dumps(settings))
    data = (source / "model.onnx").read_bytes()
    size = len(data) // chunks + 1
    with open(folder / "model.onnx", "wb") as file:
        for start in range(0, len(data), size):
            file.write(data[start:start + size])
            file.flush()
            time.sleep(pause)


@pytest.fixture
def repository(tmp_path):
    root = tmp_path / "repository"
    copy_model(MODEL_REPOSITORY / "digits", root, "digits")
    shutil.copy(MODEL_REPOSITORY / "settings.json", root)
    return root


def test_serve_watch_adds_changes_and_removes_models_while_another_serves(repository, tmp_path):
    server = Serve.start([repository, "--watch", "--poll-interval", POLL], tmp_path)
    traffic = Traffic(server.url, "digits")
    traffic.start()
    try:
        added = copy_model(MODEL_REPOSITORY / "digits", repository, "added")
        wait_for(lambda: ready(server, "added"), "added loaded")
        pixels = reference.digits(3)
        response = server.infer("added", [v2_input("input", pixels)])
        assert response.json()["outputs"][0]["data"] == reference.run(
            "digits", {"input": pixels})["label"].tolist()

        _edit(added, sessions=2)
        devices = lambda: server.http.get("/v2/models/added").json()["parameters"]["devices"]
        wait_for(lambda: devices() == "cpu,cpu", "added reloaded with 2 sessions")

        _edit(added, device="nowhere")
        wait_for(lambda: "failed to load" in server.log(), "the broken change logged")
        time.sleep(5 * float(POLL))  # polls that see no change: not tried again
        failures = [line for line in server.log().splitlines()
                    if "watch:" in line and "failed to load" in line]
        assert len(failures) == 1, failures
        assert "unknown onnxruntime device 'nowhere'" in failures[0]
        assert "model 'added' keeps serving its previous version" in failures[0]
        assert ready(server, "added") and devices() == "cpu,cpu"

        shutil.rmtree(added)
        wait_for(lambda: not ready(server, "added"), "added unloaded")
        names = [m["name"] for m in server.http.post("/v2/repository/index", json={}).json()]
        assert "added" not in names

        _slow_copy(MODEL_REPOSITORY / "digits", repository / "slow")
        wait_for(lambda: ready(server, "slow"), "slow loaded")
        log = server.log()
        assert "slow' failed to load" not in log and "model 'slow' from" in log
        assert log.count("model 'slow' from") == 1  # loaded once, when complete

        # The atomic way: copy into a hidden folder (ignored), then rename it into place.
        hidden = repository / ".incoming"
        _slow_copy(MODEL_REPOSITORY / "digits", hidden, pause=0)
        settings = _settings(hidden)
        settings["name"] = "digits-renamed"
        (hidden / "model-settings.json").write_text(json.dumps(settings))
        time.sleep(3 * float(POLL))
        assert not ready(server, "digits-renamed")
        hidden.rename(repository / "digits-renamed")
        wait_for(lambda: ready(server, "digits-renamed"), "renamed folder loaded")
        assert "model 'digits' from" not in server.log()  # the busy model was never touched
    finally:
        traffic.stop()
        server.stop()
    assert traffic.errors == [] and traffic.done > 0
    assert server.process.returncode == 0  # SIGTERM: a clean stop


def test_watch_sidecar_drives_a_running_mlserver(repository, tmp_path):
    server = Server.start(repository, tmp_path)
    log = open(tmp_path / "watch.log", "wb")
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "mlserver_npu.cli", "watch", str(repository),
         "--url", server.url, "--poll-interval", POLL],
        env=server_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    watch_log = lambda: (tmp_path / "watch.log").read_text()
    traffic = Traffic(server.url, "digits")
    traffic.start()
    try:
        broken = copy_model(MODEL_REPOSITORY / "digits", repository, "broken", {"sesions": 1})
        added = copy_model(MODEL_REPOSITORY / "digits", repository, "added")
        wait_for(lambda: ready(server, "added"), "added loaded")
        wait_for(lambda: "failed to load" in watch_log(), "broken logged")
        assert "unknown key 'parameters.extra.sesions'" in watch_log()
        assert not ready(server, "broken")

        shutil.rmtree(added)
        wait_for(lambda: not ready(server, "added"), "added unloaded")
        _edit(broken, sessions=1)
        settings = _settings(broken)
        del settings["parameters"]["extra"]["sesions"]
        (broken / "model-settings.json").write_text(json.dumps(settings))
        wait_for(lambda: ready(server, "broken"), "the fixed folder loaded")
        assert "model 'digits'" not in watch_log()  # served from the start, never touched
    finally:
        traffic.stop()
        terminate(sidecar)
        log.close()
        server.stop()
    assert traffic.errors == [] and traffic.done > 0
