"""Detection through a live server: the digits-detector example (YOLOv8 layout) behind a
letterbox, over REST and gRPC, alone, behind the plugin's batcher, with a static batch and
as a pipeline step. Every served box is compared with a reference computed here from
onnxruntime's raw output on the same preprocessed input: Ultralytics' LetterBox arithmetic
with OpenCV, a YOLOv8 decode, a greedy NMS and Ultralytics' scale_boxes, all in numpy.
Also: the preprocessing ops that keep geometry (letterbox, resize_to_multiple, BGR, OpenCV
resampling) against OpenCV, the warm-up of models with a dynamic height and width, per-request
thresholds, drawn images, and configurations that cannot work."""
import base64
import io
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from images import b64, encode, photo
from reference import identity_model
from server import REPO, Server, copy_repository, grpc_calls, write_model
from vision_reference import greedy_nms, grpc_outputs, letterbox, rest_outputs

sys.path.insert(0, str(REPO / "examples"))
import make_detection_models as detector  # noqa: E402
import make_models  # noqa: E402

DETECTOR = REPO / "model-repository" / "digits-detector"
SETTINGS = json.loads((DETECTOR / "model-settings.json").read_text())
POST = SETTINGS["parameters"]["extra"]["postprocess"]
F, U8 = TensorProto.FLOAT, TensorProto.UINT8

PIPELINE = {
    "name": "detector-pipeline",
    "implementation": "mlserver_npu.Pipeline",
    "parameters": {"version": "1", "extra": {
        "steps": [{"name": "detect", "model": "../digits-detector"}],
        "outputs": {"output0": "detect.outputs.output0"},
        "postprocess": POST,
    }},
}
# name -> (dtype, shape, preprocess) of identity models that show the preprocessed tensor
IDENTITIES = {
    "identity-letterbox-bgr": (F, ["N", 3, 64, 96], [
        {"op": "convert", "mode": "BGR"}, {"op": "letterbox"}]),
    "identity-letterbox-top-left": (U8, ["N", 64, 64, 3], [
        {"op": "letterbox", "position": "top_left", "pad_value": [0, 50, 100],
         "resample": "bilinear"}]),
    "identity-multiple": (F, ["N", 3, "H", "W"], [
        {"op": "resize_to_multiple", "multiple": 32, "limit_side_len": 96}]),
    "identity-multiple-min": (F, ["N", 3, "H", "W"], [
        {"op": "resize_to_multiple", "multiple": 16, "limit_side_len": 120,
         "limit_type": "min"}]),
    "identity-letterbox-no-scale-up": (U8, ["N", 256, 256, 3], [
        {"op": "letterbox", "scale_up": False}]),
    "identity-ultralytics": (F, ["N", 3, 64, 96], "ultralytics"),
    "identity-cv2-area": (F, ["N", 3, 50, 70], [
        {"op": "resize", "size": [50, 70], "resample": "cv2_area"}]),
}


def needs_multiple_of_32(metadata=None) -> bytes:
    """x [N, 3, H, W] -> x beside the 32x32 max pooling of x enlarged back, [N, 6, H, W]: the
    sides must be multiples of 32, as for a YOLO's Concat of upsampled and skip features."""
    graph = helper.make_graph(
        [
            helper.make_node("MaxPool", ["x"], ["pooled"], kernel_shape=[32, 32], strides=[32, 32]),
            helper.make_node("Resize", ["pooled", "", "scales"], ["up"], mode="nearest"),
            helper.make_node("Concat", ["x", "up"], ["y"], axis=1),
        ],
        "multiple_of_32",
        [helper.make_tensor_value_info("x", F, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", F, ["N", 6, "H", "W"])],
        [numpy_helper.from_array(np.array([1, 1, 32, 32], np.float32), "scales")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def static_batch_detector(batch: int) -> bytes:
    model = onnx.load(str(DETECTOR / "model.onnx"))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    return model.SerializeToString()


def _copy_detector(repository, name, extra=None, model=None):
    folder = repository / name
    shutil.copytree(DETECTOR, folder)
    settings = json.loads((folder / "model-settings.json").read_text())
    settings["name"] = name
    settings["parameters"]["extra"].update(extra or {})
    (folder / "model-settings.json").write_text(json.dumps(settings))
    if model is not None:
        (folder / "model.onnx").write_bytes(model)
    return folder


def _openvino_ir(folder):
    """The folder's model as an OpenVINO IR (fp32), its ONNX metadata in the IR's rt_info."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(folder / "model.onnx")), str(folder / "model.xml"),
                  compress_to_fp16=False)
    (folder / "model.onnx").unlink()
    settings = json.loads((folder / "model-settings.json").read_text())
    settings["parameters"]["uri"] = "./model.xml"
    (folder / "model-settings.json").write_text(json.dumps(settings))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("detection")
    repository = copy_repository(root / "repo", models=["digits-detector"])
    _copy_detector(repository, "detector-batched",
                   {"batching": {"max_batch_size": 4, "max_delay_ms": 1000}})
    _copy_detector(repository, "detector-b2", {"sessions": 2}, model=static_batch_detector(2))
    adaptive = _copy_detector(repository, "detector-adaptive")
    settings = json.loads((adaptive / "model-settings.json").read_text())
    settings.update(max_batch_size=4, max_batch_time=1.0)  # MLServer's adaptive batching
    (adaptive / "model-settings.json").write_text(json.dumps(settings))
    _copy_detector(repository, "detector-resize", {"preprocess": [
        {"op": "convert", "mode": "L"}, {"op": "resize", "size": 128, "resample": "box"},
        {"op": "scale", "factor": 16, "divisor": 255}]})
    ir = _copy_detector(repository, "detector-openvino", {
        "backend": "openvino", "device": "CPU", "options": {"precision_hint": "f32"}})
    _openvino_ir(ir)
    (repository / "detector-pipeline").mkdir()
    (repository / "detector-pipeline" / "model-settings.json").write_text(json.dumps(PIPELINE))
    for name, (dtype, shape, ops) in IDENTITIES.items():  # ops: a list or a preset
        write_model(repository / name, name, {"preprocess": ops},
                    model=identity_model(dtype, shape))
    # dynamic height and width: warm-up from the metadata's imgsz, the preprocessing, the
    # configured shapes
    write_model(repository / "dynamic-imgsz", "dynamic-imgsz", {},
                model=needs_multiple_of_32({"imgsz": "[64, 96]"}))
    write_model(repository / "dynamic-letterbox", "dynamic-letterbox",
                {"preprocess": [{"op": "letterbox", "size": [64, 32]}]},
                model=needs_multiple_of_32())
    write_model(repository / "dynamic-configured", "dynamic-configured",
                {"warmup_shapes": {"x": [1, 3, 32, 64]}}, model=needs_multiple_of_32())
    running = Server.start(repository, root)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(str(DETECTOR / "model.onnx"), providers=["CPUExecutionProvider"])


# --- the reference: Ultralytics' arithmetic, OpenCV and numpy, nothing of mlserver_npu ---

def reference(session, files, confidence=POST["confidence_threshold"], iou=POST["iou_threshold"],
              max_detections=POST["max_detections"]):
    """Per image: (boxes [k, 4] in the image's pixels, scores [k], classes [k])."""
    found = []
    for data in files:
        image = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
        boxed, gain, (left, top) = letterbox(image, (128, 128), 0, cv2.INTER_AREA)
        x = boxed.astype(np.float32) * np.float32(16) / np.float32(255)
        (output,) = session.run(None, {"images": x[None, None]})
        rows = output[0].T  # [anchors, 4 + 10]
        scores = rows[:, 4:].max(axis=1)
        keep = scores > confidence
        rows, scores = rows[keep], scores[keep]
        boxes = np.concatenate([rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2], 1)
        kept = greedy_nms(boxes, scores, iou)[:max_detections]  # class-agnostic, as configured
        boxes = (boxes[kept] - np.float32([left, top, left, top])) / gain  # scale_boxes
        boxes = np.clip(boxes, 0, [image.shape[1], image.shape[0]] * 2)
        found.append((boxes, scores[kept], rows[kept, 4:].argmax(axis=1)))
    return found


def assert_detections(outputs, expected):
    """`outputs` (name -> array) against the reference, image by image; padding zeros."""
    count = outputs["num_detections"]
    assert count.tolist() == [len(e[1]) for e in expected]
    k = max([len(e[1]) for e in expected] + [0])
    assert outputs["detection_boxes"].shape == (len(expected), k, 4)
    for index, (boxes, scores, classes) in enumerate(expected):
        n = len(scores)
        np.testing.assert_allclose(outputs["detection_boxes"][index, :n], boxes, atol=1e-3)
        np.testing.assert_allclose(outputs["detection_scores"][index, :n], scores, rtol=1e-5)
        assert outputs["detection_classes"][index, :n].tolist() == classes.tolist()
        assert [s.decode() if isinstance(s, bytes) else s
                for s in outputs["detection_labels"][index, :n]] == [str(c) for c in classes]
        assert not outputs["detection_boxes"][index, n:].any()
        assert not outputs["detection_scores"][index, n:].any()


def canvases():
    """Three canvases of different sizes and aspect ratios, digits 2, 3 and 4 times enlarged:
    (file bytes, the digits placed)."""
    _, x_test, _, y_test = make_models.digits_split()
    rng = np.random.default_rng(11)
    made = []
    for (height, width), scale in (((128, 128), 2), ((96, 128), 3), ((128, 80), 4)):
        board, _, classes = detector.canvas(x_test, y_test, rng, 6, height, width)
        made.append((encode(detector.to_image(board, scale), "PNG"), sorted(classes.tolist())))
    return made


CANVASES = canvases()
FILES = [data for data, _ in CANVASES]


def _images(files, name="images"):
    return {"name": name, "shape": [len(files)], "datatype": "BYTES",
            "data": [b64(f) for f in files]}


# --- boxes ---

@pytest.mark.parametrize("model", ["digits-detector", "detector-b2", "detector-pipeline"])
def test_a_batch_of_differently_sized_images_gets_the_reference_boxes_over_rest(
    live, session, model
):
    outputs = rest_outputs(live.infer(model, [_images(FILES)]))
    expected = reference(session, FILES)
    assert_detections(outputs, expected)
    # and the detector is right: the digits placed on each canvas
    for (_, digits), count, classes in zip(CANVASES, outputs["num_detections"],
                                           outputs["detection_classes"]):
        assert sorted(classes[:count].tolist()) == digits


def test_images_of_extreme_aspect_ratio_are_letterboxed_to_at_least_a_pixel(live, session):
    """A 1x100000 or 2x100000 image's short side rounds to 0 pixels at 128x128: it is
    letterboxed as 1 pixel (OpenCV refuses a resize to 0); the other images of the request
    keep their reference boxes."""
    slivers = [encode(Image.new("L", size, 255), "PNG") for size in ((100_000, 1), (2, 100_000))]
    files = [slivers[0], FILES[0], slivers[1]]
    response = live.infer("digits-detector", [_images(files)])
    assert response.status_code == 200, response.text
    outputs = rest_outputs(response)
    assert outputs["num_detections"].shape == (3,)
    (expected,) = reference(session, FILES[:1])
    n = len(expected[1])
    assert outputs["num_detections"][1] == n
    np.testing.assert_allclose(outputs["detection_boxes"][1, :n], expected[0], atol=1e-3)


def test_an_openvino_ir_takes_its_labels_from_its_rt_info(live, session):
    outputs = rest_outputs(live.infer("detector-openvino", [_images(FILES)]))
    for index, (boxes, scores, classes) in enumerate(reference(session, FILES)):
        count = len(scores)
        assert outputs["num_detections"][index] == count
        np.testing.assert_allclose(outputs["detection_boxes"][index, :count], boxes, atol=1e-3)
        np.testing.assert_allclose(outputs["detection_scores"][index, :count], scores, rtol=1e-4)
        assert outputs["detection_labels"][index, :count].tolist() == [str(c) for c in classes]


def test_the_same_boxes_over_grpc(live, session):
    calls = [{"op": "infer", "model": model, "inputs": [_images(FILES)]}
             for model in ("digits-detector", "detector-pipeline")]
    for result in grpc_calls(live.grpc_target, calls):
        assert "ok" in result, result
        assert_detections(grpc_outputs(result), reference(session, FILES))


def test_concurrent_requests_merged_by_the_batcher_keep_their_own_geometry(live, session):
    def one(data):
        return rest_outputs(live.infer("detector-batched", [_images([data])]))

    runs_before = _runs(live, "detector-batched")
    files = FILES + FILES[:1]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, files))
    for data, outputs in zip(files, results):
        assert_detections(outputs, reference(session, [data]))
    assert _runs(live, "detector-batched") - runs_before < len(files)  # merged


def test_mlservers_adaptive_batching_splits_each_requests_boxes_back(live, session):
    def one(data):
        return rest_outputs(live.infer("detector-adaptive", [_images([data])]))

    files = FILES + FILES[:1]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, files))
    for data, outputs in zip(files, results):
        (boxes, scores, classes), = reference(session, [data])
        count = len(scores)
        assert outputs["num_detections"].tolist() == [count]
        np.testing.assert_allclose(outputs["detection_boxes"][0, :count], boxes, atol=1e-3)
        assert outputs["detection_classes"][0, :count].tolist() == classes.tolist()
    assert _runs(live, "detector-adaptive") < len(files)  # merged by MLServer


def _runs(live, model):
    counts = live.metrics().get("mlserver_npu_batch_rows_count", {})
    return sum(v for labels, v in counts.items() if dict(labels)["model_name"] == model)


def test_a_large_jpeg_decoded_at_an_eighth_gets_boxes_and_a_picture_at_its_own_size(live):
    """The first op is a resize, so the JPEG is decoded at 1/8 (Pillow's draft): the boxes
    and the drawn picture still refer to the 1024x1024 image sent."""
    _, x_test, _, y_test = make_models.digits_split()
    board, boxes, classes = detector.canvas(x_test, y_test, np.random.default_rng(5), 5)
    data = encode(detector.to_image(board, 8), "JPEG", quality=95)
    body = {"inputs": [_images([data])], "outputs": [
        {"name": "num_detections"}, {"name": "detection_boxes"}, {"name": "detection_classes"},
        {"name": "detection_scores", "parameters": {"content_type": "image"}}]}
    response = live.http.post("/v2/models/detector-resize/infer", json=body)
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    count = outputs["num_detections"]["data"][0]
    found = np.array(outputs["detection_boxes"]["data"], np.float32).reshape(-1, 4)[:count]
    found_classes = outputs["detection_classes"]["data"][:count]
    assert count >= 4
    for box, cls in zip(found, found_classes):  # a digit's cell, in the pixels sent
        nearest = np.abs(boxes * 8 - box).max(axis=1).argmin()
        # within one model-input pixel (8 here): JPEG's artefacts may favour a neighbour
        assert np.abs(boxes[nearest] * 8 - box).max() <= 8, (box, boxes * 8)
        assert classes[nearest] == cls
    picture = Image.open(io.BytesIO(base64.b64decode(outputs["detection_scores"]["data"][0])))
    assert picture.size == (1024, 1024)


def test_the_sample_canvas_and_the_metadata(live):
    sample = (REPO / "examples/images/digits-canvas.png").read_bytes()
    outputs = rest_outputs(live.infer("digits-detector", [_images([sample])]))
    readme = (DETECTOR / "README.md").read_text()
    listed = readme.split("digits: ", 1)[1].split(".", 1)[0].split(", ")
    assert sorted(outputs["detection_labels"][0].tolist()) == sorted(listed)
    metadata = live.http.get("/v2/models/digits-detector").json()
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("num_detections", "INT32", [-1]),
        ("detection_boxes", "FP32", [-1, -1, 4]),
        ("detection_scores", "FP32", [-1, -1]),
        ("detection_classes", "INT64", [-1, -1]),
        ("detection_labels", "BYTES", [-1, -1]),
    ]
    assert metadata["inputs"][0]["datatype"] == "BYTES"
    # the raw tensor is still there when asked for
    raw = rest_outputs(live.infer("digits-detector", [_images([sample])], [{"name": "output0"}]))
    assert raw["output0"].shape == (1, 14, 14641)


def test_the_postprocess_stage_is_measured(live):
    live.infer("digits-detector", [_images(FILES[:1])])
    stages = live.metrics()["mlserver_npu_stage_seconds_count"]
    seen = {dict(labels)["stage"] for labels, value in stages.items()
            if dict(labels)["model_name"] == "digits-detector" and value}
    assert {"decode", "preprocess", "device", "postprocess", "encode"} <= seen


# --- per-request thresholds ---

@pytest.mark.parametrize("parameters, changes", [
    ({"confidence_threshold": 0.99}, {"confidence": 0.99}),
    ({"max_detections": 2}, {"max_detections": 2}),
    ({"iou_threshold": 0.9, "confidence_threshold": 0.05}, {"iou": 0.9, "confidence": 0.05}),
])
def test_request_parameters_override_the_thresholds(live, session, parameters, changes):
    body = {"inputs": [_images(FILES)], "parameters": parameters}
    outputs = rest_outputs(live.http.post("/v2/models/digits-detector/infer", json=body))
    expected = reference(session, FILES, **changes)
    default = reference(session, FILES)
    assert [len(e[1]) for e in expected] != [len(e[1]) for e in default]  # the case matters
    assert_detections(outputs, expected)
    # MLServer's gRPC parameters have no double: floats go as strings (ints as ints)
    as_grpc = {k: str(v) if isinstance(v, float) else v for k, v in parameters.items()}
    result = grpc_calls(live.grpc_target, [{"op": "infer", "model": "digits-detector",
                                            "inputs": [_images(FILES)], "parameters": as_grpc}])
    assert_detections(grpc_outputs(result[0]), expected)


def test_a_float_parameter_over_grpc_says_to_send_a_string(live):
    (result,) = grpc_calls(live.grpc_target, [{
        "op": "infer", "model": "digits-detector", "inputs": [_images(FILES[:1])],
        "parameters": {"confidence_threshold": 0.9}}])
    assert result.get("status") == "StatusCode.INVALID_ARGUMENT", result
    assert "confidence_threshold" in result["error"] and "as a string" in result["error"]


BAD_PARAMETERS = [
    ({"confidence_threshold": 1.5}, ["confidence_threshold", "from 0 to 1", "1.5"]),
    ({"iou_threshold": -0.1}, ["iou_threshold", "from 0 to 1"]),
    ({"max_detections": 0}, ["max_detections", "from 1 to 10000"]),
    ({"max_detections": 2.5}, ["max_detections", "an integer"]),
    ({"confidence_threshold": "x" * 5000}, ["confidence_threshold", "a number", "no number"]),
    ({"max_detections": [1] * 1000}, ["max_detections", "an integer", "..."]),
    ({"iou_threshold": True}, ["iou_threshold", "a number"]),
    ({"confidence_threshold": None},
     ["parameter 'confidence_threshold' must be a number from 0 to 1, got null"]),
    ({"max_detections": None}, ["'max_detections' must be an integer from 1 to 10000"]),
]


@pytest.mark.parametrize("parameters, words", BAD_PARAMETERS)
def test_bad_request_parameters_are_a_400_naming_them(live, parameters, words):
    body = {"inputs": [_images(FILES[:1])], "parameters": parameters}
    response = live.http.post("/v2/models/digits-detector/infer", json=body)
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.json()["error"]
    assert len(response.text) < 500


def test_bad_request_parameters_over_grpc_are_invalid_argument(live):
    calls = [{"op": "infer", "model": "digits-detector", "inputs": [_images(FILES[:1])],
              "parameters": p} for p, _ in BAD_PARAMETERS[:3]]
    for result, (_, words) in zip(grpc_calls(live.grpc_target, calls), BAD_PARAMETERS):
        assert result.get("status") == "StatusCode.INVALID_ARGUMENT", result
        assert words[0] in result["error"]


# --- drawn results ---

def test_an_output_asked_as_an_image_is_the_clients_image_with_the_boxes_drawn(live, session):
    from mlserver_npu.processing.draw import colour

    body = {"inputs": [_images(FILES)],
            "outputs": [{"name": "detection_boxes", "parameters": {"content_type": "image"}},
                        {"name": "detection_classes"}]}
    response = live.http.post("/v2/models/digits-detector/infer", json=body)
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    drawn = outputs["detection_boxes"]
    assert drawn["parameters"]["content_type"] == "image"
    for data, png, (boxes, _, classes) in zip(FILES, drawn["data"], reference(session, FILES)):
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))))
        original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert picture.shape == original.shape
        for box, cls in zip(boxes, classes):  # the left edge of each box, in its class colour
            x1, y1, _, y2 = box.round().astype(int)
            assert tuple(picture[(y1 + y2) // 2, x1]) == colour(cls)
        # far from every box the image is the client's
        untouched = np.ones(original.shape[:2], bool)
        for x1, y1, x2, y2 in boxes.round().astype(int):
            untouched[max(y1 - 20, 0) : y2 + 3, max(x1 - 3, 0) : x2 + 60] = False
        assert (picture[untouched] == original[untouched]).all()


def test_a_drawn_image_needs_images(live):
    pixels = np.zeros((1, 1, 128, 128), np.float32)
    body = {"inputs": [{"name": "images", "shape": [1, 1, 128, 128], "datatype": "FP32",
                        "data": pixels.ravel().tolist()}],
            "outputs": [{"name": "detection_boxes", "parameters": {"content_type": "image"}}]}
    response = live.http.post("/v2/models/digits-detector/infer", json=body)
    assert response.status_code == 400
    assert "needs the request to send images" in response.json()["error"]


def test_a_tensor_input_gets_boxes_in_model_input_pixels(live, session):
    image = np.asarray(Image.open(io.BytesIO(FILES[0])).convert("L"))
    boxed, _, _ = letterbox(image, (128, 128), 0, cv2.INTER_AREA)
    x = (boxed.astype(np.float32) * np.float32(16) / np.float32(255))[None, None]
    body = {"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}
    outputs = rest_outputs(live.http.post("/v2/models/digits-detector/infer", json=body))
    expected = reference(session, FILES[:1])  # FILES[0] is 256x256: the gain is 0.5, no padding
    boxes, scores, classes = expected[0]
    assert_detections(outputs, [(boxes * 0.5, scores, classes)])


# --- preprocessing that keeps geometry, against OpenCV ---

PHOTOS = [encode(photo(150, 101, seed=1), "PNG"), encode(photo(77, 131, seed=2), "PNG")]


def _preprocessed(live, model, files):
    outputs = rest_outputs(live.infer(model, [_images(files, "x")]))
    return outputs["y"]


def _rgb(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_letterbox_bgr_equals_ultralytics_letterbox(live):
    for data in PHOTOS:
        served = _preprocessed(live, "identity-letterbox-bgr", [data])
        boxed, _, _ = letterbox(_rgb(data), (64, 96), (114, 114, 114), cv2.INTER_LINEAR)
        want = boxed[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32)
        np.testing.assert_array_equal(served.astype(np.float32), want)


def test_letterbox_at_the_top_left_with_pillow_resampling(live):
    data = PHOTOS[0]  # 150x101 -> 64x43 at the top, padded below
    served = _preprocessed(live, "identity-letterbox-top-left", [data]).astype(np.uint8)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    r = min(64 / image.height, 64 / image.width)
    inner = image.resize((round(image.width * r), round(image.height * r)),
                         Image.Resampling.BILINEAR)
    want = np.zeros((64, 64, 3), np.uint8)
    want[:] = (0, 50, 100)
    want[: inner.height, : inner.width] = np.asarray(inner)
    np.testing.assert_array_equal(served[0], want)


@pytest.mark.parametrize("model, limit, limit_type, multiple", [
    ("identity-multiple", 96, "max", 32), ("identity-multiple-min", 120, "min", 16),
])
def test_resize_to_a_multiple_equals_paddleocr_det_resize(
    live, model, limit, limit_type, multiple
):
    for data in PHOTOS:
        image = _rgb(data)
        h, w = image.shape[:2]
        ratio = 1.0  # PaddleOCR's DetResizeForTest
        if limit_type == "max" and max(h, w) > limit:
            ratio = limit / max(h, w)
        if limit_type == "min" and min(h, w) < limit:
            ratio = limit / min(h, w)
        rh = max(int(round(int(h * ratio) / multiple) * multiple), multiple)
        rw = max(int(round(int(w * ratio) / multiple) * multiple), multiple)
        want = cv2.resize(image, (rw, rh)).transpose(2, 0, 1)[None].astype(np.float32)
        np.testing.assert_array_equal(_preprocessed(live, model, [data]), want)


def test_letterbox_without_scale_up_only_pads(live):
    data = PHOTOS[1]  # 77x131: centred in 256x256, not enlarged
    served = _preprocessed(live, "identity-letterbox-no-scale-up", [data]).astype(np.uint8)
    want = np.full((256, 256, 3), 114, np.uint8)
    top, left = int(round((256 - 131) / 2 - 0.1)), int(round((256 - 77) / 2 - 0.1))
    want[top : top + 131, left : left + 77] = _rgb(data)
    np.testing.assert_array_equal(served[0], want)


def test_the_ultralytics_preset_is_its_letterbox_rgb_0_to_1(live):
    for data in PHOTOS:
        boxed, _, _ = letterbox(_rgb(data), (64, 96), (114, 114, 114), cv2.INTER_LINEAR)
        want = boxed.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(1) / np.float32(255)
        np.testing.assert_array_equal(_preprocessed(live, "identity-ultralytics", [data]), want)


def test_opencv_resampling(live):
    data = PHOTOS[1]
    want = cv2.resize(_rgb(data), (70, 50), interpolation=cv2.INTER_AREA)
    served = _preprocessed(live, "identity-cv2-area", [data])
    np.testing.assert_array_equal(served[0].transpose(1, 2, 0), want.astype(np.float32))


# --- warm-up of dynamic height and width ---

def test_dynamic_height_and_width_warm_up_with_a_size_the_model_accepts(live):
    for model in ("dynamic-imgsz", "dynamic-letterbox", "dynamic-configured"):
        assert live.http.get(f"/v2/models/{model}/ready").status_code == 200, model


def test_a_dynamic_model_that_refuses_ones_fails_the_load_saying_what_to_set(live):
    write_model(live.repository / "dynamic-unknown", "dynamic-unknown", {},
                model=needs_multiple_of_32())
    message = live.assert_load_fails(
        "dynamic-unknown", ["warm-up inference failed", "'x' [1, 3, 1, 1]", "warmup_shapes"]
    )
    assert len(message) < 2000


# --- configurations that cannot work ---

BROKEN = [
    ("unknown-decoder", {"decoder": "yolov99"}, ["'yolov99'", "known", "yolov8"]),
    ("decoder-type-list", {"decoder": {"type": ["yolov8"]}},
     ["decoder.type must be a decoder name", "yolov8", "got list ['yolov8']"]),
    ("decoder-type-object", {"decoder": {"type": {"name": "yolov8"}}},
     ["decoder.type must be a decoder name", "got dict"]),
    ("decoder-type-number", {"decoder": {"type": 8}}, ["decoder.type", "got int 8"]),
    ("decoder-type-missing", {"decoder": {"output": "output0"}}, ["decoder.type", "it is missing"]),
    ("confidence-out-of-range", {"confidence_threshold": 1.5},
     ["'parameters.extra.postprocess.confidence_threshold'", "less than or equal to 1"]),
    ("max-detections-not-a-number", {"max_detections": "many"},
     ["'parameters.extra.postprocess.max_detections'"]),
    ("unknown-key", {"treshold": 0.5}, ["unknown key 'parameters.extra.postprocess.treshold'"]),
    ("short-labels", {"labels": ["zero", "one", "two"]}, ["has 3 labels", "10 classes"]),
    ("labels-file-missing", {"labels": "nowhere.txt"},
     ["nowhere.txt", "'parameters.extra.postprocess.labels'", "does not exist"]),
    # the digits detector's output0 is YOLOv8's 4+10 channels; its metadata names 10 classes
    ("yolov8-read-as-yolov5", {"decoder": "yolov5"},
     ["output 'output0' has shape [?, 14, ", "expected [batch, 5+10 = 15, anchors]",
      "metadata names 10 classes", "its channels give 9"]),
    ("output-name-taken", {"output_names": {"boxes": "output0"}},
     ["postprocess.output_names.boxes 'output0'", "name of a model output"]),
    ("unknown-type", {"type": "detektion"}, ["'parameters.extra.postprocess.type'", "detektion"]),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_a_broken_detection_configuration_fails_the_load(live, case):
    name, changes, words = case
    _copy_detector(live.repository, name, {"postprocess": {**POST, **changes}})
    live.assert_load_fails(name, words)
    assert rest_outputs(live.infer("digits-detector", [_images(FILES[:1])]))


@pytest.mark.parametrize("decoder, words", [
    ("yolov8", ["'y' [?, 6]", "[batch, 4+classes, anchors]"]),
    ({"type": "yolov8", "output": "y"}, ["output 'y' has shape [?, 6], expected [batch, 4+"]),
])
def test_an_output_of_the_wrong_shape_fails_the_load_naming_it(live, decoder, words):
    name = f"not-a-detector-{len(str(decoder))}"
    write_model(live.repository / name, name,
                {"postprocess": {"type": "detection", "decoder": decoder}},
                model=identity_model(F, ["N", 6]))
    live.assert_load_fails(name, words)


def test_detection_does_not_take_tiles(live):
    _copy_detector(live.repository, "detector-tiles", {"preprocess": [
        {"op": "convert", "mode": "L"}, {"op": "tiles", "size": [128, 128]}]})
    live.assert_load_fails("detector-tiles", ["tiles"])


# --- the example client in the docs ---

@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_example_client_prints_the_boxes(live, session, protocol, tmp_path):
    url = live.grpc_target if protocol == "grpc" else live.url.removeprefix("http://")
    completed = subprocess.run(
        [sys.executable, str(REPO / "examples" / "detect.py"), "--protocol", protocol,
         "--url", url, "--confidence", "0.9", str(REPO / "examples/images/digits-canvas.png")],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    sample = (REPO / "examples/images/digits-canvas.png").read_bytes()
    boxes, scores, classes = reference(session, [sample], confidence=0.9)[0]
    assert lines[0].endswith(f": {len(scores)} detections")
    for line, box, score, cls in zip(lines[1:], boxes, scores, classes):
        label, shown, corners = line.split(maxsplit=2)
        assert (label, shown) == (str(cls), f"{score:.3f}")
        x1, y1, x2, y2 = box.round().astype(int).tolist()
        assert corners == f"({x1}, {y1}) - ({x2}, {y2})"


# --- init and inspect ---

def test_init_suggests_detection_from_the_metadata_and_inspect_shows_it(live, capsys):
    from mlserver_npu.cli import main  # in this process: three CLI processes take 20 s

    model = DETECTOR / "model.onnx"
    folder = live.repository / "initialised"
    assert main(["init", str(model), "--into", str(folder)]) == 0
    suggested = capsys.readouterr().out
    assert "task: detect" in suggested
    assert "--postprocess detection --force" in suggested
    assert main(["init", str(model), "--into", str(folder), "--postprocess", "detection",
                 "--force"]) == 0
    extra = json.loads((folder / "model-settings.json").read_text())["parameters"]["extra"]
    assert extra == {"preprocess": "ultralytics",
                     "postprocess": {"type": "detection", "decoder": "yolov8"}}
    assert live.http.post("/v2/repository/models/initialised/load").status_code == 200
    outputs = rest_outputs(live.infer("initialised", [_images(FILES[:1])]))
    assert set(outputs) == {"num_detections", "detection_boxes", "detection_scores",
                            "detection_classes", "detection_labels"}
    capsys.readouterr()
    assert main(["inspect", str(DETECTOR)]) == 0
    shown = capsys.readouterr().out
    assert ("postproc detection, decoder yolov8, labels 10: output0 -> num_detections, "
            "detection_boxes") in shown
    assert "task=detect" in shown


# --- NMS choices, on a made-up YOLOv8 output (in this process: no model needed) ---

def _detection(**settings):
    from mlserver_npu.backends import TensorSpec
    from mlserver_npu.processing.detection import Detection, DetectionSettings
    from mlserver_npu.processing.postprocess import BuildContext

    spec = TensorSpec("output0", np.dtype(np.float32), [1, 4 + 3, 10])
    config = DetectionSettings(type="detection", decoder="yolov8", **settings)
    return Detection.build(config, [spec], BuildContext(resolve=lambda p: p, input_size=(64, 64)))


# five candidates: 0 and 1 overlap (IoU 0.67) with different classes, 2 and 3 the same class
# overlapping 0.69, 4 alone
CANDIDATES = np.float32([
    # cx, cy, w, h, class 0, class 1, class 2
    [10, 10, 10, 10, 0.9, 0.0, 0.0],
    [12, 10, 10, 10, 0.0, 0.8, 0.0],
    [40, 40, 10, 10, 0.0, 0.0, 0.7],
    [40, 42, 10, 12, 0.0, 0.0, 0.6],
    [55, 20, 6, 6, 0.5, 0.0, 0.0],
] + [[30, 30, 4, 4, 0.0, 0.0, 0.0]] * 5).T[np.newaxis]  # [1, 7, 10], the rest scoring 0


@pytest.mark.parametrize("settings, kept", [
    ({"iou_threshold": 0.5}, [0, 1, 2, 4]),  # class-wise: 1 survives beside 0
    ({"iou_threshold": 0.5, "class_agnostic": True}, [0, 2, 4]),
    ({"iou_threshold": 0.7}, [0, 1, 2, 3, 4]),  # 2 and 3 overlap 0.69 <= 0.7
    ({"iou_threshold": 0.5, "pre_nms_top_k": 2}, [0, 1]),
    ({"iou_threshold": 0.5, "pre_nms_top_k": 3, "class_agnostic": True}, [0, 2]),
    ({"iou_threshold": 0.5, "max_detections": 3}, [0, 1, 2]),
])
def test_nms_settings(settings, kept):
    detection = _detection(**settings)
    rows = detection.detect({"output0": CANDIDATES}, _context(), detection.options(None))
    scores = CANDIDATES[0, 4:].max(axis=0)
    np.testing.assert_allclose(rows[0].scores, scores[kept])


def test_weighted_nms_averages_the_overlapping_boxes():
    detection = _detection(iou_threshold=0.5, nms="weighted")
    rows = detection.detect({"output0": CANDIDATES}, _context(), detection.options(None))
    # 0 absorbs 1 (class-agnostic), 2 absorbs 3: score-weighted mean boxes
    weights = np.float32([0.9, 0.8]) / 1.7
    np.testing.assert_allclose(rows[0].boxes[0], weights @ np.float32([[5, 5, 15, 15],
                                                                        [7, 5, 17, 15]]), rtol=1e-5)
    np.testing.assert_allclose(rows[0].scores, [0.9, 0.7, 0.5])


def _context():
    from mlserver_npu.processing.postprocess import RequestContext

    return RequestContext()


def test_the_metadata_ultralytics_appends_to_a_tflite_file(tmp_path):
    import zipfile

    from mlserver_npu.backends import model_metadata
    from mlserver_npu.processing.detection import metadata_labels

    model = tmp_path / "model.tflite"
    shutil.copy(REPO / "examples/tflite-repository/digits-uint8/model.tflite", model)
    with zipfile.ZipFile(model, "a") as archive:  # as Ultralytics' TFLite export does
        archive.writestr("metadata.json", json.dumps(
            {"task": "detect", "imgsz": [320, 320], "names": {"0": "person", "1": "bicycle"}}
        ))
    found = model_metadata([], model)
    assert found["task"] == "detect" and json.loads(found["imgsz"]) == [320, 320]
    assert metadata_labels(found) == ["person", "bicycle"]
    # and ONNX's custom metadata, as onnxruntime reads it (a Python dict's str)
    assert metadata_labels({"names": "{0: 'person', 2: 'car'}"}) == ["person", "", "car"]


# --- a request at confidence_threshold 0: the cost of NMS stays bounded ------------------

def _dense_head(seed=0):
    """A [1, 84, 8400] YOLOv8 head as at threshold 0: every anchor a candidate, 200 of them
    scoring 0.3 to 1, the rest below 0.2 (scores rounded to 1/256 as an int8 head's are, so
    equal scores straddle the cut)."""
    rng = np.random.default_rng(seed)
    head = np.zeros((1, 84, 8400), np.float32)
    head[0, :2] = rng.uniform(0, 640, (2, 8400))
    head[0, 2:4] = rng.uniform(8, 160, (2, 8400))
    head[0, 4:] = np.round(rng.uniform(0, 0.2, (80, 8400)) * 256) / 256
    anchors = rng.choice(8400, 200, replace=False)
    head[0, 4 + rng.integers(0, 80, 200), anchors] = rng.uniform(0.3, 1, 200)
    return head


def _dense_detection(**settings):
    from mlserver_npu.backends import TensorSpec
    from mlserver_npu.processing.detection import Detection, DetectionSettings
    from mlserver_npu.processing.postprocess import BuildContext

    spec = TensorSpec("output0", np.dtype(np.float32), [1, 84, 8400])
    config = DetectionSettings(type="detection", decoder="yolov8", **settings)
    return Detection.build(config, [spec], BuildContext(resolve=lambda p: p, input_size=(640, 640)))


def test_at_threshold_0_only_the_best_candidates_enter_nms(monkeypatch):
    """8,400 candidates at threshold 0 (OpenCV's NMS: ~0.3 s on them here, quadratic):
    NMS gets the best 1,000 by default, and the detections scoring above the configured
    threshold are those a request at that threshold gets."""
    from mlserver.types import Parameters

    from mlserver_npu.processing.detection import PRE_NMS_TOP_K

    given = []
    batched = cv2.dnn.NMSBoxesBatched

    def counting(boxes, scores, classes, *args, **kwargs):
        given.append(np.array(scores))
        return batched(boxes, scores, classes, *args, **kwargs)

    monkeypatch.setattr(cv2.dnn, "NMSBoxesBatched", counting)
    detection = _dense_detection(confidence_threshold=0.25, max_detections=10_000)
    head = _dense_head()
    at_zero = detection.detect(
        {"output0": head}, _context(), detection.options(Parameters(confidence_threshold=0))
    )[0]
    best = np.sort(head[0, 4:].max(axis=0))[::-1][:PRE_NMS_TOP_K]
    assert len(given[0]) == PRE_NMS_TOP_K == 1000
    np.testing.assert_array_equal(np.sort(given[0])[::-1], best)
    assert len(at_zero) <= PRE_NMS_TOP_K
    usual = detection.detect({"output0": head}, _context(), detection.options(None))[0]
    assert len(given[1]) == 200 and len(usual) > 100
    above = at_zero.scores > 0.25
    np.testing.assert_array_equal(at_zero.scores[above], usual.scores)
    np.testing.assert_array_equal(at_zero.boxes[above], usual.boxes)


def test_a_configured_pre_nms_top_k_and_weighted_nms_take_the_cut_too(monkeypatch):
    from mlserver.types import Parameters

    from mlserver_npu.processing import detection as module

    given = []
    weighted = module.weighted_nms

    def counting(candidates, *args):
        given.append(len(candidates))
        return weighted(candidates, *args)

    monkeypatch.setattr(module, "weighted_nms", counting)
    detection = _dense_detection(nms="weighted", pre_nms_top_k=50)
    detection.detect(
        {"output0": _dense_head()}, _context(), detection.options(Parameters(confidence_threshold=0))
    )
    assert given == [50]


def test_the_cut_keeps_what_a_stable_sort_puts_first():
    """Equal scores at the cut: the first ones, as OpenCV's stable sort would keep them."""
    from mlserver_npu.processing.detection import best

    rng = np.random.default_rng(1)
    scores = (rng.integers(0, 20, 5000) / 20).astype(np.float32)
    for k in (1, 7, 250, 4999):
        np.testing.assert_array_equal(
            best(scores, k), np.sort(np.argsort(-scores, kind="stable")[:k])
        )
    assert best(scores, 5000) is None
