"""The zero-copy gRPC path (mlserver_npu/wire.py) against MLServer's list path, A/B in one
run: `python -m bench.zero_copy`.

Three MLServers serve the same models: `on` (as shipped: zero-copy on, and
model-repository/settings.json's `gzip_enabled: false`), `off` (`MLSERVER_NPU_ZERO_COPY=0`)
and `before` (zero-copy off and MLServer's default gzip on: the project before this work).
Every case is measured in short windows that alternate between the variants (on, off, on,
off, ...), so a machine whose load drifts (other jobs on the same cores) skews them alike.
The references the issue's targets name are in the same rotation: MLServer's echo model (its
floor) and raw onnxruntime in this process. Besides the example models, an identity model
with a 150,528-float output shows the cost of large replies.

    python -m bench.zero_copy --rounds 3 --seconds 3 --out bench/zero_copy.json
"""
import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from .load import GrpcClient, HttpClient, RawClient, measure
from .servers import MLServer, write_repository
from .workloads import TARGETS, WORKLOADS, Workload

IDENTITY = Workload(
    "identity", "identity", "x", "FP32 [1, 150528] in, the same out",
    sample=lambda: np.random.default_rng(0).random((1, 150528), dtype=np.float32),
)

# (workload, protocol, concurrency, variants); the first variant is the one compared.
CASES: List[Tuple[Workload, str, int, Tuple[str, ...]]] = [
    (WORKLOADS["digits"], "grpc", 16, ("on", "off", "echo")),
    (WORKLOADS["squeezenet"], "grpc", 4, ("on", "off", "raw")),
    (WORKLOADS["squeezenet"], "rest", 8, ("on", "before")),
    (IDENTITY, "grpc", 4, ("on", "off")),
    (IDENTITY, "rest", 4, ("on", "before")),
]


def _identity_model(folder: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    shape = [None, 150528]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "identity", "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"uri": "./model.onnx", "extra": {"options": {"intra_op_threads": 1}}},
    }))


def _start(root: Path, zero_copy: bool, gzip: bool = False) -> MLServer:
    pairs = [(WORKLOADS[w], TARGETS[t]) for w in ("digits", "squeezenet")
             for t in ("npu-grpc", "echo-grpc")]
    repository = write_repository(root / "model-repository", pairs, 1, (1, 0.0))
    _identity_model(repository / "identity")
    env = {} if zero_copy else {"MLSERVER_NPU_ZERO_COPY": "0"}
    return MLServer.start(repository, root, settings={"gzip_enabled": gzip}, env=env)


def _client(workload: Workload, protocol: str, variant: str, servers: Dict[str, MLServer]):
    if variant == "raw":
        return RawClient(workload, {"threads": 1}), os.getpid()
    server = servers["on" if variant == "echo" else variant]
    model = f"{workload.name}-echo" if variant == "echo" else workload.name
    if protocol == "grpc":
        return GrpcClient(server.grpc_target, model, workload), server.process.pid
    return HttpClient(f"{server.url}/v2/models/{model}/infer", content=workload.v2_body(),
                      headers={"content-type": "application/json"}), server.process.pid


async def _case(workload, protocol, concurrency, variants, servers, rounds, seconds):
    clients = {v: _client(workload, protocol, v, servers) for v in variants}
    totals = {v: {"requests": 0, "seconds": 0.0, "server_cpu": 0.0, "errors": 0}
              for v in variants}
    try:
        for client, _ in clients.values():
            await client.probe()
        for _ in range(rounds):
            for variant, (client, pid) in clients.items():
                point = await measure(client, concurrency, 1.0, seconds, pid)
                total = totals[variant]
                total["requests"] += point["requests"]
                total["seconds"] += point["seconds"]
                total["server_cpu"] += (point["server_cpu_ms"] or 0) * point["requests"]
                total["errors"] += point["errors"]
    finally:
        for client, _ in clients.values():
            await client.aclose()
    rows = []
    for variant, total in totals.items():
        done = total["requests"]
        rows.append({
            "workload": workload.name, "protocol": protocol, "concurrency": concurrency,
            "variant": variant, "rps": done / total["seconds"],
            "server_cpu_ms": total["server_cpu"] / done if done else None,
            "errors": total["errors"],
        })
    for row in rows:
        row["ratio_of_first"] = row["rps"] / rows[0]["rps"] if rows[0]["rps"] else None
    return rows


def _table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| workload | protocol | conc | variant | req/s | server CPU ms/req | "
             "on / this | errors |", "|---|---|--:|---|--:|--:|--:|--:|"]
    for r in rows:
        ratio = 1 / r["ratio_of_first"] if r["ratio_of_first"] else float("nan")
        cpu = f"{r['server_cpu_ms']:.2f}" if r["server_cpu_ms"] is not None else "-"
        lines.append(f"| {r['workload']} | {r['protocol']} | {r['concurrency']} | "
                     f"{r['variant']} | {r['rps']:.1f} | {cpu} | {ratio:.2f}x | {r['errors']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.zero_copy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per window")
    parser.add_argument("--out", type=Path, help="rows as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlserver-npu-zero-copy-") as tmp:
        servers = {"on": _start(Path(tmp) / "on", True), "off": _start(Path(tmp) / "off", False),
                   "before": _start(Path(tmp) / "before", False, gzip=True)}
        try:
            rows = []
            for workload, protocol, concurrency, variants in CASES:
                rows += asyncio.run(_case(workload, protocol, concurrency, variants, servers,
                                          args.rounds, args.seconds))
                print(_table(rows[-len(variants):]).splitlines()[-len(variants):], flush=True)
        finally:
            for server in servers.values():
                server.stop()
    print(_table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
