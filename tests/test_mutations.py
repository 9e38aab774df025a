"""The behaviours a review found untested by planting bugs (issue 21, item 5), each against one
running server and checked against onnxruntime or numpy computed here: a full batch is
answered at once; FP64 survives a raw gRPC round trip; batch_rows counts request rows, not
padding; a pipeline whose dependent step is listed first runs in the right order; combine
`max` is the elementwise maximum and `mean` over three divides by three; a 2x2 grid of tiles
reads in row-major order; tied top-k scores rank the lower index first; a JSON input nested
deeper than its shape is a 400."""
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from onnx import TensorProto
from PIL import Image

import images
import reference
from images import b64, encode
from reference import v2_input
from server import Server, copy_model, copy_repository, grpc_calls, write_model
from test_pipeline import _model, _pipeline, _sharpen_model

HOLD_MS = 10_000  # the batcher's max_delay_ms: a full batch must not wait for it
TILE = 64

OUT_OF_ORDER = {
    "steps": [
        {"name": "sharp", "model": "../sharpen", "inputs": {"x": "lin.outputs.probabilities"}},
        {"name": "avg", "combine": "mean",
         "inputs": ["lin.outputs.probabilities", "mlp.outputs.probabilities", "sharp.outputs.y"]},
        {"name": "top", "combine": "max",
         "inputs": ["lin.outputs.probabilities", "mlp.outputs.probabilities", "sharp.outputs.y"]},
        {"name": "lin", "model": "../digits"},
        {"name": "mlp", "model": "../digits-mlp"},
    ],
    "outputs": {"sharp": "sharp.outputs.y", "mean": "avg.outputs.output",
                "max": "top.outputs.output"},
}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("mutations")
    repository = copy_repository(
        root / "repo", models=["digits", "digits-mlp", "digits-b4", "read-number"]
    )
    copy_model(repository / "digits", repository, "full-batch",
               {"batching": {"max_batch_size": 4, "max_delay_ms": HOLD_MS}})
    _sharpen_model(_model(repository, "sharpen") / "model.onnx")
    write_model(repository / "id-fp64", "id-fp64", {},
                model=reference.identity_model(TensorProto.DOUBLE, ["N", 4]))
    write_model(repository / "ties", "ties",
                {"postprocess": {"type": "classification", "top_k": 3}},
                model=reference.identity_model(TensorProto.FLOAT, ["N", 5]))
    running = Server.start(repository, root)
    yield running
    running.stop()


def _outputs(response):
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def _array(output):
    return np.array(output["data"], np.float32).reshape(output["shape"])


def test_a_full_batch_is_answered_without_waiting_for_the_delay(live):
    rows = reference.digits(4, offset=40)

    def one(index):
        started = time.perf_counter()
        response = live.infer("full-batch", [v2_input("input", rows[index : index + 1])])
        return _outputs(response)["label"]["data"][0], time.perf_counter() - started

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(4)))
    expected = reference.run("digits", {"input": rows})["label"].tolist()
    assert [label for label, _ in answers] == expected
    assert max(seconds for _, seconds in answers) < HOLD_MS / 1000 / 4, answers


def test_fp64_survives_a_raw_grpc_round_trip(live):
    values = np.array([[0.1, 1e300, -2.5e-310, 1 / 3], [np.pi, -0.0, 2**-60, 123456789.123456789]])
    [result] = grpc_calls(live.grpc_target, [
        {"op": "infer", "model": "id-fp64", "inputs": [v2_input("x", values)]},
    ])
    tensor = result["ok"]["outputs"]["y"]
    assert tensor["datatype"] == "float64"
    np.testing.assert_array_equal(np.array(tensor["data"]).reshape(tensor["shape"]), values)


def _rows_histogram(server, model):
    metrics = server.metrics()
    return [
        sum(v for labels, v in metrics.get(name, {}).items()
            if dict(labels)["model_name"] == model)
        for name in ("mlserver_npu_batch_rows_count", "mlserver_npu_batch_rows_sum")
    ]


def test_batch_rows_counts_request_rows_not_padding(live):
    """digits-b4 runs batches of 4: a request of 3 rows is one run of 3 rows (1 padded)."""
    runs, rows = _rows_histogram(live, "digits-b4")
    pixels = reference.digits(3, offset=7)
    labels = _outputs(live.infer("digits-b4", [v2_input("input", pixels)]))["label"]["data"]
    assert labels == reference.run("digits-b4", {"input": np.concatenate(
        [pixels, pixels[-1:]])})["label"][:3].tolist()
    assert _rows_histogram(live, "digits-b4") == [runs + 1, rows + 3]


def test_a_pipeline_with_its_dependent_step_first_runs_in_order_and_combines(live):
    """`sharp` is listed before `lin`, whose output it takes; `mean` of three divides by
    three and `max` is the elementwise maximum, against both models run here. (Loaded
    through the repository API: a failed load fails this test alone.)"""
    _pipeline(live.repository, "out-of-order", OUT_OF_ORDER)
    loaded = live.http.post("/v2/repository/models/out-of-order/load")
    assert loaded.status_code == 200, loaded.text
    pixels = reference.digits(6, offset=500)
    served = _outputs(live.infer("out-of-order", [v2_input("input", pixels)]))
    lin = reference.run("digits", {"input": pixels})["probabilities"]
    mlp = reference.run("digits-mlp", {"input": pixels})["probabilities"]
    sharp = lin**2 / (lin**2).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(_array(served["sharp"]), sharp, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_array(served["mean"]), (lin + mlp + sharp) / 3,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_array(served["max"]), np.maximum(np.maximum(lin, mlp), sharp),
                               rtol=1e-5, atol=1e-7)


def _features(tile: Image.Image) -> np.ndarray:
    """read-number's preprocessing of one tile, by Pillow here."""
    small = tile.convert("L").resize((8, 8), Image.BOX)
    return (np.asarray(small, np.float32) * 16 / 255).reshape(1, 64)


def test_the_tiles_of_a_2x2_grid_come_out_in_row_major_order(live):
    _, x_test, _, _ = images.digits_split()
    tiles = [Image.open(io.BytesIO(images.digit_file(x_test[i], "PNG"))) for i in range(40)]
    labels = [int(reference.run("digits", {"input": _features(t)})["label"][0]) for t in tiles]
    chosen = []  # four tiles of four different labels, so that any other order reads otherwise
    for tile, label in zip(tiles, labels):
        if label not in [labels[tiles.index(c)] for c in chosen]:
            chosen.append(tile)
        if len(chosen) == 4:
            break
    grid = Image.new("L", (2 * TILE, 2 * TILE))
    for position, tile in enumerate(chosen):
        grid.paste(tile, ((position % 2) * TILE, (position // 2) * TILE))
    expected = "".join(str(labels[tiles.index(t)]) for t in chosen)  # TL, TR, BL, BR
    body = {"name": "input", "shape": [1], "datatype": "BYTES",
            "data": [b64(encode(grid, "PNG"))], "parameters": {"content_type": "image"}}
    served = _outputs(live.infer("read-number", [body]))
    [text] = served["probabilities"]["data"]
    assert text == expected


def test_tied_top_k_scores_rank_the_lower_index_first(live):
    scores = np.array([[0.5, 0.9, 0.9, 0.1, 0.9], [0.2, 0.2, 0.2, 0.2, 0.3]], np.float32)
    served = _outputs(live.infer("ties", [v2_input("x", scores)]))["y"]
    assert served["shape"] == [2, 3]
    assert served["data"] == ["0.900000:1", "0.900000:2", "0.900000:4",
                              "0.300000:4", "0.200000:0", "0.200000:1"]


def test_a_json_input_nested_deeper_than_its_shape_is_a_400(live):
    pixels = reference.digits(1)[0].tolist()
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "data": [[[value] for value in pixels]]}]}
    response = live.http.post("/v2/models/digits/infer", json=body)
    assert response.status_code == 400, response.text
    assert "input" in response.json()["error"]
    assert len(response.text) < 1000
    # the same values nested as the shape says are served
    body["inputs"][0]["data"] = [pixels]
    assert response.status_code == 400 and _outputs(
        live.http.post("/v2/models/digits/infer", json=body)
    )["label"]["data"] == reference.run("digits", {"input": reference.digits(1)})["label"].tolist()
