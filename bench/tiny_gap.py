"""python -m bench.tiny_gap: where a tiny gRPC request's cost goes, by elimination. One server
serves the digits model four ways: `digits` (NPURuntime), `run-only` (the same runtime and
model, its predict only running the model with onnxruntime: bench/echo.py RunOnlyNPURuntime),
`echo-npu` (the same, its predict echoing: EchoNPURuntime) and `echo` (MLServer's floor,
EchoRuntime). One client (bench/load.py's, in this process) keeps --concurrency zero-copy
gRPC requests in flight on each in turn, rounds alternating the order, and reads the server's
CPU per request and the throughput after 1 s of warm-up; medians over --rounds.

    python -m bench.tiny_gap --rounds 5 --seconds 5

echo-npu against echo: what being the plugin's model costs outside predict (the zero-copy
converters, the REST boundary's registration, the metrics of the model); run-only against
echo-npu: what running the model costs; digits against run-only: what the rest of predict
costs (decode, checks, pool, encode, per-stage metrics).
"""
import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .load import GrpcClient, measure as measure_point
from .servers import MLServer, repo_env
from .workloads import REPO, WORKLOADS

MODELS = {"digits": "mlserver_npu.NPURuntime", "run-only": "bench.echo.RunOnlyNPURuntime",
          "echo-npu": "bench.echo.EchoNPURuntime", "echo": "bench.echo.EchoRuntime"}


def write_repository(root: Path) -> Path:
    shutil.copy(REPO / "model-repository" / "settings.json", root / "settings.json")
    settings = json.loads((REPO / "model-repository" / "digits" / "model-settings.json")
                          .read_text())
    for name, implementation in MODELS.items():
        folder = root / name
        folder.mkdir()
        if implementation == MODELS["echo"]:
            model = {"name": name, "implementation": implementation}
        else:
            shutil.copy(REPO / "model-repository" / "digits" / "model.onnx", folder)
            model = {**settings, "name": name, "implementation": implementation}
        (folder / "model-settings.json").write_text(json.dumps(model))
    return root


async def point(target: str, model: str, seconds: float, concurrency: int,
                pid: int) -> Dict[str, Any]:
    """One `bench.load` point of `model`: digits' FP32 [1, 64] as raw contents."""
    client = GrpcClient(target, model, WORKLOADS["digits"])
    try:
        measured = await measure_point(client, concurrency, 1.0, seconds, pid)
    finally:
        await client.aclose()
    if measured["errors"] or not measured["requests"]:
        raise SystemExit(f"{model}: {measured['first_error'] or 'no request answered'}")
    return measured


def measure(rounds: int, seconds: float, concurrency: int) -> Dict[str, List[Tuple[float, float]]]:
    results: Dict[str, List[Tuple[float, float]]] = {name: [] for name in MODELS}
    with tempfile.TemporaryDirectory(prefix="bench-tiny-gap-") as tmp:
        root = Path(tmp)
        (root / "repository").mkdir()
        repository = write_repository(root / "repository")
        server = MLServer.start(repository, root, env={"PYTHONPATH": repo_env()["PYTHONPATH"]})
        try:
            for index in range(rounds):
                order = list(MODELS) if index % 2 == 0 else list(MODELS)[::-1]
                for name in order:
                    measured = asyncio.run(point(server.grpc_target, name, seconds,
                                                 concurrency, server.process.pid))
                    results[name].append((measured["server_cpu_ms"], measured["rps"]))
                print(f"round {index + 1}/{rounds}: " + ", ".join(
                    f"{name} {results[name][-1][0]:.3f} ms" for name in MODELS), flush=True)
        finally:
            server.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tiny_gap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    results = measure(args.rounds, args.seconds, args.concurrency)
    echo = statistics.median(rps for _, rps in results["echo"])
    print("| model | server CPU ms/req (median) | req/s (median) | throughput / echo |")
    print("|---|--:|--:|--:|")
    for name, points in results.items():
        rps = statistics.median(r for _, r in points)
        print(f"| {name} | {statistics.median(c for c, _ in points):.3f} | {rps:.0f} | "
              f"{rps / echo:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
