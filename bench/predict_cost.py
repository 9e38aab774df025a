"""python -m bench.predict_cost: what the plugin costs per request around the device run,
in-process and without a server or client: `NPURuntime.predict` on a loaded model of
model-repository/, called back to back with one request as zero-copy gRPC delivers it
(arrays), against onnxruntime's own `InferenceSession.run` on the same input. Best of
--repeats, in microseconds per call: on a shared machine the best is the steadiest.

    python -m bench.predict_cost --model digits --calls 5000 --repeats 5
"""
import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Callable, List

import numpy as np
import onnxruntime as ort
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, RequestInput, TensorData

from mlserver_npu import NPURuntime
from mlserver_npu.wire import WireArray

from .workloads import REPO


def _best(calls: int, repeats: int, call: Callable[[], None]) -> float:
    for _ in range(min(calls, 200)):
        call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


async def measure(model: str, calls: int, repeats: int) -> List[str]:
    folder = REPO / "model-repository" / model
    settings = json.loads((folder / "model-settings.json").read_text())
    uri = Path(settings["parameters"]["uri"])
    settings["parameters"]["uri"] = str(folder / uri)
    runtime = NPURuntime(ModelSettings(**settings))
    await runtime.load()
    spec = runtime.stages.pool.inputs[0]
    shape = [1 if dim is None else dim for dim in spec.shape]
    array = np.random.default_rng(0).random(shape).astype(spec.dtype)
    request = InferenceRequest(inputs=[RequestInput(
        name=spec.name, shape=shape, datatype=runtime.inputs[0].datatype, data=[0])])
    request.inputs[0].data = TensorData.model_construct(root=array.reshape(-1).view(WireArray))

    for _ in range(200):  # until a run fast enough to stay inline has been seen
        await runtime.predict(request)

    def predict() -> None:
        # predict runs inline for a tiny model: one step of the coroutine does all of it
        coroutine = runtime.predict(request)
        try:
            coroutine.send(None)
        except StopIteration:
            return
        coroutine.close()
        raise SystemExit("predict did not run inline: this measures tiny models only")

    served = _best(calls, repeats, predict)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(folder / uri), options, providers=["CPUExecutionProvider"])
    feeds = {spec.name: array}
    raw = _best(calls, repeats, lambda: session.run(None, feeds))
    await runtime.unload()
    return [
        f"model {model}, input {spec.name} {shape}: best of {repeats} x {calls} calls",
        "| what | us per call |",
        "|---|--:|",
        f"| NPURuntime.predict (decode, plan, pool, run, encode, metrics) | {served:.1f} |",
        f"| onnxruntime InferenceSession.run alone | {raw:.1f} |",
        f"| the plugin around the run | {served - raw:.1f} |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.predict_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits",
                        help="a model folder of model-repository/ (one tensor input)")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("\n".join(asyncio.run(measure(args.model, args.calls, args.repeats))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
