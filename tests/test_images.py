"""Images in, labels out, over a live server: encoded images through the image codec and the
preprocessing (compared with Pillow/numpy computed here), classification strings (compared
with onnxruntime run directly), bad images as 400s, bad configurations as load errors."""
import base64
import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto
from PIL import Image

import images
import reference
from images import b64, encode, photo
from reference import identity_model, v2_input
from server import REPO, Server, copy_repository, grpc_calls, write_model

MAX_PIXELS = 2_000_000


OPS = [
    {"op": "convert", "mode": "RGB"},
    {"op": "resize", "shorter_side": 40, "resample": "bicubic"},
    {"op": "center_crop", "size": [32, 48]},
    {"op": "scale", "divisor": 255},
    {"op": "normalize", "mean": 0.5, "std": [0.25, 0.5, 1.0]},
    {"op": "layout", "layout": "NHWC"},
]
F, U8 = TensorProto.FLOAT, TensorProto.UINT8
# name -> (dtype, shape, parameters.extra, model-settings outputs)
IDENTITY_MODELS = {
    "identity-imagenet": (F, ["N", 3, 224, 224], {"preprocess": "imagenet"}, None),
    "identity-imagenet-112": (F, ["N", 3, 112, 112], {"preprocess": "imagenet"}, None),
    "identity-mnist": (F, ["N", 1, 28, 28], {"preprocess": "mnist"}, None),
    # PaddleOCR's `min` limit enlarges the shorter side, the longer along with it
    "identity-multiple": (F, ["N", 3, "H", "W"], {"preprocess": [
        {"op": "resize_to_multiple", "limit_side_len": 736, "limit_type": "min"},
        {"op": "layout", "layout": "NCHW"},
    ]}, None),
    "identity-ops": (F, ["N", "H", "W", 3], {"preprocess": OPS}, None),
    # no preprocess: images still work with the model's size, layout and dtype; model-settings
    # declares the input and the output as images
    "identity-uint8": (U8, ["N", 32, 32, 3], {}, {
        name: [{"name": name[0], "datatype": "BYTES", "shape": [-1],
                "parameters": {"content_type": "image"}}]
        for name in ("x-inputs", "y-outputs")
    }),
}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    repository = copy_repository(
        root / "repo", models=["digits", "digits-image", "squeezenet", "squeezenet-image"]
    )
    for name, (dtype, shape, extra, declared) in IDENTITY_MODELS.items():
        write_model(repository / name, name, extra, model=identity_model(dtype, shape), declared=declared)
    running = Server.start(repository, root, env={"MLSERVER_NPU_MAX_IMAGE_PIXELS": str(MAX_PIXELS)})
    yield running
    running.stop()


def _images_input(files, name="input", content_type=None):
    tensor = {"name": name, "shape": [len(files)], "datatype": "BYTES", "data": [b64(f) for f in files]}
    if content_type:
        tensor["parameters"] = {"content_type": content_type}
    return tensor


def _outputs(response):
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def _array(output, dtype=np.float32):
    return np.array(output["data"], dtype).reshape(output["shape"])


# --- the example models: real digit images classified at the model's accuracy ---

@pytest.fixture(scope="module")
def held_out():
    _, x_test, _, y_test = images.digits_split()
    measured = np.mean(reference.run("digits", {"input": x_test.astype(np.float32)})["label"] == y_test)
    files = {
        fmt: [images.digit_file(x, fmt) for x in x_test]
        for fmt in ("PNG", "JPEG")
    }
    return files, y_test, measured


def _expected_digits(files):
    """onnxruntime on the digits model, fed the images preprocessed here."""
    return reference.run("digits", {"input": np.stack([images.digit_row(f) for f in files])})


def _check_classes(strings, probabilities, k, labels=True):
    rows = images.parse_classes(strings)
    order = images.top_k(probabilities, k)
    assert [[index for _, index, _ in row] for row in rows] == order.tolist()
    for row, indices, scores in zip(rows, order, probabilities.reshape(len(rows), -1)):
        np.testing.assert_allclose([s for s, _, _ in row], scores[indices], atol=1e-6)
        assert [label for _, _, label in row] == ([str(i) for i in indices] if labels else [None] * k)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_digit_images_over_rest_reach_the_models_accuracy(live, held_out, fmt):
    files, y_test, measured = held_out
    outputs = _outputs(live.infer("digits-image", [_images_input(files[fmt])]))
    labels = np.array(outputs["label"]["data"])
    assert np.mean(labels == y_test) >= measured
    want = _expected_digits(files[fmt])
    assert labels.tolist() == want["label"].tolist()
    assert outputs["probabilities"]["datatype"] == "BYTES"
    assert outputs["probabilities"]["shape"] == [len(y_test), 3]
    _check_classes(np.array(outputs["probabilities"]["data"]).reshape(-1, 3), want["probabilities"], 3)


def test_digit_images_over_grpc_reach_the_models_accuracy(live, held_out):
    files, y_test, measured = held_out
    calls = [
        {"op": "infer", "model": "digits-image",
         "inputs": [_images_input(files[fmt])],
         # tritonclient's InferRequestedOutput(name, class_count=K)
         "outputs": [{"name": "label"}, {"name": "probabilities", "class_count": 5}]}
        for fmt in ("PNG", "JPEG")
    ]
    for fmt, result in zip(("PNG", "JPEG"), grpc_calls(live.grpc_target, calls)):
        outputs = result["ok"]["outputs"]
        labels = np.array(outputs["label"]["data"])
        assert np.mean(labels == y_test) >= measured, fmt
        strings = [base64.b64decode(s) for s in outputs["probabilities"]["data"]]
        assert outputs["probabilities"]["shape"] == [len(y_test), 5]
        _check_classes(np.array(strings, dtype=object).reshape(-1, 5),
                       _expected_digits(files[fmt])["probabilities"], 5)


def test_tritonclient_http_sends_an_image_and_asks_for_classes(live, held_out):
    files, _, _ = held_out
    batch = files["JPEG"][:4]
    client = httpclient.InferenceServerClient(live.url.removeprefix("http://"))
    tensor = httpclient.InferInput("input", [len(batch)], "BYTES")
    tensor.set_data_from_numpy(np.array([b64(f) for f in batch], dtype=object), binary_data=False)
    requested = httpclient.InferRequestedOutput("probabilities", binary_data=False, class_count=2)
    result = client.infer("digits-image", [tensor], outputs=[requested])
    strings = result.as_numpy("probabilities")
    assert strings.shape == (4, 2)
    _check_classes(strings, _expected_digits(batch)["probabilities"], 2)


def test_a_bare_string_is_one_image_and_content_type_is_optional(live, held_out):
    files, _, _ = held_out
    one = files["PNG"][7]
    tensor = {"name": "input", "shape": [1], "datatype": "BYTES", "data": b64(one),
              "parameters": {"content_type": "image"}}
    outputs = _outputs(live.infer("digits-image", [tensor]))
    assert outputs["label"]["data"] == _expected_digits([one])["label"].tolist()


def test_image_model_metadata_shows_what_clients_send(live):
    metadata = live.http.get("/v2/models/digits-image").json()
    assert metadata["inputs"] == [
        {"name": "input", "datatype": "BYTES", "shape": [-1], "parameters": {"content_type": "image"}}
    ]
    outputs = {o["name"]: o for o in metadata["outputs"]}
    assert outputs["probabilities"]["datatype"] == "BYTES"
    assert outputs["probabilities"]["shape"] == [-1, 3]
    assert outputs["label"]["datatype"] == "INT64"


def test_classification_0_returns_the_raw_scores(live, held_out):
    files, _, _ = held_out
    batch = files["PNG"][:3]
    outputs = _outputs(live.infer(
        "digits-image", [_images_input(batch)],
        [{"name": "probabilities", "parameters": {"classification": 0}}],
    ))
    np.testing.assert_allclose(_array(outputs["probabilities"]),
                               _expected_digits(batch)["probabilities"], rtol=1e-5, atol=1e-6)


def test_any_output_can_be_classified_per_request(live):
    feeds = reference.sample_inputs("digits", 5)
    outputs = _outputs(live.infer(
        "digits", [v2_input("input", feeds["input"])],
        [{"name": "probabilities", "parameters": {"classification": 4}}],
    ))
    strings = np.array(outputs["probabilities"]["data"]).reshape(5, 4)
    # the digits model has no postprocess configured: "score:index", no labels
    _check_classes(strings, reference.run("digits", feeds)["probabilities"], 4, labels=False)


def test_postprocess_softmax_and_output_name(live):
    """`softmax` ranks and prints softmax(scores); `output_name` returns the strings under that
    name beside the raw scores."""
    name = "digits-softmax"
    postprocess = {"type": "classification", "top_k": 4, "labels": "../digits/labels.txt",
                   "softmax": True, "output": "probabilities", "output_name": "classes"}
    write_model(live.repository / name, name, {"postprocess": postprocess},
                uri="../digits/model.onnx")
    assert live.http.post(f"/v2/repository/models/{name}/load").status_code == 200
    metadata = live.http.get(f"/v2/models/{name}").json()
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [
        ("label", "INT64"), ("probabilities", "FP32"), ("classes", "BYTES")
    ]
    feeds = reference.sample_inputs("digits", 5)
    outputs = _outputs(live.infer(name, [v2_input("input", feeds["input"])]))
    scores = reference.run("digits", feeds)["probabilities"]
    np.testing.assert_allclose(_array(outputs["probabilities"]), scores, rtol=1e-5, atol=1e-6)
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    _check_classes(np.array(outputs["classes"]["data"]).reshape(5, 4),
                   exp / exp.sum(axis=1, keepdims=True), 4)


def test_squeezenet_with_the_imagenet_preset(live):
    files = [encode(photo(320, 240, 3), "JPEG", quality=90), encode(photo(200, 260, 4), "PNG")]
    outputs = _outputs(live.infer("squeezenet-image", [_images_input(files, "data_0")]))
    scores = reference.run("squeezenet", {"data_0": np.stack([images.imagenet(f) for f in files])})
    strings = np.array(outputs["softmaxout_1"]["data"]).reshape(2, 5)
    rows = images.parse_classes(strings)
    order = images.top_k(scores["softmaxout_1"], 5)
    assert [[i for _, i, _ in row] for row in rows] == order.tolist()
    assert [[label for _, _, label in row] for row in rows] == [
        [f"class_{i:03d}" for i in indices] for indices in order
    ]


# --- preprocessing equals what Pillow and numpy compute here ---

def _served_tensor(live, model, files, content_type=None):
    outputs = _outputs(live.infer(model, [_images_input(files, "x", content_type)]))
    return _array(outputs["y"])


def test_imagenet_preset_equals_the_reference_for_every_format(live):
    big = photo(1024, 768, 5)
    files = [
        encode(photo(300, 200, 6), "PNG"),
        encode(big, "JPEG", quality=90),  # decoded at half size (draft)
        images.rotated_jpeg(big),  # stored sideways, EXIF orientation 6
        images.two_frame_gif(120, 90),  # first frame
        encode(photo(256, 256, 7), "BMP"),
        encode(photo(230, 300, 8), "WEBP", quality=90),
        encode(photo(240, 240, 9).convert("RGBA"), "PNG"),
        encode(photo(300, 260, 10).convert("L"), "JPEG"),
    ]
    served = _served_tensor(live, "identity-imagenet", files)
    assert served.shape == (len(files), 3, 224, 224)
    for index, data in enumerate(files):
        np.testing.assert_allclose(served[index], images.imagenet(data), atol=1e-5, err_msg=index)
    # the rotated JPEG really was turned upright, and the big one decoded at half size
    assert not np.allclose(served[1], served[2], atol=0.1)
    drafted = Image.open(io.BytesIO(files[1]))
    drafted.draft(None, (341, 256))
    assert drafted.size == (512, 384)
    assert not np.allclose(served[1], images.imagenet(files[1], draft=False), atol=1e-3)


def test_a_static_model_size_overrides_the_preset_size(live):
    files = [encode(photo(300, 200, 11), "PNG")]
    served = _served_tensor(live, "identity-imagenet-112", files)
    # 224 -> 112 halves the resize too: shorter side 128, crop 112
    np.testing.assert_allclose(served[0], images.imagenet(files[0], 128, 112), atol=1e-5)


def test_mnist_preset_equals_the_reference(live):
    deep = np.random.default_rng(20).integers(0, 65536, (40, 30), dtype=np.uint16)
    files = [
        encode(photo(64, 48, 12), "PNG"),
        encode(photo(28, 28, 13).convert("L"), "PNG"),
        encode(Image.fromarray(deep), "PNG"),  # 16-bit grayscale
    ]
    served = _served_tensor(live, "identity-mnist", files)
    assert served.shape == (3, 1, 28, 28)
    for index, data in enumerate(files[:2]):
        np.testing.assert_allclose(served[index], images.mnist(data), atol=1e-4)
    # 16 bits keep their high byte
    high = Image.fromarray((deep >> 8).astype(np.uint8))
    np.testing.assert_allclose(served[2], images.mnist(encode(high, "PNG")), atol=1e-4)


def test_an_op_list_equals_the_reference(live):
    files = [encode(photo(100, 70, 14), "PNG"), encode(photo(50, 90, 15), "JPEG", quality=95)]
    served = _served_tensor(live, "identity-ops", files)
    assert served.shape == (2, 32, 48, 3)
    size = images.shorter_side(40)
    for index, data in enumerate(files):
        image = images.upright(data, size).convert("RGB")
        image = images.center_crop(image.resize(size(*image.size), Image.Resampling.BICUBIC), 32, 48)
        pixels = np.asarray(image, np.float32) / np.float32(255)
        want = (pixels - np.float32(0.5)) / np.array([0.25, 0.5, 1.0], np.float32)
        np.testing.assert_allclose(served[index], want, atol=1e-5)


@pytest.mark.parametrize("content_type", ["image", None])
def test_without_preprocess_images_take_the_models_shape_and_come_back_as_png(live, content_type):
    # without a content type, the model-settings input declared as an image decides
    files = [encode(photo(64, 40, 16), "PNG"), encode(photo(20, 30, 17), "PNG")]
    outputs = _outputs(live.infer("identity-uint8", [_images_input(files, "x", content_type)]))
    assert outputs["y"]["datatype"] == "BYTES" and outputs["y"]["shape"] == [2]
    assert outputs["y"]["parameters"]["content_type"] == "image"
    for data, png in zip(files, outputs["y"]["data"]):
        returned = Image.open(io.BytesIO(base64.b64decode(png)))
        assert returned.format == "PNG"
        want = Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
        assert np.array_equal(np.asarray(returned), np.asarray(want))


def test_concurrent_image_requests_under_adaptive_batching_get_their_own_labels(live, held_out):
    files, _, _ = held_out
    name = "digits-image-batched"
    write_model(live.repository / name, name, _digits_extra(), uri="../digits/model.onnx",
                max_batch_size=3, max_batch_time=5)
    assert live.http.post(f"/v2/repository/models/{name}/load").status_code == 200
    batches = [files["PNG"][i : i + size] for i, size in ((0, 1), (10, 2), (20, 3))]
    runs = live.session_runs(name).get("0", 0)
    with ThreadPoolExecutor(len(batches)) as pool:
        responses = list(pool.map(lambda b: live.infer(name, [_images_input(b)]), batches))
    # the three requests were merged (max_batch_size 3 sends them as soon as all came): one run
    assert live.session_runs(name)["0"] - runs == 1
    for batch, response in zip(batches, responses):
        outputs = _outputs(response)
        want = _expected_digits(batch)
        assert outputs["label"]["data"] == want["label"].tolist()
        assert outputs["probabilities"]["shape"] == [len(batch), 3]
        _check_classes(np.array(outputs["probabilities"]["data"]).reshape(-1, 3),
                       want["probabilities"], 3)


# --- bad images are 400s naming the input and the batch index; the server keeps serving ---

GOOD = encode(photo(40, 40, 18), "PNG")
TRUNCATED = encode(photo(200, 200, 19), "JPEG")[:5000]  # header intact, pixels cut
BOMB = images.png_claiming(2000, 1001)  # 2,002,000 pixels > MAX_PIXELS
# 200,000 pixels in a few hundred bytes, but 12.8 M after the imagenet preset's shorter side
# 256 (36.8 M after resize_to_multiple's min 736): every op's result counts against MAX_PIXELS
SLIVER = encode(Image.new("RGB", (100_000, 2)), "PNG")

# (id, model, input tensor, requested outputs, words the error must contain)
BAD_REQUESTS = [
    ("bad-base64", "digits-image",
     {"name": "input", "shape": [2], "datatype": "BYTES", "data": [b64(GOOD), "not base64!"]},
     None, ["input 'input', batch index 1", "not valid base64"]),
    ("not-an-image", "digits-image", _images_input([b"this is no image", GOOD]),
     None, ["input 'input', batch index 0", "not a decodable image", "unknown format"]),
    ("empty-payload", "digits-image", _images_input([GOOD, b""]),
     None, ["input 'input', batch index 1", "empty payload"]),
    ("truncated", "digits-image", _images_input([GOOD, GOOD, TRUNCATED]),
     None, ["input 'input', batch index 2", "cannot decode the JPEG data"]),
    ("too-many-pixels", "digits-image", _images_input([BOMB]),
     None, ["input 'input', batch index 0", "2000x1001", "over the limit of 2000000",
            "MLSERVER_NPU_MAX_IMAGE_PIXELS"]),
    ("count-mismatch", "digits-image",
     {"name": "input", "shape": [3], "datatype": "BYTES", "data": [b64(GOOD)] * 2},
     None, ["input 'input'", "needs 3 images, got 2"]),
    ("matrix-shape", "digits-image",
     {"name": "input", "shape": [2, 2], "datatype": "BYTES", "data": [b64(GOOD)] * 4},
     None, ["input 'input'", "shape [N]", "[2, 2]"]),
    ("no-images", "digits-image",
     {"name": "input", "shape": [0], "datatype": "BYTES", "data": []},
     None, ["input 'input'", "no images"]),
    ("image-not-bytes", "digits-image",
     {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64,
      "parameters": {"content_type": "image"}},
     None, ["input 'input'", "needs datatype BYTES"]),
    ("model-without-image-shape", "digits", _images_input([GOOD], content_type="image"),
     None, ["input 'input'", "an image gives 4800 values", "[-1, 64]", "takes 64"]),
    ("sliver-imagenet", "squeezenet-image", _images_input([GOOD, SLIVER], "data_0"),
     None, ["input 'data_0', batch index 1", "2x100000", "'resize' would make it 256x12800000",
            f"more than the {MAX_PIXELS}", "max_image_pixels"]),
    ("sliver-resize-to-multiple", "identity-multiple", _images_input([SLIVER], "x"),
     None, ["input 'x', batch index 0", "'resize_to_multiple' would make it 736x36800000"]),
    ("bad-class-count", "digits-image", _images_input([GOOD]),
     [{"name": "probabilities", "parameters": {"classification": -2}}],
     ["output 'probabilities'", "non-negative integer"]),
    ("unknown-output", "digits-image", _images_input([GOOD]), [{"name": "scores"}],
     ["unknown output 'scores'", "'probabilities'"]),
    # classification strings drawn as an image: of a postprocess's output, of a model's own
    ("classified-image-of-a-postprocess", "digits-image", _images_input([GOOD]),
     [{"name": "probabilities", "parameters": {"classification": 3, "content_type": "image"}}],
     ["output 'probabilities': cannot be both classification strings and images"]),
    ("classified-image-of-a-model-output", "digits", _images_input([GOOD], content_type="image"),
     [{"name": "probabilities", "parameters": {"classification": 3, "content_type": "image"}}],
     ["output 'probabilities': cannot be both classification strings and images"]),
]


def _digits_image_still_serves(live):
    outputs = _outputs(live.infer("digits-image", [_images_input([GOOD])]))
    assert outputs["label"]["data"] == _expected_digits([GOOD])["label"].tolist()


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_a_bad_image_request_is_400_naming_the_input(live, case):
    _, model, tensor, outputs, words = case
    response = live.infer(model, [tensor], outputs)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, (word, message)
    _digits_image_still_serves(live)


def test_max_image_pixels_of_a_model_overrides_the_server_default(live):
    """MLSERVER_NPU_MAX_IMAGE_PIXELS (MAX_PIXELS here) refuses BOMB from its header; a model
    whose max_image_pixels is higher reads on, and finds the data too short for the header."""
    name = "digits-image-3mp"
    write_model(live.repository / name, name, _digits_extra(max_image_pixels=3_000_000),
                uri="../digits/model.onnx")
    assert live.http.post(f"/v2/repository/models/{name}/load").status_code == 200
    response = live.infer(name, [_images_input([BOMB])])
    assert response.status_code == 400, response.text
    assert "cannot hold the 2000x1001 pixels its header claims" in response.json()["error"]
    assert "over the limit" in live.infer("digits-image", [_images_input([BOMB])]).text


def test_bad_images_over_grpc_are_invalid_argument(live):
    cases = [c for c in BAD_REQUESTS if c[0] in
             {"not-an-image", "empty-payload", "truncated", "too-many-pixels"}]
    calls = [{"op": "infer", "model": model, "inputs": [tensor]} for _, model, tensor, _, _ in cases]
    calls.append({"op": "infer", "model": "digits-image", "inputs": [_images_input([GOOD])]})
    results = grpc_calls(live.grpc_target, calls)
    for case, result in zip(cases, results):
        assert result.get("status") == "StatusCode.INVALID_ARGUMENT", (case[0], result)
        for word in case[4]:
            assert word in result["error"], (case[0], word, result["error"])
    assert results[-1]["ok"]["outputs"]["label"]["data"] == _expected_digits([GOOD])["label"].tolist()


# --- configurations that cannot work fail the load, saying why ---

def _digits_extra(**changes):
    extra = json.loads((REPO / "model-repository/digits-image/model-settings.json").read_text())
    extra = extra["parameters"]["extra"]
    extra.update(changes)
    return extra


POSTPROCESS = _digits_extra()["postprocess"]
# (folder, uri, extra, words the load error must contain)
BROKEN = [
    ("labels-missing", "../digits/model.onnx",
     _digits_extra(postprocess=dict(POSTPROCESS, labels="nowhere.txt")),
     ["labels file", "nowhere.txt", "('parameters.extra.postprocess.labels') does not exist"]),
    ("labels-short", "../digits/model.onnx",
     _digits_extra(postprocess=dict(POSTPROCESS, labels="short.txt")),
     ["short.txt", "has 5 labels", "output 'probabilities' has 10 classes"]),
    ("unknown-op", "../digits/model.onnx", _digits_extra(preprocess=[{"op": "rezise", "size": 8}]),
     ["'parameters.extra.preprocess.0'", "'rezise'", "'resize'"]),
    ("unknown-op-key", "../digits/model.onnx",
     _digits_extra(preprocess=[{"op": "resize", "sise": 8}]),
     ["unknown key 'parameters.extra.preprocess.0.resize.sise'"]),
    ("unknown-preset", "../squeezenet/model.onnx", {"preprocess": "imagenett"},
     ["unknown preset 'imagenett'", "imagenet, mnist"]),
    ("wrong-channels", "../squeezenet/model.onnx", {"preprocess": "mnist"},
     ["1 channel(s) (mode L)", "'data_0'", "has 3"]),
    ("wrong-size", "../digits/model.onnx",
     _digits_extra(preprocess=[{"op": "resize", "size": 10}]),
     ["10x10x3 values per image", "takes 64"]),
    ("unknown-scores-output", "../digits/model.onnx",
     _digits_extra(postprocess=dict(POSTPROCESS, output="scores")),
     ["postprocess.output 'scores'", "label, probabilities"]),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_a_broken_image_configuration_fails_the_load(live, case):
    name, uri, extra, words = case
    folder = live.repository / name
    write_model(folder, name, extra, uri=uri)
    (folder / "short.txt").write_text("".join(f"{i}\n" for i in range(5)))
    live.assert_load_fails(name, words)
    _digits_image_still_serves(live)


# --- the example client in the README ---

@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_example_client_prints_labels(live, protocol):
    url = live.grpc_target if protocol == "grpc" else live.url.removeprefix("http://")
    sample = REPO / "examples" / "images" / "digit-7.jpg"
    completed = subprocess.run(
        [sys.executable, str(REPO / "examples" / "classify.py"), "--protocol", protocol,
         "--url", url, str(sample)],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    path, strings = completed.stdout.strip().split(": ")
    rows = images.parse_classes([strings.split()])
    want = _expected_digits([sample.read_bytes()])["probabilities"]
    assert [i for _, i, _ in rows[0]] == images.top_k(want, 3)[0].tolist()
    assert rows[0][0][2] == "7"
