"""Detection decoders against plain numpy references written here, anchor by anchor.

Each layout's decoder gets raw outputs with a known content (random heads, or what a small
ONNX graph built here computes) and must give the same candidates as the loop reference.
"""
import numpy as np
import pytest

from mlserver_npu.backends import TensorSpec
from mlserver_npu.errors import ConfigurationError
from detection_models import head_model, output_specs, run_heads
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


# --- the other layouts, through small ONNX graphs with a known output ------------------


def decoded(config, heads, size, batch=2, threshold=0.25):
    """Decode what a known-head ONNX model gives for `batch` images."""
    model = head_model(heads, size)
    decoder = create_decoder(config, output_specs(model), size)
    return decoder, decoder(run_heads(model, batch, size), size, threshold)


def test_yolov5_objectness_times_class_score():
    rng = np.random.default_rng(5)
    size, anchors, classes = (320, 320), 400, 7
    head = np.zeros((1, anchors, 5 + classes), np.float32)
    head[0, :, 0] = rng.uniform(0, 320, anchors)
    head[0, :, 1] = rng.uniform(0, 320, anchors)
    head[0, :, 2:4] = rng.uniform(4, 100, (anchors, 2))
    head[0, :, 4] = rng.uniform(0, 1, anchors) ** 2
    head[0, :, 5:] = rng.uniform(0, 1, (anchors, classes))
    decoder, result = decoded("yolov5", {"output0": head}, size)
    assert decoder.classes == classes and not decoder.channels_first
    expected = []
    for cx, cy, w, h, objectness, *scores in head[0].astype(np.float64):
        products = [objectness * score for score in scores]
        best = int(np.argmax(products))
        if products[best] > 0.25:
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            expected.append((box, products[best], best, []))
    assert expected
    for candidates in result:  # both images of the batch
        assert_same(candidates, expected)


def test_yolov5_multi_label_gives_every_class_above_the_threshold():
    head = np.array([[[50, 50, 20, 20, 0.9, 0.8, 0.5, 0.1]]], np.float32)
    head = np.concatenate([head, np.zeros((1, 20, 8), np.float32)], axis=1)
    _, result = decoded({"type": "yolov5", "multi_label": True}, {"out": head}, (100, 100))
    assert sorted(result[0].classes.tolist()) == [0, 1]
    np.testing.assert_allclose(sorted(result[0].scores), [0.45, 0.72], rtol=1e-6)


def dfl_reference(levels, size, threshold, bins, logits=False):
    """PP-PicoDet's decode, cell by cell: levels of (stride, scores [cells, C], boxes
    [cells, 4 * bins]); the cell centre plus the softmax expectation of each side's bins."""
    height, width = size
    found = []
    for stride, scores, boxes in levels:
        columns = -(-width // stride)
        for cell in range(len(scores)):
            values = scores[cell].astype(np.float64)
            if logits:
                values = 1 / (1 + np.exp(-values))
            best = int(np.argmax(values))
            if values[best] <= threshold:
                continue
            cx, cy = (cell % columns + 0.5) * stride, (cell // columns + 0.5) * stride
            sides = []
            for side in range(4):
                logit = boxes[cell, side * bins : (side + 1) * bins].astype(np.float64)
                weights = np.exp(logit - logit.max())
                weights /= weights.sum()
                sides.append(float((weights * np.arange(bins)).sum()) * stride)
            left, top, right, bottom = sides
            found.append(([cx - left, cy - top, cx + right, cy + bottom], values[best], best, []))
    return found


def test_dfl_picodet_cells_layout_pairs_levels_by_shape():
    rng = np.random.default_rng(11)
    size, classes, bins = (96, 64), 3, 8  # H, W: 12x8, 6x4, 3x2 cells
    heads, levels = {}, []
    for index, stride in enumerate((8, 16, 32)):
        cells = -(-96 // stride) * -(-64 // stride)
        scores = (rng.uniform(0, 1, (cells, classes)) ** 3).astype(np.float32)
        boxes = rng.normal(0, 2, (cells, 4 * bins)).astype(np.float32)
        heads[f"transpose_{index}.tmp_0"] = scores[None]
        heads[f"transpose_{index + 3}.tmp_0"] = boxes[None]
        levels.append((stride, scores, boxes))
    # names in an order that does not pair them: the shapes must
    heads = dict(sorted(heads.items(), key=lambda item: -item[1].shape[1] * item[1].shape[2]))
    decoder, result = decoded("picodet", heads, size, batch=1, threshold=0.4)
    assert decoder.classes == classes and decoder.bins == bins
    expected = dfl_reference(levels, size, 0.4, bins)
    assert len(expected) > 5
    assert_same(result[0], expected)


def test_dfl_ultralytics_raw_heads_nchw_logits():
    rng = np.random.default_rng(12)
    size, classes, bins = (64, 64), 2, 16
    heads, levels = {}, []
    for stride in (8, 16, 32):
        side = 64 // stride
        scores = rng.normal(-3, 2, (classes, side, side)).astype(np.float32)
        boxes = rng.normal(0, 1, (4 * bins, side, side)).astype(np.float32)
        heads[f"cls_{stride}"] = scores[None]
        heads[f"box_{stride}"] = boxes[None]
        levels.append((stride, scores.reshape(classes, -1).T, boxes.reshape(4 * bins, -1).T))
    config = {
        "type": "dfl",
        "scores": ["cls_8", "cls_16", "cls_32"],
        "boxes": ["box_8", "box_16", "box_32"],
        "activation": "sigmoid",
    }
    decoder, result = decoded(config, heads, size, batch=2, threshold=0.3)
    expected = dfl_reference(levels, size, 0.3, bins, logits=True)
    assert expected
    for candidates in result:
        assert_same(candidates, expected)


def tf_anchors(layers, min_scale, max_scale, size, ratios, reduce_lowest):
    """The TF OD API's multiple grid anchors ([y, x, h, w] normalized), written out from its
    documentation: per layer i, scale s_i linear in i, the boxes (s_i, r) for each aspect
    ratio r plus (sqrt(s_i * s_i+1), 1); the lowest layer (0.1, 1), (s_0, 2), (s_0, 0.5)."""
    count = len(layers)
    scales = [min_scale + (max_scale - min_scale) * i / (count - 1) for i in range(count)]
    scales.append(1.0)
    anchors = []
    for i, stride in enumerate(layers):
        if i == 0 and reduce_lowest:
            specs = [(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)]
        else:
            specs = [(scales[i], r) for r in ratios] + [(np.sqrt(scales[i] * scales[i + 1]), 1.0)]
        rows, columns = -(-size[0] // stride), -(-size[1] // stride)
        for y in range(rows):
            for x in range(columns):
                for scale, ratio in specs:
                    h, w = scale / np.sqrt(ratio), scale * np.sqrt(ratio)
                    anchors.append(((y + 0.5) / rows, (x + 0.5) / columns, h, w))
    return np.array(anchors)


def test_ssd_classic_tf_box_coder_with_background_class():
    rng = np.random.default_rng(13)
    size, strides = (64, 96), [16, 32, 64]
    anchor_options = {
        "min_scale": 0.2,
        "max_scale": 0.95,
        "strides": strides,
        "aspect_ratios": [1.0, 2.0, 0.5],
        "reduce_boxes_in_lowest_layer": True,
    }
    anchors = tf_anchors(strides, 0.2, 0.95, size, [1.0, 2.0, 0.5], True)
    count, classes = len(anchors), 4  # class 0: background
    encodings = rng.normal(0, 1, (1, count, 4)).astype(np.float32)
    logits = rng.normal(-4, 2, (1, count, classes)).astype(np.float32)
    heads = {"raw_outputs/box_encodings": encodings, "raw_outputs/class_predictions": logits}
    config = {"type": "ssd", "anchors": anchor_options, "ignore_classes": [0]}
    decoder, result = decoded(config, heads, size, threshold=0.4)
    assert decoder.sources == list(heads)
    height, width = size
    expected = []
    for (ty, tx, th, tw), scores, (ya, xa, ha, wa) in zip(encodings[0], logits[0], anchors):
        probabilities = 1 / (1 + np.exp(-scores.astype(np.float64)))
        probabilities[0] = 0
        best = int(np.argmax(probabilities))
        if probabilities[best] <= 0.4:
            continue
        yc, xc = ty / 10 * ha + ya, tx / 10 * wa + xa
        h, w = np.exp(th / 5) * ha, np.exp(tw / 5) * wa
        box = np.array([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2]) * ([width, height] * 2)
        expected.append((box, probabilities[best], best, []))
    assert expected
    assert_same(result[0], expected)


@pytest.mark.parametrize(
    "options, count",
    [  # anchor counts of MediaPipe's graphs (their .pbtxt options) and SSD MobileNet at 300
        ({"num_layers": 4, "min_scale": 0.1484375, "max_scale": 0.75, "input_size_height": 128,
          "input_size_width": 128, "strides": [8, 16, 16, 16], "fixed_anchor_size": True}, 896),
        ({"num_layers": 5, "min_scale": 0.1484375, "max_scale": 0.75, "input_size_height": 224,
          "input_size_width": 224, "strides": [8, 16, 32, 32, 32], "fixed_anchor_size": True},
         2254),
        ({"num_layers": 4, "min_scale": 0.1484375, "max_scale": 0.75, "input_size_height": 192,
          "input_size_width": 192, "strides": [8, 16, 16, 16], "fixed_anchor_size": True}, 2016),
        ({"num_layers": 6, "min_scale": 0.2, "max_scale": 0.95, "input_size_height": 300,
          "input_size_width": 300, "strides": [16, 32, 64, 128, 256, 512],
          "aspect_ratios": [1.0, 2.0, 0.5, 3.0, 0.3333], "reduce_boxes_in_lowest_layer": True},
         1917),
    ],
)
def test_ssd_anchor_counts_of_known_graphs(options, count):
    from mlserver_npu.processing.decoders.ssd import AnchorOptions, generate_anchors

    assert len(generate_anchors(AnchorOptions(**options), (1, 1))) == count


def test_ssd_anchor_mismatch_is_a_load_error_with_both_shapes():
    outputs = [spec("regressors", (1, 900, 16)), spec("classificators", (1, 900, 1))]
    config = {
        "type": "ssd",
        "num_keypoints": 6,
        "anchors": {"min_scale": 0.15, "max_scale": 0.75, "strides": [8, 16, 16, 16]},
    }
    with pytest.raises(ConfigurationError) as error:
        create_decoder(config, outputs, (128, 128))
    assert "'regressors'" in str(error.value) and "[1, 900, 16]" in str(error.value)
    assert "[1, 896, 16]" in str(error.value)


def test_boxes_split_yolo_export_with_class_indices():
    rng = np.random.default_rng(14)
    count = 50
    corners = rng.uniform(0, 200, (count, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 50, (count, 2))], 1)
    scores = rng.uniform(0, 1, count).astype(np.float32)
    classes = rng.integers(0, 80, count).astype(np.uint8)
    boxes = boxes.astype(np.float32)
    heads = {"boxes": boxes[None], "scores": scores[None], "class_idx": classes[None]}
    decoder, result = decoded("boxes", heads, (256, 256), threshold=0.5)
    assert decoder.sources == ["boxes", "scores", "class_idx"]
    expected = [
        (boxes[i], scores[i], classes[i], []) for i in range(count) if scores[i] > 0.5
    ]
    assert_same(result[0], expected)


def test_boxes_rtdetr_normalized_cxcywh_per_class_scores():
    rng = np.random.default_rng(15)
    count, classes, size = 30, 5, (320, 480)
    centres, sizes = rng.uniform(0.2, 0.8, (count, 2)), rng.uniform(0.05, 0.3, (count, 2))
    boxes = np.concatenate([centres, sizes], 1).astype(np.float32)
    scores = rng.uniform(0, 1, (count, classes)) ** 3
    heads = {"pred_boxes": boxes[None], "pred_logits": scores[None].astype(np.float32)}
    config = {"type": "boxes", "box_format": "cxcywh", "scores": "pred_logits"}
    _, result = decoded(config, heads, size, threshold=0.3)
    expected = []
    for (cx, cy, w, h), row in zip(boxes, scores):
        best = int(np.argmax(row))
        if row[best] > 0.3:
            box = [(cx - w / 2) * 480, (cy - h / 2) * 320, (cx + w / 2) * 480, (cy + h / 2) * 320]
            expected.append((box, row[best], best, []))
    assert expected
    assert_same(result[0], expected)


def test_end2end_thresholds_and_scales_only():
    rows = np.array(
        [[10, 20, 110, 220, 0.9, 3], [5, 5, 50, 50, 0.3, 1], [0, 0, 0, 0, 0, 0]], np.float32
    )
    decoder, result = decoded("yolov10", {"output0": rows[None]}, (640, 640), threshold=0.25)
    assert decoder.nms_done
    assert_same(result[0], [(row[:4], row[4], row[5], []) for row in rows[:2]])
    _, result = decoded("end2end", {"output0": rows[None]}, (640, 640), threshold=0.5)
    assert_same(result[0], [(rows[0, :4], 0.9, 3, [])])
    normalized = rows.copy()
    normalized[:, :4] /= 640
    _, result = decoded("end2end", {"output0": normalized[None]}, (320, 640), threshold=0.25)
    scaled = [(row[:4] * [640, 320, 640, 320], row[4], row[5], []) for row in normalized[:2]]
    assert_same(result[0], scaled)


@pytest.mark.parametrize(
    "names, box_format, offset",
    [
        (  # TFLite_Detection_PostProcess: boxes, classes, scores, count; generic names
            ["TFLite_Detection_PostProcess", "TFLite_Detection_PostProcess:1",
             "TFLite_Detection_PostProcess:2", "TFLite_Detection_PostProcess:3"],
            "yxyx",
            0,
        ),
        (
            ["detection_boxes", "detection_classes", "detection_scores", "num_detections"],
            "yxyx",
            -1,
        ),
        (["det_boxes", "det_classes", "det_scores", "num_dets"], "xyxy", 0),
    ],
)
def test_nms_tensors_four_outputs_with_a_count(names, box_format, offset):
    size = (300, 400)
    corners = np.array(
        [[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.9, 0.8], [0.2, 0.1, 0.4, 0.3], [0, 0, 0, 0]]
    )
    if box_format == "xyxy":
        corners = corners * [400, 300, 400, 300]
    classes = np.array([2, 5, 7, 0], np.float32)
    scores = np.array([0.9, 0.6, 0.3, 0.0], np.float32)
    heads = {
        names[0]: corners[None].astype(np.float32),
        names[1]: classes[None],
        names[2]: scores[None],
        names[3]: np.array([3], np.float32 if "TFLite" in names[0] else np.int32),
    }
    config = {"type": "nms_tensors", "box_format": box_format, "class_offset": offset}
    decoder, result = decoded(config, heads, size, threshold=0.5)
    assert decoder.nms_done
    expected = []
    for box, cls, score in zip(corners[:3], classes, scores):
        if score > 0.5:
            if box_format == "yxyx":
                box = [box[1] * 400, box[0] * 300, box[3] * 400, box[2] * 300]
            expected.append((box, score, cls + offset, []))
    assert_same(result[0], expected)


def test_served_nms_in_graph_keeps_overlaps_and_maps_back(make_server, tmp_path):
    """A TF-style four-tensor head behind a real server: the decoder says NMS is done, so
    two overlapping boxes of one class both come back; boxes go back through the letterbox
    to the client's pixels; 1-based TF classes are shifted to the labels."""
    import base64
    import io

    from PIL import Image
    from server import MODEL_REPOSITORY, write_model

    boxes = np.array([[0.25, 0.25, 0.75, 0.75], [0.26, 0.25, 0.76, 0.75], [0, 0, 0.1, 0.1]])
    heads = {
        "detection_boxes": boxes[None].astype(np.float32),
        "detection_scores": np.array([[0.9, 0.8, 0.2]], np.float32),
        "detection_classes": np.array([[2, 2, 1]], np.float32),
        "num_detections": np.array([3], np.float32),
    }
    repository = tmp_path / "repository"
    repository.mkdir()
    (repository / "settings.json").write_bytes((MODEL_REPOSITORY / "settings.json").read_bytes())
    extra = {
        "preprocess": [{"op": "letterbox", "size": [64, 64]}, {"op": "scale", "divisor": 255}],
        "postprocess": {
            "type": "detection",
            "decoder": {"type": "nms_tensors", "class_offset": -1},
            "labels": ["cat", "dog"],
            "confidence_threshold": 0.5,
        },
    }
    write_model(repository / "tf-heads", "tf-heads", extra, model=head_model(heads, (64, 64)))
    server = make_server(repository)
    buffer = io.BytesIO()
    Image.new("RGB", (128, 96), (40, 90, 200)).save(buffer, format="PNG")  # w 128, h 96
    image = {
        "name": "images", "shape": [1], "datatype": "BYTES",
        "parameters": {"content_type": "image"},
        "data": [base64.b64encode(buffer.getvalue()).decode()],
    }
    response = server.infer("tf-heads", [image])
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["num_detections"]["data"] == [2]
    # letterbox: scale 0.5, 8 rows of padding above; boxes are y1, x1, y2, x2 of 64x64
    expected = [
        [(x1 * 64) / 0.5, (y1 * 64 - 8) / 0.5, (x2 * 64) / 0.5, (y2 * 64 - 8) / 0.5]
        for y1, x1, y2, x2 in boxes[:2]
    ]
    got = np.array(outputs["detection_boxes"]["data"], np.float32).reshape(1, 2, 4)[0]
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert outputs["detection_labels"]["data"] == ["dog", "dog"]
    assert outputs["detection_classes"]["data"] == [1, 1]


def test_quantized_heads_are_dequantized_first():
    """An NPU's uint8 boxes and scores (outputs left quantized, each with its own scale and
    zero point): decoded as the real values they stand for."""
    from mlserver_npu.backends.base import Quantization

    rng = np.random.default_rng(16)
    boxes_q = rng.integers(0, 256, (1, 40, 4)).astype(np.uint8)
    boxes_q[..., 2:] = np.maximum(boxes_q[..., 2:], boxes_q[..., :2])
    scores_q = rng.integers(0, 256, (1, 40, 3)).astype(np.uint8)
    outputs = [
        TensorSpec("boxes", np.dtype(np.uint8), [1, 40, 4], Quantization([2.0], [0])),
        TensorSpec("scores", np.dtype(np.uint8), [1, 40, 3], Quantization([1 / 255], [0])),
    ]
    decoder = create_decoder({"type": "boxes", "normalized": False}, outputs, (512, 512))
    found = decoder({"boxes": boxes_q, "scores": scores_q}, (512, 512), 0.6)[0]
    expected = []
    for box, row in zip(boxes_q[0].astype(np.float64) * 2.0, scores_q[0] / 255):
        best = int(np.argmax(row))
        if row[best] > 0.6:
            expected.append((box, row[best], best, []))
    assert expected
    assert_same(found, expected)


def test_nms_tensors_generic_names_told_apart_by_values():
    """EfficientDet-Lite-style exports name all four outputs StatefulPartitionedCall:N, in an
    order of their own: the classes are the [B, K] output of whole numbers."""
    boxes = np.array([[[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.9]]], np.float32)
    scores = np.array([[0.83, 0.64]], np.float32)
    classes = np.array([[17, 3]], np.float32)
    heads = {  # scores before classes: the other way round from TFLite_Detection_PostProcess
        "StatefulPartitionedCall:0": np.array([2], np.float32),
        "StatefulPartitionedCall:1": scores,
        "StatefulPartitionedCall:2": classes,
        "StatefulPartitionedCall:3": boxes,
    }
    _, result = decoded("nms_tensors", heads, (100, 100), batch=1, threshold=0.5)
    want = [(b[[1, 0, 3, 2]] * 100, s, c, []) for b, s, c in zip(boxes[0], scores[0], classes[0])]
    assert_same(result[0], want)


def test_end2end_yolov7_rows_with_a_batch_index():
    """YOLOv7's --end2end ONNX: [N, 7] rows of batch index, box, class, score."""
    rows = np.array(
        [[0, 10, 10, 50, 60, 2, 0.9], [1, 5, 5, 20, 20, 0, 0.7], [0, 30, 30, 90, 90, 1, 0.4]],
        np.float32,
    )
    outputs = [spec("output", (None, 7))]
    config = {"type": "end2end", "columns": ["batch", "box", "class", "score"]}
    decoder = create_decoder(config, outputs, (100, 100))
    first, second = decoder({"output": rows}, (100, 100), 0.5)
    assert_same(first, [(rows[0, 1:5], 0.9, 2, [])])
    assert_same(second, [(rows[1, 1:5], 0.7, 0, [])])


def test_end2end_paddle_multiclass_nms_rows_with_a_count():
    """PaddleDetection's exports with NMS: [N, 6] rows of class, score, box for all the
    images, and each image's row count."""
    rows = np.array(
        [[3, 0.8, 1, 2, 30, 40], [1, 0.6, 5, 5, 9, 9], [0, 0.95, 10, 10, 20, 30]], np.float32
    )
    counts = np.array([2, 0, 1], np.int32)
    names = ["multiclass_nms3_0.tmp_0", "multiclass_nms3_0.tmp_2"]
    outputs = [spec(names[0], (None, 6)), spec(names[1], (None,), np.int32)]
    config = {"type": "end2end", "columns": ["class", "score", "box"], "count": names[1]}
    decoder = create_decoder(config, outputs, (64, 64))
    assert decoder.sources == names
    found = decoder({names[0]: rows, names[1]: counts}, (64, 64), 0.5)
    assert [len(c) for c in found] == [2, 0, 1]
    assert_same(found[0], [(rows[0, 2:], 0.8, 3, []), (rows[1, 2:], 0.6, 1, [])])
    assert_same(found[2], [(rows[2, 2:], 0.95, 0, [])])
    with pytest.raises(ConfigurationError) as error:
        create_decoder({"type": "end2end", "columns": ["box", "score"]}, outputs, (64, 64))
    assert "'class'" in str(error.value)
