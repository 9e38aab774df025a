"""Send image files to a model served by mlserver-npu and print its top classes.

    python examples/classify.py examples/images/digit-7.jpg
    python examples/classify.py --protocol grpc examples/images/digit-*.png
    python examples/classify.py --model squeezenet-image examples/images/shapes.jpg

Uses tritonclient (`pip install "tritonclient[http,grpc]"`). Each file is one batch element
of a BYTES input; the requested output comes back as Triton's classification strings
"score:index:label", best first. Both protocols carry the files as raw bytes (REST through
Triton's binary tensor extension, tritonclient.http's default).
"""
import argparse
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np


def _names(metadata: dict, output: Optional[str]) -> Tuple[str, str]:
    """The image input, and the output to classify: the one asked for, else the first BYTES
    output (a configured classification), else the first output."""
    def content_type(tensor: dict) -> Optional[str]:
        value = (tensor.get("parameters") or {}).get("content_type")
        return value.get("string_param") if isinstance(value, dict) else value  # gRPC JSON

    inputs = metadata["inputs"]
    image = next((t for t in inputs if content_type(t) == "image"), inputs[0])
    outputs = metadata["outputs"]
    chosen = output or next((t for t in outputs if t["datatype"] == "BYTES"), outputs[0])["name"]
    return image["name"], chosen


def classify_http(url: str, model: str, files: List[bytes], output: Optional[str], top_k: int):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    input_name, output_name = _names(client.get_model_metadata(model), output)
    tensor = httpclient.InferInput(input_name, [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=object))
    requested = httpclient.InferRequestedOutput(output_name, class_count=top_k)
    return client.infer(model, [tensor], outputs=[requested]).as_numpy(output_name)


def classify_grpc(url: str, model: str, files: List[bytes], output: Optional[str], top_k: int):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    input_name, output_name = _names(client.get_model_metadata(model, as_json=True), output)
    tensor = grpcclient.InferInput(input_name, [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=object))
    requested = grpcclient.InferRequestedOutput(output_name, class_count=top_k)
    return client.infer(model, [tensor], outputs=[requested]).as_numpy(output_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="JPEG, PNG, BMP, WebP, GIF files")
    parser.add_argument("--model", default="digits-image")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--url", help="host:port (default localhost:8080, gRPC localhost:8081)")
    parser.add_argument("--output", help="output to classify (default: the model's labels)")
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args()

    url = args.url or ("localhost:8081" if args.protocol == "grpc" else "localhost:8080")
    classify = classify_grpc if args.protocol == "grpc" else classify_http
    files = [path.read_bytes() for path in args.images]
    rows = classify(url, args.model, files, args.output, args.top_k)
    for path, row in zip(args.images, rows):
        strings = [item.decode() if isinstance(item, bytes) else item for item in row]
        print(f"{path}: {'  '.join(strings)}")


if __name__ == "__main__":
    main()
