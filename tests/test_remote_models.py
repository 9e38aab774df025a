"""Models from HTTP and S3 through a real `mlserver start`: a folder holding only
model-settings.json whose uri points at a loopback HTTP server or at moto's S3 API is loaded
through the repository API and serves what onnxruntime computes; every failure is a 400 that
says what happened, leaves the cache clean, leaks no credential, and the server keeps serving."""
import hashlib
import json

import numpy as np
import pytest

import reference
from remote_stores import (
    DIGITS,
    DIGITS_SHA,
    SECRET,
    FileServer,
    S3Store,
    archive,
    cache_entries,
    cache_files,
    external_data_model,
)
from server import MODEL_REPOSITORY, Server, copy_repository
from test_repository import _drop_folder, _infer_digits, _settings

from mlserver_npu.sources.cache import Cache


@pytest.fixture(scope="module")
def stores():
    files, s3 = FileServer(), S3Store()
    yield files, s3
    files.close()
    s3.close()


def _environment(s3: S3Store, cache) -> dict:
    return {
        **s3.env,
        "MLSERVER_NPU_CACHE_DIR": str(cache),
        "MLSERVER_NPU_DOWNLOAD_TIMEOUT": "2",
        "MLSERVER_NPU_DOWNLOAD_RETRIES": "2",
        "MLSERVER_NPU_DOWNLOAD_BACKOFF": "0.05",
    }


@pytest.fixture(scope="module")
def live(stores, tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    server = Server.start(
        copy_repository(root / "repo", models=["digits"]),
        root,
        env=_environment(stores[1], root / "cache"),
    )
    server.cache = root / "cache"
    yield server
    server.stop()


def _load(server, name, uri, extra=None):
    _drop_folder(server, name, _settings(name, extra, uri=uri))
    return server.http.post(f"/v2/repository/models/{name}/load")


def _infer_digits_temperature(server, model):
    feeds = reference.sample_inputs("digits-temperature", 3)
    response = server.infer(model, [reference.v2_input(n, a) for n, a in feeds.items()])
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    for name, want in reference.run("digits-temperature", feeds).items():
        got = np.array(outputs[name]["data"], want.dtype).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_an_http_model_loads_through_the_api_serves_and_shows_its_digest(live, stores):
    files, _ = stores
    uri = files.put("/models/digits.onnx", DIGITS)
    response = _load(live, "from-http", uri, {"sha256": DIGITS_SHA})
    assert response.status_code == 200, response.text
    _infer_digits(live, "from-http")
    assert live.http.get("/v2/models/from-http").json()["parameters"]["sha256"] == DIGITS_SHA
    assert f"sha256 {DIGITS_SHA}" in live.log()
    # a second model with the same URI is served from the cache
    assert _load(live, "from-http-again", uri).status_code == 200
    _infer_digits(live, "from-http-again")
    assert files.downloads["/models/digits.onnx"] == 1


def test_an_s3_model_loads_through_the_api_and_serves(live, stores):
    uri = stores[1].put("serving/digits.onnx", DIGITS)
    response = _load(live, "from-s3", uri)
    assert response.status_code == 200, response.text
    _infer_digits(live, "from-s3")
    assert live.http.get("/v2/models/from-s3").json()["parameters"]["sha256"] == DIGITS_SHA


def test_a_local_model_shows_its_digest_too(live):
    local = hashlib.sha256((MODEL_REPOSITORY / "digits" / "model.onnx").read_bytes()).hexdigest()
    assert live.http.get("/v2/models/digits").json()["parameters"]["sha256"] == local


@pytest.mark.parametrize("scheme, kind", [("http", "tar.gz"), ("s3", "zip")])
def test_a_model_with_external_data_loads_from_an_archive(live, stores, tmp_path, scheme, kind):
    files, s3 = stores
    body = archive(external_data_model(tmp_path / "weights"), kind)
    name = f"external-{scheme}"
    uri = files.put(f"/{name}.{kind}", body) if scheme == "http" else s3.put(f"{name}.{kind}", body)
    response = _load(live, name, uri, {"sha256": hashlib.sha256(body).hexdigest()})
    assert response.status_code == 200, response.text
    _infer_digits_temperature(live, name)


def _broken(files: FileServer, s3: S3Store) -> list:
    files.put("/broken/flaky.onnx", DIGITS)
    files.always["/broken/flaky.onnx"] = "500"
    files.put("/broken/cut.onnx", DIGITS)
    files.always["/broken/cut.onnx"] = "cut"
    files.put("/broken/pinned.onnx", DIGITS)
    secret_base = files.base.replace("http://", f"http://bob:{SECRET}@")
    # (name, uri, extra, words the error must contain)
    return [
        ("http-404", files.url("/broken/absent.onnx"), {}, ["HTTP 404", "/broken/absent.onnx"]),
        ("http-500", files.url("/broken/flaky.onnx"), {},
         ["HTTP 500", "gave up after 3 attempts"]),
        ("http-cut", files.url("/broken/cut.onnx"), {}, ["connection lost", "gave up"]),
        ("sha256-mismatch", files.url("/broken/pinned.onnx"), {"sha256": "0" * 64},
         ["sha256 mismatch", "0" * 64, DIGITS_SHA, "nothing was kept in the cache"]),
        ("s3-no-key", "s3://models/broken/absent.onnx", {}, ["NoSuchKey"]),
        ("credentials", f"{secret_base}/broken/secret.onnx?token={SECRET}", {},
         ["HTTP 404", "http://***@", "token=***"]),
        ("bad-scheme", "gopher://example.com/m.onnx", {}, ["unsupported URI scheme"]),
    ]


def test_every_failure_is_a_400_that_says_why_and_leaves_the_cache_clean(live, stores):
    before = cache_entries(live.cache)
    for name, uri, extra, words in _broken(*stores):
        response = _load(live, name, uri, extra)
        assert response.status_code == 400, (name, response.text)
        message = response.json()["error"]
        assert f"Model '{name}' could not be loaded" in message
        for word in words:
            assert word in message, (name, word, message)
        assert SECRET not in message
        assert live.http.get(f"/v2/models/{name}/ready").status_code != 200
        assert not (live.cache / Cache.key(uri)).exists(), name
        _infer_digits(live)
    assert cache_entries(live.cache) == before
    assert SECRET not in live.log()
    assert stores[1].env["AWS_SECRET_ACCESS_KEY"] not in live.log()


def test_a_restarted_server_loads_from_the_cache(live, stores, make_server, tmp_path):
    files, _ = stores
    uri = files.put("/restart/digits.onnx", DIGITS)
    assert _load(live, "before-restart", uri).status_code == 200
    assert files.downloads["/restart/digits.onnx"] == 1
    # a new server process on the same cache, loading the model at start-up
    repository = copy_repository(tmp_path / "repo", models=[])
    folder = repository / "after-restart"
    folder.mkdir()
    (folder / "model-settings.json").write_text(json.dumps(_settings("after-restart", uri=uri)))
    restarted = make_server(repository, env=_environment(stores[1], live.cache))
    _infer_digits(restarted, "after-restart")
    assert files.downloads["/restart/digits.onnx"] == 1
    assert files.requests["/restart/digits.onnx"] == 2  # the second one answered 304


def _error_lines(server, name):
    return [
        line for line in server.log().splitlines()
        if " ERROR " in f" {line} " and f"Model '{name}' could not be loaded" in line
    ]


def test_a_downloaded_file_that_fails_to_load_leaves_the_cache_as_it_was(live, stores):
    files, _ = stores
    before = cache_files(live.cache)
    uri = files.put("/docs/README.md", b"# not a model\n" * 20)
    response = _load(live, "not-onnx", uri)
    assert response.status_code == 400, response.text
    assert files.downloads["/docs/README.md"] == 1  # it was downloaded, then refused
    assert cache_files(live.cache) == before
    assert not (live.cache / Cache.key(uri)).exists()
    # the reason is in the server log at ERROR, with the model's name
    (line,) = _error_lines(live, "not-onnx")
    assert response.json()["error"] in line
    _infer_digits(live)


def test_a_refused_load_never_removes_the_entry_another_model_uses(live, stores):
    files, _ = stores
    uri = files.put("/shared/digits.onnx", DIGITS)
    assert _load(live, "shared-first", uri).status_code == 200
    before = cache_files(live.cache)
    entry = Cache.key(uri)
    assert hashlib.sha256(DIGITS).hexdigest() in {
        digest for name, digest in before.items() if name.startswith(f"{entry}/")
    }
    # the same URI pinned to a wrong digest: refused, and the first model's entry is intact
    response = _load(live, "shared-wrong-pin", uri, {"sha256": "1" * 64})
    assert response.status_code == 400, response.text
    assert "sha256 mismatch" in response.json()["error"]
    assert cache_files(live.cache) == before
    # a changed file on the server whose load fails restores the first model's entry too
    files.put("/shared/digits.onnx", b"\x08\x01garbage")
    assert _load(live, "shared-broken", uri).status_code == 400
    assert cache_files(live.cache) == before
    _infer_digits(live, "shared-first")
    for name in ("shared-wrong-pin", "shared-broken"):
        assert len(_error_lines(live, name)) == 1, live.log()
    files.put("/shared/digits.onnx", DIGITS)


def test_a_failure_at_start_up_is_logged_at_error_with_the_reason(stores, make_server, tmp_path):
    files, s3 = stores
    secret_uri = files.base.replace("http://", f"http://bob:{SECRET}@") + "/startup/absent.onnx"
    repository = copy_repository(tmp_path / "repo", models=[])
    folder = repository / "broken-at-start"
    folder.mkdir()
    (folder / "model-settings.json").write_text(
        json.dumps(_settings("broken-at-start", uri=secret_uri))
    )
    server = Server(repository, tmp_path, env=_environment(s3, tmp_path / "cache"))
    try:
        # MLServer stops when a model fails at start-up, with status 0 (README says so)
        assert server.process.wait(timeout=120) == 0
        (line,) = _error_lines(server, "broken-at-start")
        assert "HTTP 404" in line and "http://***@" in line
        assert SECRET not in server.log()
    finally:
        server.stop()
