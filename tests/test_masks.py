"""The segmentation core against plain numpy: the letterbox region cut, nearest resizing by
index arithmetic, arg-max and threshold, palette PNGs read back with Pillow."""
import io

import numpy as np
import pytest
from PIL import Image

from mlserver_npu.errors import ConfigurationError
from mlserver_npu.processing import masks


def nearest(classes: np.ndarray, size):
    """Nearest-neighbour resize by pixel centres: out[y, x] = in[floor((y + 0.5) * h / H)]."""
    height, width = size
    rows = [int((y + 0.5) * classes.shape[0] / height) for y in range(height)]
    columns = [int((x + 0.5) * classes.shape[1] / width) for x in range(width)]
    return classes[rows][:, columns]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_logits_letterboxed_cut_and_resized_to_each_image(layout):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, (2, 5, 64, 64)).astype(np.float32)  # input 128x128: mask at 1/2
    output = logits if layout == "nchw" else logits.transpose(0, 2, 3, 1).copy()
    kind = masks.mask_kind(output.shape, output.dtype)
    assert kind == f"scores_{layout}"
    # image 0: 200x100 letterboxed to 128x64 + 32 px each side; image 1: fills the input
    regions = [(32, 0, 96, 128), (0, 0, 128, 128)]
    sizes = [(200, 100), (90, 90)]
    maps = masks.class_maps(output, kind, regions, (128, 128), sizes)
    argmax = logits.argmax(axis=1)
    np.testing.assert_array_equal(maps[0], nearest(argmax[0][:, 16:48], (200, 100)))
    np.testing.assert_array_equal(maps[1], nearest(argmax[1], (90, 90)))
    assert maps[0].dtype == np.int32


def test_probability_threshold_and_linear_resampling():
    probability = np.zeros((1, 4, 4, 1), np.float32)
    probability[0, 1:3, 1:3, 0] = 0.9
    kind = masks.mask_kind(probability.shape, probability.dtype)
    assert kind == "probability_nhwc"
    near = masks.class_maps(probability, kind, [(0, 0, 4, 4)], (4, 4), [(8, 8)], 0.5)[0]
    expected = np.zeros((8, 8), np.int32)
    expected[2:6, 2:6] = 1
    np.testing.assert_array_equal(near, expected)
    high = masks.class_maps(probability, kind, [(0, 0, 4, 4)], (4, 4), [(8, 8)], 0.95)[0]
    assert high.sum() == 0
    # linear: the probabilities are interpolated first, so the square's edge moves inward
    # where the interpolated value falls below 0.5 (OpenCV's half-pixel bilinear)
    linear = masks.class_maps(probability, kind, [(0, 0, 4, 4)], (4, 4), [(8, 8)], 0.5, "linear")[0]
    x = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3)
    profile = np.interp(x, np.arange(4), [0, 0.9, 0.9, 0])  # along each axis
    np.testing.assert_array_equal(linear, np.outer(profile, profile) / 0.9 > 0.5)


def test_class_map_outputs_pass_through():
    classes = np.random.default_rng(2).integers(0, 4, (1, 1, 8, 8)).astype(np.int64)
    kind = masks.mask_kind(classes.shape, classes.dtype)
    assert kind == "map"
    result = masks.class_maps(classes, kind, [(0, 0, 8, 8)], (8, 8), [(16, 16)])[0]
    np.testing.assert_array_equal(result, nearest(classes[0, 0], (16, 16)))
    assert masks.mask_kind((1, 8, 8), np.float32) == "probability_map"


@pytest.mark.parametrize("shape", [(1, 8), (1, 3, 8, 8, 2)])
def test_unusable_shapes_are_configuration_errors(shape):
    with pytest.raises(ConfigurationError) as error:
        masks.mask_kind(shape, np.float32)
    assert str(list(shape)) in str(error.value)


def test_palette_png_is_the_exact_map_and_fractions():
    class_map = np.array([[0, 1, 1], [2, 2, 2]], np.int32)
    png = masks.palette_png(class_map)
    image = Image.open(io.BytesIO(png))
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), class_map)
    palette = np.array(image.getpalette()[:9]).reshape(3, 3)
    np.testing.assert_array_equal(palette, masks.default_palette()[:3])
    voc = [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    np.testing.assert_array_equal(masks.default_palette()[:3], voc)
    np.testing.assert_allclose(masks.class_fractions(class_map, 4), [1 / 6, 2 / 6, 3 / 6, 0])
    custom = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.uint8)
    image = Image.open(io.BytesIO(masks.palette_png(class_map, custom)))
    assert image.getpalette()[:9] == list(range(1, 10))
    with pytest.raises(ValueError):
        masks.palette_png(np.array([[300]]))


def test_overlay_blends_only_the_classes():
    image = np.full((2, 2, 3), 200, np.uint8)
    class_map = np.array([[0, 1], [0, 0]])
    blended = masks.overlay(image, class_map, alpha=0.5)
    np.testing.assert_array_equal(blended[0, 0], [200, 200, 200])
    np.testing.assert_array_equal(blended[0, 1], [164, 100, 100])  # (200 + 128) / 2, 200 / 2
