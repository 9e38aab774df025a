"""The `tiles` preprocessing op over a live server: one image of a row of handwritten digits in,
the number out (read-number), equal to classifying the crops one by one through digits-image;
tiles spread over two sessions; per-image regrouping; bad widths as 400s with the index."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

import images
import reference
from images import b64, encode
from server import MODEL_REPOSITORY, Server, copy_model, copy_repository, grpc_calls
from test_pool import _busy_model

TILE = 64


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiles")
    repository = copy_repository(
        root / "repo", models=["digits", "digits-b4", "digits-image", "read-number"]
    )
    settings = json.loads((MODEL_REPOSITORY / "read-number/model-settings.json").read_text())
    postprocess = settings["parameters"]["extra"]["postprocess"]
    top3 = dict(postprocess, top_k=3)
    del top3["join"]
    copy_model(MODEL_REPOSITORY / "read-number", repository, "read-number-top3",
               {"postprocess": top3})
    busy = copy_model(MODEL_REPOSITORY / "read-number", repository, "read-number-busy",
                      {"postprocess": dict(postprocess, output="y")})
    _busy_model(busy / "model.onnx", batch=4, features=(64, 10))
    settings = json.loads((busy / "model-settings.json").read_text())
    settings["parameters"]["uri"] = "./model.onnx"
    (busy / "model-settings.json").write_text(json.dumps(settings))
    running = Server.start(repository, root)
    running.busy_model = busy / "model.onnx"
    yield running
    running.stop()


def _row(indices, fmt):
    """One image of held-out digits side by side, 64x64 each, encoded as `fmt`."""
    _, x_test, _, _ = images.digits_split()
    row = Image.new("L", (TILE * len(indices), TILE))
    for position, index in enumerate(indices):
        row.paste(Image.open(io.BytesIO(images.digit_file(x_test[index], "PNG"))),
                  (TILE * position, 0))
    return encode(row, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def _crops(data):
    """The 64x64 tiles of an encoded image as decoded, each as a lossless PNG."""
    image = Image.open(io.BytesIO(data)).convert("L")
    return [encode(image.crop((left, 0, left + TILE, TILE)), "PNG")
            for left in range(0, image.width, TILE)]


def _images_input(files):
    return {"name": "input", "shape": [len(files)], "datatype": "BYTES",
            "data": [b64(f) for f in files]}


def _outputs(response):
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def _one_by_one(live, data):
    """Each crop in a request of its own to digits-image: its top-1 labels, joined."""
    labels = []
    for crop in _crops(data):
        outputs = _outputs(live.infer("digits-image", [_images_input([crop])]))
        labels.append(images.parse_classes([outputs["probabilities"]["data"]])[0][0][2])
    return "".join(labels)


JOINED = [{"name": "probabilities"}]
NUMBERS = [[3, 14, 15, 92, 65, 35, 89], [7, 9, 3]]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_row_of_digits_reads_as_the_crops_classified_one_by_one_over_rest(live, fmt):
    files = [_row(indices, fmt) for indices in NUMBERS]
    want = [_one_by_one(live, data) for data in files]
    assert [len(w) for w in want] == [7, 3]
    outputs = _outputs(live.infer("read-number", [_images_input(files)], JOINED))
    assert outputs["probabilities"]["datatype"] == "BYTES"
    assert outputs["probabilities"]["shape"] == [2]
    assert outputs["probabilities"]["data"] == want


def test_a_row_of_digits_over_grpc(live):
    files = [_row(NUMBERS[0], fmt) for fmt in ("PNG", "JPEG")]
    want = [_one_by_one(live, data) for data in files]
    calls = [{"op": "infer", "model": "read-number", "inputs": [_images_input([data])]}
             for data in files]
    for result, number in zip(grpc_calls(live.grpc_target, calls), want):
        outputs = result["ok"]["outputs"]
        assert outputs["probabilities"]["shape"] == [1]
        assert [base64.b64decode(s).decode() for s in outputs["probabilities"]["data"]] == [number]
        # the other output, regrouped per image: [images, tiles]
        assert outputs["label"]["shape"] == [1, 7]
        assert "".join(map(str, outputs["label"]["data"])) == number


def test_the_example_image_reads_as_its_number(live):
    data = (MODEL_REPOSITORY.parent / "examples/images/number.png").read_bytes()
    outputs = _outputs(live.infer("read-number", [_images_input([data])]))
    assert outputs["probabilities"]["data"] == [_one_by_one(live, data)]
    metadata = live.http.get("/v2/models/read-number").json()
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == {
        "label": [-1, -1], "probabilities": [-1]}


def test_top_k_without_join_is_images_by_tiles_by_k(live):
    files = [_row([1, 2, 3, 4], "PNG"), _row([50, 60, 70, 80], "PNG")]
    outputs = _outputs(live.infer("read-number-top3", [_images_input(files)]))
    assert outputs["probabilities"]["shape"] == [2, 4, 3]
    strings = np.array(outputs["probabilities"]["data"]).reshape(8, 3)
    crops = [crop for data in files for crop in _crops(data)]
    scores = reference.run("digits", {"input": np.stack([images.digit_row(c) for c in crops])})
    rows = images.parse_classes(strings)
    want = images.top_k(scores["probabilities"], 3)
    assert [[i for _, i, _ in row] for row in rows] == want.tolist()
    np.testing.assert_allclose([[s for s, _, _ in row] for row in rows],
                               np.sort(scores["probabilities"], axis=1)[:, ::-1][:, :3], atol=2e-6)


def test_images_of_different_lengths_join_but_do_not_stack(live):
    files = [_row([5, 6], "PNG"), _row([7, 8, 9, 10, 11], "PNG")]
    outputs = _outputs(live.infer("read-number", [_images_input(files)], JOINED))
    assert outputs["probabilities"]["data"] == [_one_by_one(live, data) for data in files]
    response = live.infer("read-number", [_images_input(files)])  # `label` too: [2, ?]
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    for word in ["output 'label'", "different numbers of tiles (2, 5)", "joined"]:
        assert word in message, (word, message)


def test_an_image_whose_width_is_not_a_multiple_of_the_tile_is_400_with_its_index(live):
    good = _row([1, 2], "PNG")
    bad = encode(Image.new("L", (TILE * 3 + 10, TILE)), "PNG")
    response = live.infer("read-number", [_images_input([good, bad])])
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    for word in ["input 'input', batch index 1", "64x202", "64x64 tiles", "multiples"]:
        assert word in message, (word, message)
    (result,) = grpc_calls(live.grpc_target, [
        {"op": "infer", "model": "read-number", "inputs": [_images_input([bad])]}])
    assert result["status"] == "StatusCode.INVALID_ARGUMENT", result
    assert "batch index 0" in result["error"]
    assert _outputs(live.infer("read-number", [_images_input([good])]))["probabilities"]["data"]


def test_the_tiles_of_one_image_run_on_both_sessions_at_once(live):
    """12 tiles, a static batch of 4: three runs, which least-busy dispatch spreads over the two
    sessions while they overlap (runs of the busy model take milliseconds)."""
    data = _row(list(range(100, 112)), "PNG")
    before = live.session_runs("read-number-busy")
    outputs = _outputs(live.infer("read-number-busy", [_images_input([data])]))
    after = live.session_runs("read-number-busy")
    assert {s: after[s] - before[s] for s in after} == {"0": 2, "1": 1}
    pixels = np.stack([images.digit_row(crop) for crop in _crops(data)])
    session = reference.session(live.busy_model)  # static batch 4: three runs
    scores = np.concatenate([session.run(None, {"x": pixels[i : i + 4]})[0] for i in (0, 4, 8)])
    assert outputs["y"]["data"] == ["".join(map(str, scores.argmax(axis=1)))]


CONVERT, TILES = {"op": "convert", "mode": "L"}, {"op": "tiles", "size": [TILE, TILE]}
RESIZE, SCALE = {"op": "resize", "size": [8, 8], "resample": "box"}, {"op": "scale", "factor": 16}
# (id, preprocess, postprocess changes, words the load error must contain)
BROKEN = [
    ("tiles-twice", [CONVERT, TILES, TILES, RESIZE], {}, ["'tiles' is given more than once"]),
    ("tiles-after-scale", [CONVERT, RESIZE, SCALE, TILES], {},
     ["'tiles' works on images: put it before 'scale'"]),
    ("tiles-too-big", [CONVERT, TILES], {}, ["64x64x1 values per image", "takes 64"]),
    ("bad-tile-size", [CONVERT, {"op": "tiles", "size": [0, 8]}, RESIZE], {},
     ["'parameters.extra.preprocess.1.tiles.size"]),
    ("join-not-a-string", [CONVERT, TILES, RESIZE], {"join": 1},
     ["'parameters.extra.postprocess.join'"]),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_a_broken_tiles_configuration_fails_the_load(live, case):
    name, preprocess, changes, words = case
    settings = json.loads((MODEL_REPOSITORY / "read-number/model-settings.json").read_text())
    extra = settings["parameters"]["extra"]
    copy_model(MODEL_REPOSITORY / "read-number", live.repository, name,
               {"preprocess": preprocess, "postprocess": {**extra["postprocess"], **changes}})
    live.assert_load_fails(name, words)
    assert _outputs(live.infer("read-number", [_images_input([_row([4], "PNG")])]))
