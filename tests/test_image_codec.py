"""The image codec as other MLServer code finds it: through MLServer's codec registry."""
import numpy as np
from mlserver.codecs.base import find_input_codec
from mlserver.errors import InferenceError
import pytest

from images import encode, photo
from mlserver_npu.codecs import ImageCodec


def test_the_image_content_type_is_registered():
    assert find_input_codec("image") is ImageCodec


@pytest.mark.parametrize("use_bytes", [True, False], ids=["grpc-bytes", "rest-base64"])
def test_requests_round_trip_files_images_and_arrays(use_bytes):
    picture = photo(30, 20, 1)
    jpeg = encode(picture, "JPEG")
    request_input = ImageCodec.encode_input("x", [jpeg, picture, np.asarray(picture)], use_bytes)
    assert request_input.shape == [3] and request_input.parameters.content_type == "image"
    decoded = ImageCodec.decode_input(request_input)
    assert [image.format for image in decoded] == ["JPEG", "PNG", "PNG"]
    for image in decoded[1:]:  # PNG is lossless
        assert np.array_equal(np.asarray(image), np.asarray(picture))


def test_outputs_are_base64_png_of_each_batch_element():
    batch = np.stack([np.asarray(photo(16, 12, seed)) for seed in (2, 3)])  # [N, H, W, C]
    for layout in (batch, batch.transpose(0, 3, 1, 2).astype(np.float32)):  # and [N, C, H, W]
        output = ImageCodec.encode_output("y", layout)
        assert output.datatype == "BYTES" and output.shape == [2]
        images = ImageCodec.decode_output(output)
        assert np.array_equal(np.stack([np.asarray(i) for i in images]), batch)


def test_a_bad_payload_names_the_input_and_index():
    request_input = ImageCodec.encode_input("pictures", [encode(photo(8, 8), "PNG"), b"junk"])
    with pytest.raises(InferenceError, match=r"input 'pictures', batch index 1: not a decodable"):
        ImageCodec.decode_input(request_input)
