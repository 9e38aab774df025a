"""Classify scikit-learn digits with the `digits` example model over REST (tritonclient.http).

    python examples/infer_http.py [--url localhost:8080] [--count 5]
"""
import argparse

import numpy as np
import tritonclient.http as httpclient
from sklearn.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="localhost:8080")
    parser.add_argument("--count", type=int, default=5)
    args = parser.parse_args()

    digits = load_digits()
    pixels = digits.data[: args.count].astype(np.float32)

    client = httpclient.InferenceServerClient(args.url)
    tensor = httpclient.InferInput("input", list(pixels.shape), "FP32")
    # MLServer's REST API has no binary tensor extension: send the data as JSON.
    tensor.set_data_from_numpy(pixels, binary_data=False)
    outputs = [httpclient.InferRequestedOutput(name) for name in ("label", "probabilities")]
    result = client.infer("digits", [tensor], outputs=outputs)

    labels, probabilities = result.as_numpy("label"), result.as_numpy("probabilities")
    for truth, label, probs in zip(digits.target, labels, probabilities):
        print(f"true {truth}  predicted {label}  p={probs[label]:.3f}")


if __name__ == "__main__":
    main()
