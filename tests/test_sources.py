"""mlserver_npu.sources against real servers on loopback: an HTTP file server that misbehaves
on request and moto's S3 API. Each case checks what was fetched (bytes, digest, how), how many
times the server was asked, and that a failure leaves the cache clean."""
import asyncio
import hashlib
import io
import logging
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from mlserver.settings import ModelSettings

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
from server import MODEL_REPOSITORY, REPO, free_port

from mlserver_npu.settings import NPUEnvironment
from mlserver_npu.sources import SourceError, resolve_model



def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def files():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def s3_store():
    store = S3Store()
    yield store
    store.close()


@pytest.fixture
def s3(s3_store, monkeypatch):
    for name, value in s3_store.env.items():
        monkeypatch.setenv(name, value)
    return s3_store


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def settings(cache):
    return NPUEnvironment(
        cache_dir=cache, download_timeout=2, download_retries=2, download_backoff=0.01
    )


def _model_settings(uri):
    return ModelSettings(name="m", implementation="mlserver_npu.NPURuntime", parameters={"uri": uri})


async def _resolve(uri, settings, pin=None):
    async with resolve_model(_model_settings(uri), pin, settings) as source:
        return source


def resolve(uri, settings, pin=None):
    return asyncio.run(_resolve(uri, settings, pin))


def fails(uri, settings, pin=None) -> str:
    with pytest.raises(SourceError) as error:
        resolve(uri, settings, pin)
    return str(error.value)


# --- http(s) -----------------------------------------------------------------------------


def test_http_download_is_cached_then_revalidated(files, settings, cache):
    uri = files.put("/m/digits.onnx", DIGITS)
    first = resolve(uri, settings)
    assert (first.how, first.sha256, first.path.name) == ("downloaded", DIGITS_SHA, "digits.onnx")
    assert first.path.read_bytes() == DIGITS
    again = resolve(uri, settings)
    assert (again.how, again.path, again.sha256) == ("revalidated", first.path, DIGITS_SHA)
    assert (files.downloads["/m/digits.onnx"], files.requests["/m/digits.onnx"]) == (1, 2)
    # the file changes on the server: a new ETag, a new download
    changed = DIGITS + b"\0"
    files.put("/m/digits.onnx", changed)
    third = resolve(uri, settings)
    assert (third.how, third.sha256) == ("downloaded", sha(changed))
    assert third.path.read_bytes() == changed
    assert files.downloads["/m/digits.onnx"] == 2
    assert len(cache_entries(cache)) == 1


def test_without_validators_the_cached_copy_is_used_as_is(files, settings):
    uri = files.put("/plain.onnx", DIGITS, validators=False)
    assert resolve(uri, settings).how == "downloaded"
    assert resolve(uri, settings).how == "cached"
    assert files.requests["/plain.onnx"] == 1


def test_a_pinned_cached_copy_is_used_without_asking_the_server(files, settings):
    uri = files.put("/pinned.onnx", DIGITS)
    assert resolve(uri, settings, pin=DIGITS_SHA).how == "downloaded"
    files.always["/pinned.onnx"] = "500"
    source = resolve(uri, settings, pin=DIGITS_SHA.upper())
    assert (source.how, source.sha256) == ("cached", DIGITS_SHA)
    assert files.requests["/pinned.onnx"] == 1


def test_sha256_mismatch_refuses_the_file_and_keeps_nothing(files, settings, cache):
    uri = files.put("/digits.onnx", DIGITS)
    wrong = "0" * 64
    message = fails(uri, settings, pin=wrong)
    assert "sha256 mismatch" in message and wrong in message and DIGITS_SHA in message
    assert cache_entries(cache) == []
    # an entry cached before (another model's, unpinned) stays as it was
    resolve(uri, settings)
    before = cache_files(cache)
    assert len(before) == 2  # the model and meta.json
    assert DIGITS_SHA in fails(uri, settings, pin=wrong)
    assert cache_files(cache) == before
    assert resolve(uri, settings).how == "revalidated"


class LoadFailed(Exception):
    pass


async def _fail_inside(uri, settings, pin=None):
    with pytest.raises(LoadFailed):
        async with resolve_model(_model_settings(uri), pin, settings) as source:
            assert source.how == "downloaded"
            raise LoadFailed()


def test_a_load_that_fails_after_the_download_leaves_the_cache_as_it_was(files, settings, cache):
    uri = files.put("/fails.onnx", DIGITS)
    asyncio.run(_fail_inside(uri, settings))
    assert cache_files(cache) == {}
    # a working entry, then a changed file on the server whose load fails: the old entry stays
    first = resolve(uri, settings)
    before = cache_files(cache)
    files.put("/fails.onnx", DIGITS + b"changed")
    asyncio.run(_fail_inside(uri, settings))
    assert cache_files(cache) == before
    assert files.downloads["/fails.onnx"] == 3
    # the restored entry still revalidates against the server (its ETag is the old file's)
    files.put("/fails.onnx", DIGITS)
    again = resolve(uri, settings)
    assert (again.how, again.path) == ("revalidated", first.path)


def test_a_transient_failure_falls_back_to_the_cached_copy(files, settings):
    uri = files.put("/fallback.onnx", DIGITS)
    first = resolve(uri, settings)
    files.always["/fallback.onnx"] = "500"
    source = resolve(uri, settings)
    assert (source.how, source.path) == ("cached", first.path)


def test_404_fails_at_once(files, settings, cache):
    message = fails(files.url("/nowhere.onnx"), settings)
    assert "HTTP 404" in message and "/nowhere.onnx" in message
    assert files.requests["/nowhere.onnx"] == 1
    assert cache_entries(cache) == []


def test_500_then_success_is_retried(files, settings):
    uri = files.put("/flaky.onnx", DIGITS)
    files.plan["/flaky.onnx"] = ["500", "500"]
    assert resolve(uri, settings).sha256 == DIGITS_SHA
    assert files.requests["/flaky.onnx"] == 3


def test_500_every_time_gives_up_after_the_retries(files, settings, cache):
    uri = files.put("/broken.onnx", DIGITS)
    files.always["/broken.onnx"] = "500"
    message = fails(uri, settings)
    assert "HTTP 500" in message and "gave up after 3 attempts" in message
    assert files.requests["/broken.onnx"] == 3
    assert cache_entries(cache) == []


def test_a_connection_cut_mid_file_is_retried_and_never_cached(files, settings, cache):
    uri = files.put("/cut.onnx", DIGITS)
    files.always["/cut.onnx"] = "cut"
    message = fails(uri, settings)
    assert "connection" in message and "gave up after 3 attempts" in message
    assert cache_entries(cache) == []
    files.always.clear()
    files.plan["/cut.onnx"] = ["cut"]
    source = resolve(uri, settings)
    assert source.path.read_bytes() == DIGITS
    assert files.downloads["/cut.onnx"] == 5  # 3 cut, 1 cut, 1 whole


def test_a_slow_server_times_out(files, settings, cache):
    uri = files.put("/slow.onnx", DIGITS)
    files.always["/slow.onnx"] = "stall"
    settings = settings.model_copy(update={"download_timeout": 0.3, "download_retries": 1})
    started = time.monotonic()
    message = fails(uri, settings)
    assert time.monotonic() - started < 3
    assert "no data for 0.3 s" in message and "MLSERVER_NPU_DOWNLOAD_TIMEOUT" in message
    assert files.requests["/slow.onnx"] == 2
    assert cache_entries(cache) == []


def test_a_redirect_is_followed(files, settings):
    files.put("/real/digits.onnx", DIGITS)
    source = resolve(files.redirect("/latest.onnx", "/real/digits.onnx"), settings)
    assert source.sha256 == DIGITS_SHA
    assert files.downloads["/real/digits.onnx"] == 1


@pytest.mark.parametrize("behaviour", [None, "nolength"], ids=["announced", "streamed"])
def test_the_size_limit_stops_a_download(files, settings, cache, behaviour):
    uri = files.put("/big.onnx", DIGITS)
    if behaviour:
        files.always["/big.onnx"] = behaviour
    limit = len(DIGITS) // 2
    message = fails(uri, settings.model_copy(update={"max_download_size": limit}))
    assert "MLSERVER_NPU_MAX_DOWNLOAD_SIZE" in message
    assert files.requests["/big.onnx"] == 1
    assert cache_entries(cache) == []


def test_concurrent_loads_download_once(files, settings):
    uri = files.put("/shared.onnx", DIGITS)
    files.chunk_delay["/shared.onnx"] = 0.05

    async def three():
        return await asyncio.gather(*(_resolve(uri, settings) for _ in range(3)))

    sources = asyncio.run(three())
    assert {s.path for s in sources} == {sources[0].path}
    assert sorted(s.how for s in sources) == ["downloaded", "revalidated", "revalidated"]
    assert files.downloads["/shared.onnx"] == 1


RESOLVE_IN_A_PROCESS = """
import asyncio, logging, sys
logging.basicConfig(level=logging.INFO)
from mlserver.settings import ModelSettings
from mlserver_npu.settings import NPUEnvironment
from mlserver_npu.sources import resolve_model
settings = ModelSettings(name="m", implementation="mlserver_npu.NPURuntime",
                         parameters={"uri": sys.argv[1]})
async def main():
    async with resolve_model(settings, None, NPUEnvironment(cache_dir=sys.argv[2])) as source:
        print(source.how, source.sha256)
asyncio.run(main())
"""


def test_two_processes_download_once(files, cache):
    uri = files.put("/two.onnx", DIGITS)
    files.chunk_size, files.chunk_delay["/two.onnx"] = 256, 0.1  # a 1.5 s download
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RESOLVE_IN_A_PROCESS, uri, str(cache)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    assert sorted(out.split()[0] for out, _ in outputs) == ["downloaded", "revalidated"]
    assert files.downloads["/two.onnx"] == 1
    # the second process really waited for the first one's download
    assert any("Waiting for another process" in err for _, err in outputs), outputs


def test_credentials_never_appear_in_errors_or_logs(files, settings, caplog):
    caplog.set_level(logging.INFO, logger="mlserver.npu")
    files.put("/private/digits.onnx", DIGITS)
    files.auth["/private/digits.onnx"] = f"alice:{SECRET}"
    files.chunk_delay["/private/digits.onnx"] = 0.02
    files.chunk_size = 512
    base = files.base.replace("http://", f"http://alice:{SECRET}@")
    # user info is sent as basic auth; progress is logged
    uri = f"{base}/private/digits.onnx?token={SECRET}"
    progress = settings.model_copy(update={"progress_interval": 0.05})
    assert resolve(uri, progress).sha256 == DIGITS_SHA
    assert any("%" in r.getMessage() and "/s" in r.getMessage() for r in caplog.records)
    files.plan["/private/missing.onnx"] = ["500"]
    message = fails(f"{base}/private/missing.onnx?X-Amz-Signature={SECRET}&v=2", settings)
    assert "HTTP 404" in message and "***@" in message and "X-Amz-Signature=***" in message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "retry 1 of 2" in logged
    assert SECRET not in message and SECRET not in logged


# --- archives and ONNX external data -----------------------------------------------------


def assert_serves_digits_temperature(model_file: Path) -> None:
    feeds = reference.sample_inputs("digits-temperature", 3)
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, feeds)))
    for name, want in reference.run("digits-temperature", feeds).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-6)


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_brings_the_external_data_along(files, settings, tmp_path, kind):
    body = archive(external_data_model(tmp_path / "weights"), kind)
    source = resolve(files.put(f"/bundle.{kind}", body), settings)
    assert source.sha256 == sha(body)
    assert source.path.name == "model.onnx"
    assert (source.path.parent / "model.onnx.data").is_file()
    assert_serves_digits_temperature(source.path)
    assert resolve(files.url(f"/bundle.{kind}"), settings).how == "revalidated"


def _tar(*members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(DIGITS)
                tar.addfile(info, io.BytesIO(DIGITS))
    return buffer.getvalue()


def _zip(name) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zip_file:
        zip_file.writestr(zipfile.ZipInfo(name), DIGITS)
    return buffer.getvalue()


UNSAFE = [
    ("tar-dotdot", "tar.gz", _tar(("model.onnx", "file"), ("../escaped.onnx", "file")), "outside"),
    ("tar-absolute", "tar.gz", _tar(("/tmp/escaped.onnx", "file")), "outside"),
    ("tar-symlink", "tar.gz", _tar(("model.onnx", "symlink")), "link"),
    ("zip-dotdot", "zip", _zip("../../escaped.onnx"), "outside"),
    ("no-model", "zip", _zip("weights.bin"), "holds none of model.onnx"),
]


@pytest.mark.parametrize("case", UNSAFE, ids=[c[0] for c in UNSAFE])
def test_an_unsafe_or_empty_archive_is_refused(files, settings, cache, case):
    _, kind, body, words = case
    message = fails(files.put(f"/unsafe.{kind}", body), settings)
    assert words in message
    assert cache_entries(cache) == []
    assert not list(cache.parent.rglob("escaped.onnx"))


# --- s3 ----------------------------------------------------------------------------------


def test_s3_download_is_cached_then_revalidated(s3, settings):
    uri = s3.put("cached/digits.onnx", DIGITS)
    first = resolve(uri, settings)
    assert (first.how, first.sha256) == ("downloaded", DIGITS_SHA)
    inode = first.path.stat().st_ino
    again = resolve(uri, settings)
    assert (again.how, again.path.stat().st_ino) == ("revalidated", inode)
    changed = DIGITS + b"\0"
    s3.put("cached/digits.onnx", changed)
    third = resolve(uri, settings)
    assert (third.how, third.sha256) == ("downloaded", sha(changed))
    assert third.path.read_bytes() == changed


@pytest.mark.parametrize(
    "uri, words",
    [("s3://models/absent.onnx", "NoSuchKey"), ("s3://no-such-bucket/m.onnx", "NoSuchBucket")],
)
def test_s3_missing_object_fails_at_once(s3, settings, cache, uri, words):
    message = fails(uri, settings)
    assert words in message and uri in message
    assert cache_entries(cache) == []


def test_s3_unreachable_endpoint_is_retried_then_fails(s3, settings, cache, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    message = fails("s3://models/digits.onnx", settings)
    assert "gave up after 3 attempts" in message
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in message
    assert cache_entries(cache) == []


# --- local files and configuration -------------------------------------------------------


def test_a_local_file_is_hashed_and_its_pin_checked(settings, cache):
    path = MODEL_REPOSITORY / "digits" / "model.onnx"
    source = resolve(f"file://{path}", settings, pin=DIGITS_SHA)
    assert (source.path, source.sha256, source.how) == (path, DIGITS_SHA, "local")
    message = fails(str(path), settings, pin="ab" * 32)
    assert "ab" * 32 in message and DIGITS_SHA in message
    assert not cache.exists()


def test_an_unsupported_scheme_names_the_supported_ones(settings):
    message = fails("ftp://example.com/m.onnx", settings)
    assert "ftp://" in message and "s3://" in message and "https://" in message


def test_a_bad_environment_setting_is_named(files, monkeypatch):
    monkeypatch.setenv("MLSERVER_NPU_DOWNLOAD_RETRIES", "many")
    message = fails(files.url("/m.onnx"), None)
    assert "MLSERVER_NPU_DOWNLOAD_RETRIES" in message


def test_a_remote_folder_uri_asks_for_a_file_or_an_archive(files, settings):
    message = fails(files.url("/models/resnet/"), settings)
    assert "names a folder" in message and ".tar.gz" in message
    assert files.requests["/models/resnet/"] == 0
