"""Send image files to a detector served by mlserver-npu and print its boxes.

    python examples/detect.py examples/images/digits-canvas.png
    python examples/detect.py --protocol grpc --confidence 0.9 examples/images/digits-canvas.png
    python examples/detect.py --draw drawn.png examples/images/digits-canvas.png

Uses tritonclient (`pip install "tritonclient[http,grpc]"`). The files are one batch; each
image's boxes come back in its own pixels (x1, y1, x2, y2), `num_detections` says how many
rows of each image are real. `--draw` asks for `detection_boxes` as an image: the server
returns the first file with its boxes drawn, as PNG.
"""
import argparse
import base64
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

OUTPUTS = ["num_detections", "detection_boxes", "detection_scores", "detection_labels"]


def detect_http(url: str, model: str, files: List[bytes], confidence: Optional[float]):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("images", [len(files)], "BYTES")
    encoded = np.array([base64.b64encode(f).decode("ascii") for f in files], dtype=object)
    tensor.set_data_from_numpy(encoded, binary_data=False)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in OUTPUTS]
    parameters = None if confidence is None else {"confidence_threshold": confidence}
    result = client.infer(model, [tensor], outputs=outputs, parameters=parameters)
    return {name: result.as_numpy(name) for name in OUTPUTS}


def detect_grpc(url: str, model: str, files: List[bytes], confidence: Optional[float]):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("images", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=object))
    outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]
    # MLServer's gRPC parameters have no floating-point field: send the number as a string
    parameters = None if confidence is None else {"confidence_threshold": str(confidence)}
    result = client.infer(model, [tensor], outputs=outputs, parameters=parameters)
    return {name: result.as_numpy(name) for name in OUTPUTS}


def draw(url: str, model: str, image: bytes) -> bytes:
    """The image with its boxes drawn, from the server (REST, plain httpx)."""
    import httpx

    body = {
        "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                    "data": [base64.b64encode(image).decode("ascii")]}],
        "outputs": [{"name": "detection_boxes", "parameters": {"content_type": "image"}}],
    }
    reply = httpx.post(f"http://{url}/v2/models/{model}/infer", json=body, timeout=60)
    reply.raise_for_status()
    return base64.b64decode(reply.json()["outputs"][0]["data"][0])


def show(path: Path, index: int, result: Dict[str, np.ndarray]) -> None:
    count = int(result["num_detections"][index])
    print(f"{path}: {count} detections")
    for box, score, label in zip(result["detection_boxes"][index][:count],
                                 result["detection_scores"][index][:count],
                                 result["detection_labels"][index][:count]):
        label = label.decode() if isinstance(label, bytes) else label
        x1, y1, x2, y2 = box.tolist()
        print(f"  {label:>6} {score:.3f}  ({x1:.0f}, {y1:.0f}) - ({x2:.0f}, {y2:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="JPEG, PNG, BMP, WebP, GIF files")
    parser.add_argument("--model", default="digits-detector")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--url", help="host:port (default localhost:8080, gRPC localhost:8081)")
    parser.add_argument("--confidence", type=float, help="this request's confidence_threshold")
    parser.add_argument("--draw", type=Path, help="write the first image with its boxes here")
    args = parser.parse_args()

    url = args.url or ("localhost:8081" if args.protocol == "grpc" else "localhost:8080")
    detect = detect_grpc if args.protocol == "grpc" else detect_http
    files = [path.read_bytes() for path in args.images]
    result = detect(url, args.model, files, args.confidence)
    for index, path in enumerate(args.images):
        show(path, index, result)
    if args.draw:
        http_url = url if args.protocol == "http" else "localhost:8080"
        args.draw.write_bytes(draw(http_url, args.model, files[0]))
        print(f"drawn: {args.draw}")


if __name__ == "__main__":
    main()
