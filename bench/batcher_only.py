"""The batcher alone: `python -m bench.batcher_only` drives the plugin's batcher and session
pool on a simulated NPU (bench/simulated_npu, through the real furiosa backend) from N asyncio
clients in one process, no server, and prints the fraction of the device's capacity each
concurrency reaches with batching off and on: what the batching itself can do, apart from
the host's cost per request."""
import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from .servers import SIMULATED_NPU
from .workloads import WORKLOADS

sys.path.insert(0, str(SIMULATED_NPU))  # before the furiosa backend imports furiosa.runtime

from mlserver.settings import ModelSettings  # noqa: E402

from mlserver_npu.backends import get_backend  # noqa: E402
from mlserver_npu.batcher import Batcher, BatchingSettings  # noqa: E402
from mlserver_npu.pool import SessionPool  # noqa: E402


async def measure(workload: str, concurrency: int, batching: bool, delay_ms: float,
                  seconds: float) -> float:
    """Rows per second reaching `concurrency` one-row clients, as a fraction of capacity."""
    spec = WORKLOADS[workload]
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "model.onnx"
        model.write_bytes(spec.model_file.read_bytes())
        (Path(folder) / "simulated-npu.json").write_text(json.dumps({"run_ms": spec.device.run_ms}))
        extra = spec.device.extra()
        backend = get_backend("furiosa")
        options = backend.Options.model_validate(extra["options"])
        sessions = [await backend.open(model, device, options)
                    for device in extra["device"].split(",")]
        pool = SessionPool(sessions, "batcher-only")
        runner = pool
        if batching:
            settings = ModelSettings(name="batcher-only", implementation="mlserver.MLModel")
            runner = Batcher(pool, BatchingSettings(max_delay_ms=delay_ms), settings)
        feeds = {spec.input_name: spec.sample()}
        done, state = [0], {"stop": False}

        async def client() -> None:
            while not state["stop"]:
                await runner.run(feeds)
                done[0] += 1

        tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
        await asyncio.sleep(1)  # warm-up
        first, began = done[0], time.perf_counter()
        await asyncio.sleep(seconds)
        rate = (done[0] - first) / (time.perf_counter() - began)
        state["stop"] = True
        await asyncio.gather(*tasks)
        if batching:
            await runner.close()
        await pool.close()
    return rate / spec.device.capacity


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batcher_only", description=__doc__)
    parser.add_argument("--models", default="npu-sim", help="simulated-NPU workloads")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="batching.max_delay_ms")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point")
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    print("| workload | batching | " + " | ".join(f"c={c}" for c in concurrency) + " |")
    print("|---|---|" + "--:|" * len(concurrency))
    for workload in args.models.split(","):
        for batching in (False, True):
            fractions = [asyncio.run(measure(workload, c, batching, args.delay_ms, args.duration))
                         for c in concurrency]
            print(f"| {workload} | {'ours' if batching else 'off'} | "
                  + " | ".join(f"{f:.2f}" for f in fractions) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
