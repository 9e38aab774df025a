"""Classify scikit-learn digits with the `digits` example model over gRPC (tritonclient.grpc).

    python examples/infer_grpc.py [--url localhost:8081] [--count 5]
"""
import argparse

import numpy as np
import tritonclient.grpc as grpcclient
from sklearn.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="localhost:8081")
    parser.add_argument("--count", type=int, default=5)
    args = parser.parse_args()

    digits = load_digits()
    pixels = digits.data[: args.count].astype(np.float32)

    client = grpcclient.InferenceServerClient(args.url)
    tensor = grpcclient.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)  # sent as raw tensor contents
    result = client.infer("digits", [tensor])

    labels, probabilities = result.as_numpy("label"), result.as_numpy("probabilities")
    for truth, label, probs in zip(digits.target, labels, probabilities):
        print(f"true {truth}  predicted {label}  p={probs[label]:.3f}")


if __name__ == "__main__":
    main()
