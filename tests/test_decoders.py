"""Detection decoders against plain numpy references written here, anchor by anchor.

Each layout's decoder gets raw outputs with a known content (random heads, or what a small
ONNX graph built here computes) and must give the same candidates as the loop reference.
"""
import numpy as np
import pytest

from mlserver_npu.backends import TensorSpec
from mlserver_npu.errors import ConfigurationError
from mlserver_npu.processing.decoders import DECODERS, Candidates, create_decoder


def spec(name, shape, dtype=np.float32):
    return TensorSpec(name, np.dtype(dtype), list(shape))


def rows_of(candidates: Candidates) -> np.ndarray:
    """Candidates as [n, 6+2P] rows x1, y1, x2, y2, score, class, keypoints."""
    parts = [candidates.boxes, candidates.scores[:, None], candidates.classes[:, None]]
    if candidates.keypoints is not None:
        parts.append(candidates.keypoints.reshape(len(candidates.scores), -1))
    return np.concatenate([np.asarray(part, np.float64) for part in parts], axis=1)


def reference_rows(found) -> np.ndarray:
    return np.array(
        [
            list(box) + [score, cls] + list(np.asarray(points, np.float64).ravel())
            for box, score, cls, points in found
        ],
        np.float64,
    ).reshape(len(found), -1)


def assert_same(candidates: Candidates, found, atol=1e-3):
    """Same candidates as the reference, in any order (a decoder may list them any way)."""
    got, want = rows_of(candidates), reference_rows(found)
    assert got.shape == want.shape, (got.shape, want.shape)

    def ordered(rows):
        return rows[np.lexsort((rows[:, 0], rows[:, 5], np.round(rows[:, 4], 5)))]

    np.testing.assert_allclose(ordered(got), ordered(want), atol=atol, rtol=1e-5)


# --- anchor-free YOLO (v8, v11) ---------------------------------------------------------


def yolov8_head(rng, batch, classes, anchors, size=(320, 480), keypoints=0, normalized=False):
    """A raw [B, 4+C+3K, N] head: centres over the input, sizes, sparse high scores."""
    height, width = size
    head = np.zeros((batch, 4 + classes + 3 * keypoints, anchors), np.float32)
    head[:, 0] = rng.uniform(0, width, (batch, anchors))
    head[:, 1] = rng.uniform(0, height, (batch, anchors))
    head[:, 2] = rng.uniform(4, width / 3, (batch, anchors))
    head[:, 3] = rng.uniform(4, height / 3, (batch, anchors))
    head[:, 4 : 4 + classes] = rng.uniform(0, 1, (batch, classes, anchors)) ** 4
    for k in range(keypoints):
        head[:, 4 + classes + 3 * k] = rng.uniform(0, width, (batch, anchors))
        head[:, 4 + classes + 3 * k + 1] = rng.uniform(0, height, (batch, anchors))
        head[:, 4 + classes + 3 * k + 2] = rng.uniform(0, 1, (batch, anchors))
    if normalized:
        head[:, [0, 2]] /= width
        head[:, [1, 3]] /= height
        for k in range(keypoints):
            head[:, 4 + classes + 3 * k] /= width
            head[:, 4 + classes + 3 * k + 1] /= height
    return head


def yolov8_reference(row, classes, threshold, size, keypoints=0, normalized=False, logits=False):
    """One batch row [4+C+3K, N], anchor by anchor, as Ultralytics' non_max_suppression
    prepares candidates (best class per anchor, score above the threshold)."""
    height, width = size
    found = []
    for anchor in range(row.shape[1]):
        scores = row[4 : 4 + classes, anchor].astype(np.float64)
        if logits:
            scores = 1 / (1 + np.exp(-scores))
        best = int(np.argmax(scores))
        if scores[best] <= threshold:
            continue
        cx, cy, w, h = row[:4, anchor].astype(np.float64)
        sx, sy = (width, height) if normalized else (1, 1)
        box = [(cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy]
        points = [
            (row[4 + classes + 3 * k, anchor] * sx, row[4 + classes + 3 * k + 1, anchor] * sy)
            for k in range(keypoints)
        ]
        found.append((box, scores[best], best, points))
    return found


@pytest.mark.parametrize("classes", [1, 3, 80])
def test_yolov8_channels_first(classes):
    rng = np.random.default_rng(classes)
    size = (320, 480)
    head = yolov8_head(rng, 2, classes, 300, size)
    decoder = create_decoder("yolov8", [spec("output0", (None, 4 + classes, None))], size)
    assert decoder.sources == ["output0"] and decoder.classes == classes
    assert not decoder.nms_done
    result = decoder({"output0": head}, size, 0.25)
    assert len(result) == 2
    for row, candidates in zip(head, result):
        expected = yolov8_reference(row, classes, 0.25, size)
        assert expected, "the test head must have candidates"
        assert_same(candidates, expected)
        assert candidates.boxes.dtype == np.float32 and candidates.classes.dtype == np.int64


def test_yolov8_transposed_and_static_shape():
    rng = np.random.default_rng(7)
    size = (256, 256)
    head = yolov8_head(rng, 1, 6, 120, size)
    outputs = [spec("boxes_scores", (1, 120, 10))]  # [B, N, 4+C]: the larger dim is N
    decoder = create_decoder({"type": "yolo11"}, outputs, size)
    assert decoder.classes == 6
    result = decoder({"boxes_scores": head.transpose(0, 2, 1).copy()}, size, 0.3)
    assert_same(result[0], yolov8_reference(head[0], 6, 0.3, size))


def test_yolov8_layout_decided_per_run_when_both_dims_dynamic():
    rng = np.random.default_rng(8)
    size = (320, 320)
    head = yolov8_head(rng, 1, 2, 200, size)
    decoder = create_decoder("yolov8", [spec("out", (None, None, None))], size)
    assert decoder.classes is None
    for array in (head, head.transpose(0, 2, 1)):
        result = decoder({"out": array}, size, 0.2)
        assert_same(result[0], yolov8_reference(head[0], 2, 0.2, size))


def test_yolov8_normalized_boxes_detected_and_scaled():
    rng = np.random.default_rng(9)
    size = (240, 320)
    head = yolov8_head(rng, 1, 4, 150, size, normalized=True)
    decoder = create_decoder("yolov8", [spec("out", (1, 8, 150))], size)
    expected = yolov8_reference(head[0], 4, 0.25, size, normalized=True)
    assert_same(decoder({"out": head}, size, 0.25)[0], expected)
    settings = {"type": "yolov8", "normalized": False}
    forced = create_decoder(settings, [spec("out", (1, 8, 150))], size)
    with pytest.raises(AssertionError):
        assert_same(forced({"out": head}, size, 0.25)[0], expected)


def test_yolov8_logits_and_pose_keypoints():
    rng = np.random.default_rng(10)
    size = (320, 320)
    head = yolov8_head(rng, 2, 1, 200, size, keypoints=17)
    head[:, 4] = rng.normal(-2, 2, (2, 200))  # raw logits of the one class
    settings = {"type": "yolov8", "keypoints": 17, "scores": "logits"}
    decoder = create_decoder(settings, [spec("output0", (None, 56, 200))], size)
    assert decoder.classes == 1
    for row, candidates in zip(head, decoder({"output0": head}, size, 0.5)):
        assert candidates.keypoints.shape == (len(candidates), 17, 2)
        expected = yolov8_reference(row, 1, 0.5, size, keypoints=17, logits=True)
        assert expected
        assert_same(candidates, expected)


def test_yolov8_no_candidates_gives_empty_rows():
    head = np.zeros((3, 6, 10), np.float32)
    decoder = create_decoder("yolov8", [spec("o", (None, 6, 10))], (64, 64))
    result = decoder({"o": head}, (64, 64), 0.1)
    assert [len(c) for c in result] == [0, 0, 0]
    assert result[0].boxes.shape == (0, 4)


def test_yolov8_picks_the_detection_output_of_a_segmentation_model():
    outputs = [spec("output0", (1, 116, 8400)), spec("output1", (1, 32, 160, 160))]
    decoder = create_decoder({"type": "yolov8", "classes": 80}, outputs, (640, 640))
    assert decoder.sources == ["output0"] and decoder.classes == 80


@pytest.mark.parametrize(
    "config, outputs, words",
    [
        ("yolov8", [spec("out", (1, 4, 8400))], ["'out'", "[1, 4, 8400]", "4+classes"]),
        ("yolov8", [spec("out", (1, 8400))], ["no model output", "[1, 8400]", "4+classes"]),
        (
            {"type": "yolov8", "output": "nope"},
            [spec("out", (1, 84, 8400))],
            ["'nope'", "'out'"],
        ),
        (
            {"type": "yolov8", "classes": 80},
            [spec("out", (1, 50, 8400))],
            ["'out'", "[1, 50, 8400]", "4+80"],
        ),
        ({"type": "yolov8", "treshold": 1}, [spec("out", (1, 84, 8400))], ["decoder.treshold"]),
        ({"type": "yolov8", "layout": "nchw"}, [spec("out", (1, 84, 8400))], ["decoder.layout"]),
        ("yolov99", [spec("out", (1, 84, 8400))], ["'yolov99'", "yolov8"]),
        (
            "yolov8",
            [spec("a", (1, 84, 8400)), spec("b", (1, 84, 2100))],
            ["several", "'a'", "'b'", "'output'"],
        ),
    ],
)
def test_configuration_errors_name_the_problem(config, outputs, words):
    with pytest.raises(ConfigurationError) as error:
        create_decoder(config, outputs, (640, 640))
    for word in words:
        assert word in str(error.value)


def test_registry_settings_forbid_unknown_keys_and_name_their_type():
    for name, cls in DECODERS.items():
        assert cls.Settings.model_config.get("extra") == "forbid", name
        assert name in cls.Settings.model_fields["type"].annotation.__args__, name
