"""The geometry each preprocessing op records, against the arithmetic of the op written out
here: points of the client's image land where the op puts those pixels, and map back."""
import io

import numpy as np
import pytest
from PIL import Image
from pydantic import TypeAdapter

from mlserver_npu.backends import TensorSpec
from mlserver_npu.codecs.image import open_image, original_size
from mlserver_npu.processing.geometry import Geometry
from mlserver_npu.processing.preprocess import PreprocessOps, Preprocessor

OPS = TypeAdapter(PreprocessOps)


def _preprocessor(ops, shape):
    return Preprocessor(OPS.validate_python(ops), TensorSpec("x", np.dtype(np.float32), shape))


def _marked(width, height, x, y):
    """A black image with a white 9x9 square centred on pixel (x, y)."""
    image = Image.new("RGB", (width, height))
    image.paste((255, 255, 255), (x - 4, y - 4, x + 5, y + 5))
    return image


@pytest.mark.parametrize("ops, shape", [
    ([{"op": "letterbox", "pad_value": 0, "resample": "nearest"}], [1, 3, 64, 96]),
    ([{"op": "letterbox", "pad_value": 0, "position": "top_left", "resample": "nearest"}],
     [1, 3, 96, 64]),
    ([{"op": "resize", "shorter_side": 60, "resample": "nearest"},
      {"op": "center_crop", "size": [40, 40]}], [1, 3, None, None]),
    ([{"op": "resize", "size": [33, 71], "resample": "nearest"}], [1, 3, None, None]),
    ([{"op": "center_crop", "size": [90, 120]},
      {"op": "resize", "size": [45, 40], "resample": "nearest"}], [1, 3, None, None]),
])
def test_a_pixel_lands_where_the_geometry_says_and_maps_back(ops, shape):
    preprocessor = _preprocessor(ops, shape)
    width, height, x, y = 150, 100, 103, 41
    (batch,), (geometry,) = [list(v) for v in preprocessor([_marked(width, height, x, y)])]
    plane = batch[0]
    centre = geometry.to_input(np.float32([x + 0.5, y + 0.5]))
    # the square is where the geometry puts its centre, and only around there
    assert plane[int(centre[1]), int(centre[0])] > 0
    rows, columns = np.nonzero(plane)
    assert abs(rows.mean() - centre[1]) < 1 and abs(columns.mean() - centre[0]) < 1
    back = geometry.to_original(centre)
    np.testing.assert_allclose(back, [x + 0.5, y + 0.5], atol=1e-3)
    assert geometry.original == (height, width)
    assert geometry.input_size == plane.shape


def test_letterbox_geometry_is_ultralytics_gain_and_padding():
    preprocessor = _preprocessor([{"op": "letterbox"}], [1, 3, 128, 128])
    (_, (geometry,)) = preprocessor([Image.new("RGB", (200, 100))])
    # r = 0.64; 128x64, padded 32 above and below
    assert geometry.scale == (0.64, 0.64)
    assert geometry.offset == (32.0, 0.0)
    assert geometry.content() == (32, 0, 96, 128)
    boxes = geometry.boxes_to_original(np.float32([[0, 32, 128, 96], [-10, 0, 64, 200]]))
    np.testing.assert_allclose(boxes[0], [0, 0, 200, 100], atol=1e-4)
    np.testing.assert_allclose(geometry.clip_boxes(boxes)[1], [0, 0, 100, 100], atol=1e-4)


def test_tiles_get_their_own_offsets():
    preprocessor = _preprocessor(
        [{"op": "convert", "mode": "L"}, {"op": "tiles", "size": [8, 8]}], [None, 64]
    )
    image = Image.new("L", (24, 16))
    tiles, geometries, counts = preprocessor.cut([image], [Geometry.of(16, 24)])
    assert counts == [6]
    assert [g.offset for g in geometries] == [
        (-top, -left) for top in (0, 8) for left in (0, 8, 16)
    ]
    np.testing.assert_allclose(geometries[4].to_original(np.float32([1, 2])), [9, 10])


def test_a_draft_decoded_jpeg_keeps_the_size_the_client_sent():
    image = Image.new("RGB", (1600, 1200), (200, 10, 10))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    decoded = open_image(buffer.getvalue(), 10**8, lambda size: (200, 150))
    assert decoded.size == (200, 150)  # decoded at 1/8
    assert original_size(decoded) == (1600, 1200)
    geometry = Geometry.of(1200, 1600).resized(decoded.height, decoded.width)
    np.testing.assert_allclose(geometry.to_original(np.float32([100, 75])), [800, 600])
