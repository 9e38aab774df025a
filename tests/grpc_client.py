"""tritonclient.grpc in its own process: reads a JSON list of calls on stdin, prints results.

Each call is {"op": ..., ...}; each result is {"ok": value} or {"error": message, "status": code}.
Tensors travel as {"name", "datatype", "shape", "data"}; BYTES data as base64 strings.
"""
import base64
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype


def _input(spec):
    tensor = grpcclient.InferInput(spec["name"], spec["shape"], spec["datatype"])
    if spec["datatype"] == "BYTES":
        data = np.array([base64.b64decode(v) for v in spec["data"]], dtype=object)
    else:
        data = np.array(spec["data"], dtype=triton_to_np_dtype(spec["datatype"]))
    tensor.set_data_from_numpy(data.reshape(spec["shape"]))
    return tensor


def _output(spec):
    return grpcclient.InferRequestedOutput(spec["name"], class_count=spec.get("class_count", 0))


def _tensor_json(result, name):
    array = result.as_numpy(name)
    if array.dtype == object:
        data = [base64.b64encode(v).decode() for v in array.ravel()]
    else:
        data = array.ravel().tolist()
    return {"shape": list(array.shape), "datatype": str(array.dtype), "data": data}


def run(client, call):
    op = call["op"]
    if op == "live":
        return client.is_server_live()
    if op == "ready":
        return client.is_server_ready()
    if op == "model_ready":
        return client.is_model_ready(call["model"])
    if op == "server_metadata":
        return client.get_server_metadata(as_json=True)
    if op == "model_metadata":
        return client.get_model_metadata(call["model"], as_json=True)
    if op == "index":
        return client.get_model_repository_index(as_json=True)
    if op == "load":
        return client.load_model(call["model"])
    if op == "unload":
        return client.unload_model(call["model"])
    if op == "infer":
        outputs = [_output(o) for o in call["outputs"]] if call.get("outputs") else None
        result = client.infer(
            call["model"], [_input(i) for i in call["inputs"]], outputs=outputs,
            parameters=call.get("parameters"),
        )
        response = result.get_response(as_json=True)
        return {
            "model_version": response.get("model_version", ""),
            "outputs": {o["name"]: _tensor_json(result, o["name"]) for o in response["outputs"]},
        }
    raise ValueError(f"unknown op {op}")


def main():
    client = grpcclient.InferenceServerClient(sys.argv[1])
    results = []
    for call in json.load(sys.stdin):
        try:
            results.append({"ok": run(client, call)})
        except InferenceServerException as error:
            results.append({"error": error.message(), "status": error.status()})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
