"""Classify scikit-learn digits with the `digits` example model, over REST or gRPC.

    python examples/infer_digits.py --protocol http [--url localhost:8080] [--count 5]
    python examples/infer_digits.py --protocol grpc [--url localhost:8081] [--count 5]
"""
import argparse

import numpy as np
from sklearn.datasets import load_digits


def infer_http(url: str, pixels: np.ndarray) -> tuple:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)  # sent as binary data (Triton's binary extension)
    result = client.infer("digits", [tensor])
    return result.as_numpy("label"), result.as_numpy("probabilities")


def infer_grpc(url: str, pixels: np.ndarray) -> tuple:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)  # sent as raw tensor contents
    result = client.infer("digits", [tensor])
    return result.as_numpy("label"), result.as_numpy("probabilities")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--url", help="default: localhost:8080 (http), localhost:8081 (grpc)")
    parser.add_argument("--count", type=int, default=5)
    args = parser.parse_args()

    digits = load_digits()
    pixels = digits.data[: args.count].astype(np.float32)
    if args.protocol == "http":
        labels, probabilities = infer_http(args.url or "localhost:8080", pixels)
    else:
        labels, probabilities = infer_grpc(args.url or "localhost:8081", pixels)

    for truth, label, probs in zip(digits.target, labels, probabilities):
        print(f"true {truth}  predicted {label}  p={probs[label]:.3f}")


if __name__ == "__main__":
    main()
