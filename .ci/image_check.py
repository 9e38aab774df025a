"""Ask a server started from the image (by .ci/image-test) what a user would: health, metadata,
and the same digits over REST and gRPC, compared with onnxruntime run here on the same file;
that other models are ready on their backends (an extra's runtime installed); and check that
the process listening on the REST port runs as the image's non-root user."""
import argparse
import sys
import time

import httpx
import numpy as np
import onnxruntime as ort
import psutil
import tritonclient.grpc as grpcclient
from sklearn.datasets import load_digits


def wait_ready(client: httpx.Client, model: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get(f"/v2/models/{model}/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise SystemExit(f"model {model} not ready after {timeout}s")


def listener_uid(port: int) -> int:
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            process = psutil.Process(connection.pid)
            print(f"port {port}: pid {process.pid} {' '.join(process.cmdline()[:3])}")
            return process.uids().real
    raise SystemExit(f"no process listens on port {port}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", required=True)
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--reference", required=True, help="the model file, run here")
    parser.add_argument("--uid", type=int, required=True, help="the image's USER")
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--other", action="append", default=[], metavar="MODEL=BACKEND",
                        help="another model that must be ready, on that backend")
    args = parser.parse_args()

    rows = load_digits().data[:5].astype(np.float32)
    session = ort.InferenceSession(args.reference, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    expected = dict(zip(names, session.run(names, {session.get_inputs()[0].name: rows})))

    client = httpx.Client(base_url=f"http://{args.http}", timeout=30)
    wait_ready(client, args.model, args.timeout)
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert client.get(path).status_code == 200, path
    metadata = client.get(f"/v2/models/{args.model}").json()
    assert metadata["name"] == args.model, metadata
    assert metadata["parameters"]["backend"] == "onnxruntime", metadata

    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}]}
    reply = client.post(f"/v2/models/{args.model}/infer", json=body)
    assert reply.status_code == 200, reply.text
    rest = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in reply.json()["outputs"]}

    grpc = grpcclient.InferenceServerClient(args.grpc)
    tensor = grpcclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = grpc.infer(args.model, [tensor])
    for name, value in expected.items():
        np.testing.assert_allclose(rest[name], value, rtol=1e-5, atol=1e-6, err_msg=f"REST {name}")
        np.testing.assert_allclose(
            result.as_numpy(name), value, rtol=1e-5, atol=1e-6, err_msg=f"gRPC {name}"
        )

    for other in args.other:
        name, backend = other.split("=")
        wait_ready(client, name, args.timeout)
        served_by = client.get(f"/v2/models/{name}").json()["parameters"]["backend"]
        assert served_by == backend, f"{name} is served by {served_by}, not {backend}"
        print(f"{name}: ready on {backend}")

    uid = listener_uid(int(args.http.rsplit(":", 1)[1]))
    assert uid == args.uid != 0, f"server runs as uid {uid}, the image's USER is {args.uid}"
    print(f"{args.model}: REST and gRPC equal onnxruntime on {len(rows)} rows; uid {uid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
