"""Segmentation through a live server: a small per-pixel classifier (three grey levels) behind
a letterbox, its class maps compared with a reference computed here from onnxruntime's raw
output on the same preprocessed input (OpenCV letterbox, arg-max, the padding cut, nearest
resize by pixel centres in numpy); palette PNGs, fractions, the overlay; a model with both a
detection and a segmentation output; configurations that cannot work."""
import base64
import io
import json

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
from vision_reference import grpc_outputs, letterbox, rest_outputs

F = TensorProto.FLOAT
LEVELS = np.array([0.0, 0.5, 1.0], np.float32)  # class c: the pixels nearest LEVELS[c]
LABELS = ["dark", "grey", "bright"]
SEGMENT = [
    {"op": "convert", "mode": "L"},
    {"op": "letterbox", "pad_value": 0},
    {"op": "scale", "divisor": 255},
]
POST = {"type": "segmentation", "labels": LABELS, "fractions": True}
DETECTOR = REPO / "model-repository" / "digits-detector"


def _segmenter_nodes(source: str, prefix: str = ""):
    """[N, 1, H, W] in 0..1 -> class scores [N, 3, H/2, W/2]: -(mean of 2x2 - level)^2."""
    nodes = [
        helper.make_node("AveragePool", [source], [prefix + "pooled"], kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Sub", [prefix + "pooled", prefix + "levels"], [prefix + "distance"]),
        helper.make_node("Mul", [prefix + "distance", prefix + "distance"], [prefix + "square"]),
        helper.make_node("Neg", [prefix + "square"], [prefix + "mask"]),
    ]
    levels = numpy_helper.from_array(LEVELS.reshape(1, 3, 1, 1), prefix + "levels")
    return nodes, levels


def segmenter() -> bytes:
    nodes, levels = _segmenter_nodes("x")
    graph = helper.make_graph(
        nodes, "segmenter",
        [helper.make_tensor_value_info("x", F, ["N", 1, 64, 64])],
        [helper.make_tensor_value_info("mask", F, ["N", 3, 32, 32])],
        [levels],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def detector_and_segmenter() -> bytes:
    """The digits detector with a segmentation head on the same input: two outputs."""
    model = onnx.load(str(DETECTOR / "model.onnx"))
    nodes, levels = _segmenter_nodes("images", "seg_")
    model.graph.node.extend(nodes)
    model.graph.initializer.append(levels)
    model.graph.output.append(helper.make_tensor_value_info("seg_mask", F, ["N", 3, 64, 64]))
    return model.SerializeToString()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("segmentation")
    repository = copy_repository(root / "repo", models=[])
    write_model(repository / "segmenter", "segmenter",
                {"preprocess": SEGMENT, "postprocess": POST}, model=segmenter())
    detector_extra = json.loads((DETECTOR / "model-settings.json").read_text())
    extra = detector_extra["parameters"]["extra"]
    detection = {**extra["postprocess"], "decoder": {"type": "yolov8", "output": "output0"}}
    write_model(repository / "detect-and-segment", "detect-and-segment", {
        "preprocess": extra["preprocess"],
        "postprocess": [detection, {"type": "segmentation", "output": "seg_mask",
                                    "layout": "nchw", "classes": 3}],
    }, model=detector_and_segmenter())
    running = Server.start(repository, root)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(segmenter(), providers=["CPUExecutionProvider"])


def nearest(classes, size):
    """out[y, x] = in[floor((y + 0.5) * h / H), floor((x + 0.5) * w / W)]."""
    height, width = size
    rows = [int((y + 0.5) * classes.shape[0] / height) for y in range(height)]
    columns = [int((x + 0.5) * classes.shape[1] / width) for x in range(width)]
    return classes[rows][:, columns]


def reference(session, data):
    """The class map of one image file at its own size."""
    image = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    boxed, gain, (left, top) = letterbox(image, (64, 64), 0, cv2.INTER_LINEAR)
    x = boxed.astype(np.float32) * np.float32(1) / np.float32(255)
    (mask,) = session.run(None, {"x": x[None, None]})
    classes = mask[0].argmax(axis=0)  # [32, 32], half the input's resolution
    width, height = int(round(image.shape[1] * gain)), int(round(image.shape[0] * gain))
    rows = slice(round(top / 2), round((top + height) / 2))
    columns = slice(round(left / 2), round((left + width) / 2))
    cut = classes[rows, columns]
    return nearest(cut, image.shape[:2]).astype(np.int32)


WIDE = encode(photo(120, 80, seed=3), "PNG")
WIDE_TOO = encode(photo(120, 80, seed=4), "PNG")
TALL = encode(photo(50, 90, seed=5), "JPEG")


def _images(files, name="x"):
    return {"name": name, "shape": [len(files)], "datatype": "BYTES",
            "data": [b64(f) for f in files]}


def test_class_maps_at_the_images_size_equal_the_reference(live, session):
    outputs = rest_outputs(live.infer("segmenter", [_images([WIDE, WIDE_TOO])]))
    want = np.stack([reference(session, WIDE), reference(session, WIDE_TOO)])
    assert outputs["class_map"].shape == (2, 80, 120)
    np.testing.assert_array_equal(outputs["class_map"], want)
    fractions = np.stack([np.bincount(m.ravel(), minlength=3) / m.size for m in want])
    np.testing.assert_allclose(outputs["class_fractions"], fractions, rtol=1e-6)
    assert len(set(np.unique(want))) == 3  # the images show all three classes
    (result,) = grpc_calls(live.grpc_target, [
        {"op": "infer", "model": "segmenter", "inputs": [_images([WIDE, WIDE_TOO])]}])
    np.testing.assert_array_equal(grpc_outputs(result)["class_map"], want)


def test_differently_sized_images_as_palette_pngs_and_overlays(live, session):
    body = {"inputs": [_images([WIDE, TALL])], "outputs": [
        {"name": "class_map", "parameters": {"content_type": "image"}},
        {"name": "segmentation_overlay"}]}
    response = live.http.post("/v2/models/segmenter/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    for data, png, overlay in zip([WIDE, TALL], outputs["class_map"]["data"],
                                  outputs["segmentation_overlay"]["data"]):
        picture = Image.open(io.BytesIO(base64.b64decode(png)))
        assert picture.mode == "P"
        np.testing.assert_array_equal(np.asarray(picture), reference(session, data))
        blended = Image.open(io.BytesIO(base64.b64decode(overlay)))
        original = Image.open(io.BytesIO(data))
        assert blended.size == original.size
        # class 0 pixels are the client's own, the others are blended
        classes = reference(session, data)
        rgb = np.asarray(original.convert("RGB"))
        assert (np.asarray(blended)[classes == 0] == rgb[classes == 0]).all()
        assert (np.asarray(blended)[classes == 2] != rgb[classes == 2]).any()


def test_a_class_map_tensor_of_differently_sized_images_is_a_400(live):
    response = live.infer("segmenter", [_images([WIDE, TALL])], [{"name": "class_map"}])
    assert response.status_code == 400
    assert "differ in size" in response.json()["error"]
    assert "content_type image" in response.json()["error"]


def test_the_metadata_lists_the_outputs(live):
    metadata = live.http.get("/v2/models/segmenter").json()
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("class_map", "INT32", [-1, -1, -1]),
        ("class_fractions", "FP32", [-1, 3]),
        ("segmentation_overlay", "BYTES", [-1]),
    ]
    # the overlay is for people: not in a response that names no outputs
    outputs = rest_outputs(live.infer("segmenter", [_images([WIDE])]))
    assert set(outputs) == {"class_map", "class_fractions"}


def test_one_model_with_a_detection_and_a_segmentation_output(live, session):
    canvas = (REPO / "examples/images/digits-canvas.png").read_bytes()
    outputs = rest_outputs(live.infer("detect-and-segment", [_images([canvas], "images")]))
    assert outputs["num_detections"].tolist() == [9]
    # the segmentation head sees the detector's input (0..16): all bright where there is ink
    image = np.asarray(Image.open(io.BytesIO(canvas)).convert("L"))
    assert outputs["class_map"].shape == (1, *image.shape)
    boxes = outputs["detection_boxes"][0].round().astype(int)
    for x1, y1, x2, y2 in boxes:
        assert (outputs["class_map"][0, y1:y2, x1:x2] == 2).any()
    assert (outputs["class_map"][0][image == 0] == 0).mean() > 0.9
    assert "output0" not in outputs and "seg_mask" not in outputs


def flattened_scores() -> bytes:
    """x [N, 3, 121, 121] -> 14 channels, each a flattened 121x121 map: [N, 14, 14641]."""
    weights = np.linspace(-1, 1, 14 * 3, dtype=np.float32).reshape(14, 3, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]),
         helper.make_node("Reshape", ["c", "shape"], ["y"])],
        "flattened",
        [helper.make_tensor_value_info("x", F, ["N", 3, 121, 121])],
        [helper.make_tensor_value_info("y", F, ["N", 14, 14641])],
        [numpy_helper.from_array(weights, "w"),
         numpy_helper.from_array(np.array([0, 14, -1], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


BROKEN = [
    ("seg-flattened", {"postprocess": {"type": "segmentation"}}, flattened_scores(),
     ["output 'y' [-1, 14, 14641] is not a map of the 121x121 model input",
      "14x14641 (height x width)", "[batch, classes, height, width]"]),
    ("seg-wrong-shape", {"postprocess": {"type": "segmentation"}}, identity_model(F, ["N", 6]),
     ["output 'y'", "[-1, 6]"]),
    ("seg-two-outputs", {"preprocess": SEGMENT, "postprocess": {"type": "segmentation"}},
     detector_and_segmenter(), ["postprocess.output", "output0, seg_mask"]),
    ("seg-threshold", {"preprocess": SEGMENT, "postprocess": {**POST, "threshold": 2}},
     segmenter(), ["'parameters.extra.postprocess.threshold'"]),
    ("seg-unknown-output", {"preprocess": SEGMENT, "postprocess": {**POST, "output": "masks"}},
     segmenter(), ["'masks' is not a model output", "mask"]),
    ("seg-output-name-taken",
     {"preprocess": SEGMENT, "postprocess": {**POST, "output_names": {"class_map": "mask"}}},
     segmenter(), ["postprocess.output_names.class_map 'mask'", "name of a model output"]),
    ("seg-duplicate-names", {"preprocess": SEGMENT, "postprocess": [POST, POST]}, segmenter(),
     ["both output 'class_map'"]),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_a_broken_segmentation_configuration_fails_the_load(live, case):
    name, extra, model, words = case
    write_model(live.repository / name, name, extra, model=model)
    live.assert_load_fails(name, words)
