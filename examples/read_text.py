"""Read the text of image files with `model-repository/ocr` served by mlserver-npu.

    python examples/read_text.py examples/images/ocr-page.png
    python examples/read_text.py --protocol grpc --draw lines.png examples/images/ocr-page.png

Uses tritonclient (`pip install "tritonclient[http,grpc]"`). The files go as one batch of a
BYTES input; each image's lines come back in reading order (`text` [images, K], `text_scores`
[images, K], `text_boxes` [images, K, 4, 2], `num_texts` [images]). `--draw PNG` also asks for
`text_boxes` as an image: the first file with its lines outlined.
"""
import argparse
import base64
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

OUTPUTS = ["text", "text_scores", "text_boxes", "num_texts"]


def read_http(url: str, model: str, files: List[bytes], draw: bool) -> Dict[str, np.ndarray]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    image = httpclient.InferInput("image", [len(files)], "BYTES")
    encoded = np.array([base64.b64encode(f).decode("ascii") for f in files], dtype=object)
    image.set_data_from_numpy(encoded, binary_data=False)
    outputs = []
    for name in OUTPUTS:
        output = httpclient.InferRequestedOutput(name, binary_data=False)
        if draw and name == "text_boxes":
            output._parameters["content_type"] = "image"  # tritonclient has no argument for it
        outputs.append(output)
    result = client.infer(model, [image], outputs=outputs)
    return {name: result.as_numpy(name) for name in OUTPUTS}


def read_grpc(url: str, model: str, files: List[bytes], draw: bool) -> Dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    image = grpcclient.InferInput("image", [len(files)], "BYTES")
    image.set_data_from_numpy(np.array(files, dtype=object))
    outputs = []
    for name in OUTPUTS:
        output = grpcclient.InferRequestedOutput(name)
        if draw and name == "text_boxes":  # tritonclient has no argument for it
            output._output.parameters["content_type"].string_param = "image"
        outputs.append(output)
    result = client.infer(model, [image], outputs=outputs)
    return {name: result.as_numpy(name) for name in OUTPUTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="JPEG, PNG, BMP, WebP, GIF files")
    parser.add_argument("--model", default="ocr")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--url", help="host:port (default localhost:8080, gRPC localhost:8081)")
    parser.add_argument("--draw", type=Path, help="write the first image with its lines drawn")
    args = parser.parse_args()

    url = args.url or ("localhost:8081" if args.protocol == "grpc" else "localhost:8080")
    read = read_grpc if args.protocol == "grpc" else read_http
    files = [path.read_bytes() for path in args.images]
    found = read(url, args.model, files, args.draw is not None)
    for index, path in enumerate(args.images):
        print(f"{path}:")
        for k in range(int(found["num_texts"][index])):
            text = found["text"][index][k]
            text = text.decode() if isinstance(text, bytes) else text
            print(f"  {found['text_scores'][index][k]:.3f}  {text}")
    if args.draw is not None:
        drawn: Optional[object] = found["text_boxes"][0]
        drawn = drawn.decode() if isinstance(drawn, bytes) else drawn
        args.draw.write_bytes(base64.b64decode(drawn))
        print(f"lines of {args.images[0]} drawn in {args.draw}")


if __name__ == "__main__":
    main()
