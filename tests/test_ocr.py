"""OCR over a live server: `model-repository/ocr` (PP-OCRv4 detect, orient, recognize in one
pipeline) reads rendered text as rapidocr-onnxruntime does on the same images (same strings,
boxes IoU >= 0.9), over REST and gRPC, in batches of images of different sizes, with several
sessions and with the plugin's batcher; regions fan out over sessions; errors name the step.

rapidocr-onnxruntime is fetched as a wheel without its dependencies (tests/ocr_reference.py):
it declares opencv-python, which would break the headless cv2 of this environment.
"""
import base64
import io
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import cv2
import ocr_reference as R
import reference
from server import MODEL_REPOSITORY, REPO, Server, copy_model, copy_repository, grpc_calls

SANS, BOLD, SERIF, MONO = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"
)
OCR_MODELS = ["ocr", "ocr-det", "ocr-rec", "ocr-cls"]
STRICT = 0.99  # a text score some lines of `letter` miss
DIGITS_MODELS = ["digits", "digits-image", "digits-detector", "digits-crops"]


def _pages():
    """Text the shipped example never shows: several fonts, sizes and angles, an upside-down
    page (the direction classifier must turn its lines), and a page without text."""
    return {
        "letter": R.render([("Dear customer,", SERIF, 28), ("parcel 88-1042 left", SANS, 24),
                            ("Rotterdam today", SANS, 24), ("serial XK-2291-B", MONO, 18)],
                           (400, 300)),
        "tilted": R.render([("GRAND OPENING", BOLD, 36), ("Saturday 9 to 6", SERIF, 28)],
                           (440, 330), angle=6, origin=(50, 70)),
        "upside": R.render([("Handle with care", BOLD, 30), ("This side up", SANS, 26)],
                           (380, 300), origin=(40, 80)).rotate(180),
        "blank": R.render([], (300, 260)),
        # text against the right edge: what padding on the right would change
        "edge": R.render([("Exit 24", BOLD, 34), ("north gate", SANS, 28)], (360, 300),
                         origin=(214, 60)),
    }


@pytest.fixture(scope="module")
def pages():
    """name -> (PNG bytes, rapidocr's texts, quadrilaterals)."""
    engine = R.rapidocr()
    found = {}
    for name, image in _pages().items():
        data = R.png(image)
        texts, quads, _ = R.read(engine, data)
        found[name] = (data, texts, quads)
    assert found["blank"][1] == [] and all(found[n][1] for n in ("letter", "tilted", "upside"))
    return found


def _pipeline(repository, name, **changes):
    """A copy of the shipped `ocr` pipeline; `changes` replace keys of its steps' regions
    (`recognize={"max_regions": 2}`), its steps' models (`models={"recognize": "../x"}`) or
    its outputs (`outputs={...}`)."""
    folder = repository / name
    shutil.copytree(MODEL_REPOSITORY / "ocr", folder)
    path = folder / "model-settings.json"
    settings = json.loads(path.read_text())
    settings["name"] = name
    for step in settings["parameters"]["extra"]["steps"]:
        step["model"] = changes.get("models", {}).get(step["name"], step["model"])
        step.get("regions", {}).update(changes.get(step["name"], {}))
    settings["parameters"]["extra"]["outputs"] = changes.get(
        "outputs", settings["parameters"]["extra"]["outputs"])
    path.write_text(json.dumps(settings, indent=2))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("ocr")
    repository = copy_repository(root / "repo", models=OCR_MODELS + DIGITS_MODELS)
    # two sessions and the plugin's batcher on the recognizer and the detector
    copy_model(repository / "ocr-rec", repository, "ocr-rec-2",
               {"sessions": 2, "batching": {"max_batch_size": 12, "max_delay_ms": 5}})
    copy_model(repository / "ocr-det", repository, "ocr-det-2",
               {"sessions": 2, "batching": {"max_batch_size": 2, "max_delay_ms": 5}})
    _pipeline(repository, "ocr-batched",
              models={"detect": "../ocr-det-2", "recognize": "../ocr-rec-2"})
    # variants of the regions on one session per model (less to load)
    for name in ("ocr-det", "ocr-rec"):
        copy_model(repository / name, repository, f"{name}-1", {"sessions": 1})
    one = {"detect": "../ocr-det-1", "recognize": "../ocr-rec-1"}
    _pipeline(repository, "ocr-capped", models=one, recognize={"max_regions": 2})
    _pipeline(repository, "ocr-truncated", models=one,
              recognize={"max_regions": 2, "truncate": True})
    _pipeline(repository, "ocr-strict", models=one,
              recognize={"keep": {"output": "text_scores", "threshold": STRICT}})
    # only the joined text: the step's keep and join outputs are not the pipeline's
    _pipeline(repository, "ocr-full-text", models=one,
              outputs={"full_text": "recognize.outputs.full_text"})
    running = Server.start(repository, root)
    running.root = root
    yield running
    running.stop()


def _image_input(files, name="image"):
    return {"name": name, "shape": [len(files)], "datatype": "BYTES",
            "data": [base64.b64encode(f).decode() for f in files]}


def _rest(live, model, files, outputs=None):
    response = live.infer(model, [_image_input(files)], outputs)
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def _lines(outputs, index, decode=lambda v: v):
    """The texts and quadrilaterals of image `index` of a response."""
    count = outputs["num_texts"]["data"][index]
    width = outputs["text"]["shape"][1]
    texts = [decode(t) for t in outputs["text"]["data"][index * width : index * width + count]]
    boxes = np.array(outputs["text_boxes"]["data"], np.float32).reshape(
        outputs["text_boxes"]["shape"]
    )
    return texts, boxes[index, :count]


def _check(outputs, names, pages, decode=lambda v: v):
    assert outputs["num_texts"]["data"] == [len(pages[n][1]) for n in names]
    assert outputs["text"]["shape"] == [len(names), max(len(pages[n][1]) for n in names)]
    for index, name in enumerate(names):
        texts, quads = _lines(outputs, index, decode)
        problem = R.match_lines(texts, quads, pages[name][1], pages[name][2])
        assert problem is None, f"{name}: {problem}"
        joined = decode(outputs["full_text"]["data"][index])
        assert joined == "\n".join(pages[name][1])


def test_reads_what_rapidocr_reads_in_one_batch_of_images_over_rest(live, pages):
    names = ["letter", "blank", "upside", "tilted"]  # of different sizes
    outputs = _rest(live, "ocr", [pages[n][0] for n in names])
    _check(outputs, names, pages)
    scores = np.array(outputs["text_scores"]["data"]).reshape(outputs["text_scores"]["shape"])
    assert np.all(scores[outputs["num_texts"]["data"][0]:] >= 0) and scores[0, 0] > 0.5


def test_reads_the_same_over_grpc_with_sessions_and_the_batcher(live, pages):
    names = ["tilted", "letter", "upside"]
    call = {"op": "infer", "model": "ocr-batched",
            "inputs": [_image_input([pages[n][0] for n in names])]}
    results = grpc_calls(live.grpc_target, [call, {**call, "inputs": [_image_input(
        [pages["blank"][0], pages["letter"][0]])]}])
    first, second = (r["ok"]["outputs"] for r in results)
    text = lambda v: base64.b64decode(v).decode()  # noqa: E731 (gRPC BYTES come as base64)
    _check(first, names, pages, text)
    _check(second, ["blank", "letter"], pages, text)


def test_concurrent_requests_through_the_batcher_each_get_their_own_lines(live, pages):
    names = ["letter", "upside", "tilted"]
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(
            lambda n: live.http.post("/v2/models/ocr-batched/infer",
                                     json={"inputs": [_image_input([pages[n][0]])]}),
            names,
        ))
    for name, reply in zip(names, replies):
        assert reply.status_code == 200, reply.text
        _check({o["name"]: o for o in reply.json()["outputs"]}, [name], pages)


def test_the_regions_of_one_request_fan_out_over_both_sessions(live, pages):
    """The shipped recognizer has two sessions: the groups of one request's lines (one per
    image here) run on both at once."""
    before = live.session_runs("ocr.recognize")
    names = ["letter", "upside"]
    _check(_rest(live, "ocr", [pages[n][0] for n in names]), names, pages)
    after = live.session_runs("ocr.recognize")
    used = {s for s in after if after[s] > before.get(s, 0)}
    assert used == {"0", "1"}, (before, after)


def test_an_image_without_text_runs_no_recognizer(live, pages):
    before = sum(live.session_runs("ocr.recognize").values())
    outputs = _rest(live, "ocr", [pages["blank"][0]])
    assert outputs["num_texts"]["data"] == [0]
    assert outputs["text"]["shape"] == [1, 0] and outputs["text_boxes"]["shape"] == [1, 0, 4, 2]
    assert outputs["full_text"]["data"] == [""]
    assert sum(live.session_runs("ocr.recognize").values()) == before


def test_the_lines_drawn_on_the_image(live, pages):
    data, texts, quads = pages["letter"]
    outputs = _rest(live, "ocr", [data], [{"name": "text_boxes",
                                            "parameters": {"content_type": "image"}},
                                           {"name": "text"}])
    drawn = Image.open(io.BytesIO(base64.b64decode(outputs["text_boxes"]["data"][0])))
    original = Image.open(io.BytesIO(data)).convert("RGB")
    assert drawn.size == original.size
    changed = np.any(np.asarray(drawn.convert("RGB")) != np.asarray(original), axis=2)
    x, y = int(quads[0][0][0]), int(quads[0][0][1])
    assert changed[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3].any()  # the outline's corner
    assert changed.mean() < 0.2
    assert outputs["text"]["data"] == texts


def test_lines_under_the_text_score_are_dropped_as_rapidocr_does(live, pages):
    data = pages["letter"][0]
    texts, quads, _ = R.read(R.rapidocr(), data, text_score=STRICT)
    assert 0 < len(texts) < len(pages["letter"][1])
    _check(_rest(live, "ocr-strict", [data]), ["strict"], {"strict": (data, texts, quads)})


def test_a_pipeline_of_the_joined_text_alone_still_keeps_and_joins(live, pages):
    """The recognizer step's `keep` (text_scores) and `join` (text) read outputs that no
    pipeline output names: the step computes them all the same."""
    outputs = _rest(live, "ocr-full-text", [pages["letter"][0]])
    assert list(outputs) == ["full_text"]
    assert outputs["full_text"]["data"] == ["\n".join(pages["letter"][1])]


def test_the_detector_alone_and_its_per_request_threshold(live, pages):
    """ocr-det served alone: rapidocr's boxes; `box_threshold` in the request parameters keeps
    fewer; a threshold out of range is a 400 naming it."""
    data, texts, quads = pages["tilted"]
    body = {"inputs": [_image_input([data], "x")]}
    reply = live.http.post("/v2/models/ocr-det/infer", json=body).json()
    outputs = {o["name"]: o for o in reply["outputs"]}
    found = np.array(outputs["text_boxes"]["data"], np.float32).reshape(-1, 4, 2)
    assert outputs["num_texts"]["data"] == [len(quads)]
    assert all(R.iou(a, b) >= 0.9 for a, b in zip(found, quads))
    scores = outputs["text_scores"]["data"]
    strict = live.http.post("/v2/models/ocr-det/infer", json={
        **body, "parameters": {"box_threshold": (min(scores) + max(scores)) / 2}}).json()
    assert 0 < {o["name"]: o for o in strict["outputs"]}["num_texts"]["data"][0] < len(quads)
    wrong = live.http.post("/v2/models/ocr-det/infer",
                           json={**body, "parameters": {"box_threshold": 2}})
    assert wrong.status_code == 400 and "parameter 'box_threshold'" in wrong.json()["error"]
    # images of different sizes in one request run one by one at their own size: the same
    # scores as alone (padding them into one batch would change what the model sees)
    def detect(files):
        reply = live.http.post("/v2/models/ocr-det/infer",
                               json={"inputs": [_image_input(files, "x")]})
        return {o["name"]: o for o in reply.json()["outputs"]}

    alone = detect([pages["edge"][0]])
    both = detect([pages["letter"][0], pages["edge"][0]])  # edge is the narrower at 736 high
    count = alone["num_texts"]["data"][0]
    assert both["num_texts"]["data"][1] == count > 0
    width = both["text_scores"]["shape"][1]
    np.testing.assert_allclose(
        both["text_scores"]["data"][width : width + count], alone["text_scores"]["data"],
        rtol=1e-6,
    )


def test_more_regions_than_allowed_is_a_400_naming_the_step(live, pages):
    response = live.infer("ocr-capped", [_image_input([pages["letter"][0]])])
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert "step 'orient'" in message or "step 'recognize'" in message
    assert "regions.max_regions (2)" in message and "image 0 has 4 regions" in message


def test_more_regions_than_allowed_are_cut_when_truncate_is_set(live, pages):
    data, texts, quads = pages["letter"]
    _check(_rest(live, "ocr-truncated", [data]), ["first"], {"first": (data, texts[:2], quads)})


def test_a_bad_image_is_a_400_naming_the_step_and_the_image(live, pages):
    response = live.infer("ocr", [_image_input([pages["blank"][0], b"not an image"])])
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert "step 'detect'" in message and "batch index 1: not a decodable image" in message


def test_a_bad_dictionary_fails_the_load_naming_it(live):
    repository = live.repository
    copy_model(repository / "ocr-rec", repository, "ocr-rec-short",
               {"postprocess": {"type": "ctc", "dictionary": "short.txt"}})
    (repository / "ocr-rec-short" / "short.txt").write_text("a\nb\nc\n")
    live.assert_load_fails("ocr-rec-short", [
        "short.txt' gives 5 classes (3 characters, a space and the blank)",
        "the model outputs 6625",
    ])
    copy_model(repository / "ocr-rec", repository, "ocr-rec-missing",
               {"postprocess": {"type": "ctc", "dictionary": "missing.txt"}})
    live.assert_load_fails("ocr-rec-missing", ["missing.txt' cannot be read"])
    assert live.http.get("/v2/models/ocr/ready").status_code == 200


def _digit_labels(image: Image.Image, boxes: np.ndarray) -> list:
    """The `digits` model on each box of a grayscale canvas, cut and prepared by hand: the box
    to whole pixels, 8x8 by area, 0..16 (what digits-image does to a whole image)."""
    pixels = np.asarray(image.convert("L"))
    rows = []
    for x1, y1, x2, y2 in np.round(boxes).astype(int):
        cell = cv2.resize(pixels[y1:y2, x1:x2], (8, 8), interpolation=cv2.INTER_AREA)
        rows.append(cell.astype(np.float32).reshape(64) * 16 / 255)
    scores = reference.run("digits", {"input": np.array(rows, np.float32)})["probabilities"]
    return scores.argmax(axis=1).tolist()


def test_detect_then_classify_each_object(live):
    """digits-crops: the digits detector's boxes cut from the client's images and classified
    by digits-image as one batch, per image: the labels of the crops made by hand, and the
    digits the canvas holds."""
    canvas = Image.open(REPO / "examples" / "images" / "digits-canvas.png")
    half = canvas.crop((0, 0, canvas.width, canvas.height // 2))  # fewer digits, other size
    files = [R.png(canvas), R.png(half)]
    outputs = _rest(live, "digits-crops", files)
    counts = outputs["count"]["data"]
    assert counts[0] == 9 and 0 < counts[1] < 9
    width = outputs["digits"]["shape"][1]
    boxes = np.array(outputs["boxes"]["data"], np.float32).reshape(outputs["boxes"]["shape"])
    for index, image in enumerate([canvas, half]):
        found = outputs["digits"]["data"][index * width : index * width + counts[index]]
        assert found == _digit_labels(image, boxes[index, : counts[index]])
    assert sorted(outputs["digits"]["data"][: counts[0]]) == sorted([8, 2, 0, 8, 7, 3, 6, 0, 2])


def _rapidocr_module(name):
    import importlib

    R.rapidocr()  # puts the unpacked wheel on sys.path
    return importlib.import_module(name)


def test_ctc_decoding_equals_paddleocrs(tmp_path):
    """The `ctc` core on the recognizer's dictionary (its metadata, and the same as a file)
    against rapidocr's CTCLabelDecode, on probabilities with repeats and blanks."""
    from mlserver_npu.processing.ctc import CTCDecoder, CTCSettings

    rec = reference.session(MODEL_REPOSITORY / "ocr-rec" / "model.onnx")
    character = rec.get_modelmeta().custom_metadata_map["character"]
    rng = np.random.default_rng(0)
    best = rng.choice([0, 0, 0, 5, 5, 17, 300, 6624], size=(6, 40))  # blanks, repeats, space
    probabilities = rng.random((6, 40, 6625), dtype=np.float32) * 0.1
    probabilities[np.arange(6)[:, None], np.arange(40)[None], best] = 0.9
    probabilities[5] = 0  # a row of ties: argmax picks the blank
    theirs = _rapidocr_module("rapidocr_onnxruntime.ch_ppocr_rec.utils").CTCLabelDecode(
        character=character.splitlines()
    )(probabilities)
    (tmp_path / "keys.txt").write_text(character + "\n", encoding="utf-8")
    for settings in ({}, {"dictionary": "keys.txt"}):
        decoder = CTCDecoder.build(
            CTCSettings(type="ctc", **settings), 6625, {"character": character},
            lambda path: tmp_path / path,
        )
        texts, scores = decoder.decode(probabilities)
        assert [t.decode() for t in texts] == [text for text, _ in theirs]
        np.testing.assert_allclose(scores, [score for _, score in theirs], rtol=1e-6)
    assert texts[5] == b"" and scores[5] == 0


def test_text_detection_equals_paddleocrs_db_postprocess(pages):
    """The `text_detection` core on the detector's own probability map of a page against
    rapidocr's DBPostProcess and box filter: the same quadrilaterals."""
    from mlserver_npu.processing.text_detection import (
        TextDetectionSettings, db_boxes, finish_quads,
    )

    utils = _rapidocr_module("rapidocr_onnxruntime.ch_ppocr_det.utils")
    image = cv2.imdecode(np.frombuffer(pages["tilted"][0], np.uint8), cv2.IMREAD_COLOR)
    tensor = utils.DetPreProcess(736, "min")(image)
    det = reference.session(MODEL_REPOSITORY / "ocr-det" / "model.onnx")
    probability = det.run(None, {"x": tensor})[0]
    theirs, their_scores = utils.DBPostProcess(0.3, 0.5, 1000, 1.6, use_dilation=True)(
        probability, image.shape[:2]
    )
    quads, scores = db_boxes(probability[0, 0], TextDetectionSettings(type="text_detection"))
    height, width = image.shape[:2]
    ratio = np.float32([width / probability.shape[3], height / probability.shape[2]])
    quads, scores = finish_quads(quads * ratio, scores, (width, height))
    assert len(quads) == len(theirs) > 0
    np.testing.assert_allclose(scores, their_scores, rtol=1e-6)
    for quad, their in zip(quads, theirs):
        assert R.iou(quad, their) > 0.97  # theirs before PaddleOCR's last clip and ordering
