"""Overload and memory figures of the limits (issue 21), on loopback, each against a server of
its own: `python -m bench.limits [--seconds 20] [--only overload,body,images]`.

- overload: a compute-bound model (one session, one thread) driven open-loop at twice what it
  serves, by keep-alive REST clients at 1 request/s each, with health probes every 0.5 s by
  curl (1 s timeout, Kubernetes' default); with `max_queue_size` 8, the default 128, and 0
  (unbounded).
- body: one 200 MB JSON infer body, with the default MLSERVER_NPU_MAX_REQUEST_BYTES.
- images: 12 concurrent 6000x6000 PNGs (36 M pixels each) to an image model, with the default
  pixel budget and with an unbounded one: the server's RSS peak, and 2 s after.
"""
import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import httpx
import numpy as np
import psutil
from PIL import Image

from .servers import MLServer
from .workloads import REPO

sys.path.insert(0, str(REPO / "tests"))
from server import copy_model, copy_repository, write_model  # noqa: E402
from test_limits import SLOW_WIDTH, slow_model  # noqa: E402


def _p(values: List[float], q: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


async def _capacity(url: str, body: Dict[str, Any], seconds: float) -> float:
    """Requests per second the model serves with 8 requests always in flight."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while time.perf_counter() < deadline:
                if (await client.post("/v2/models/slow/infer", json=body)).status_code == 200:
                    done += 1

    await asyncio.gather(*(worker() for _ in range(8)))
    return done / seconds


def _probe(url: str, path: str) -> tuple:
    """One probe as the kubelet makes it: its own process (curl), 1 s timeout."""
    completed = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-m", "1", "-w", "%{http_code} %{time_total}",
         url + path], capture_output=True, text=True,
    )
    status, _, seconds = completed.stdout.partition(" ")
    return status == "200", float(seconds or 1.0)


async def _open_loop(url: str, body: Dict[str, Any], rate: float, clients: int,
                     seconds: float) -> Dict[str, Any]:
    """`clients` keep-alive clients sending `rate` requests/s in all, each on its own schedule
    (a request is sent at its time even if the previous one is unanswered: open loop), and
    health probes (live and ready, every 0.5 s) from a thread of their own."""
    latencies: Dict[str, List[float]] = {"ok": [], "rejected": []}
    failures = {"timeout": 0, "connection": 0, "other": 0}
    probes: List[tuple] = []
    done = threading.Event()
    interval = clients / rate

    def probe_loop() -> None:
        while not done.wait(0.5):
            probes.extend(_probe(url, p) for p in ("/v2/health/live", "/v2/health/ready"))

    async def one(client: httpx.AsyncClient) -> None:
        sent = time.perf_counter()
        try:
            status = (await client.post("/v2/models/slow/infer", json=body)).status_code
        except httpx.TimeoutException:
            failures["timeout"] += 1
            return
        except httpx.TransportError:  # a connection the server closed (keep-alive timeout)
            failures["connection"] += 1
            return
        kind = {200: "ok", 429: "rejected"}.get(status)
        if kind is None:
            failures["other"] += 1
        else:
            latencies[kind].append(time.perf_counter() - sent)

    async def client_loop(client: httpx.AsyncClient, index: int, start: float) -> None:
        next_at = start + interval * index / clients
        tasks = []
        while next_at < start + seconds:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(client)))
            next_at += interval
        await asyncio.gather(*tasks)

    # a connection per request in flight, kept alive; no wait for a pool's free connection
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    pool = [httpx.AsyncClient(base_url=url, timeout=10, limits=limits) for _ in range(clients)]
    prober = threading.Thread(target=probe_loop, daemon=True)
    prober.start()
    start = time.perf_counter()
    try:
        await asyncio.gather(*(client_loop(c, i, start) for i, c in enumerate(pool)))
    finally:
        done.set()
        prober.join()
        for client in pool:
            await client.aclose()
    ok, rejected = latencies["ok"], latencies["rejected"]
    return {
        "sent": len(ok) + len(rejected) + sum(failures.values()),
        "ok": len(ok), "ok_p50_ms": _p(ok, 50) * 1000, "ok_p99_ms": _p(ok, 99) * 1000,
        "ok_max_ms": max(ok, default=float("nan")) * 1000,
        "rejected": len(rejected), "rejected_p99_ms": _p(rejected, 99) * 1000,
        "timeouts_10s": failures["timeout"], "connection_errors": failures["connection"],
        "other_errors": failures["other"],
        "probes": len(probes), "probe_failures_1s": sum(not ok for ok, _ in probes),
        "probe_max_ms": max((s for _, s in probes), default=float("nan")) * 1000,
    }


def overload(root: Path, seconds: float) -> Dict[str, Any]:
    body = {"inputs": [{"name": "x", "shape": [1, SLOW_WIDTH], "datatype": "FP32",
                        "data": [0.1] * SLOW_WIDTH}]}
    results = {}
    variants = (("max_queue_size 8", 8), ("max_queue_size default (128)", None),
                ("unbounded (0)", 0))
    for label, bound in variants:
        folder = root / f"overload-{bound}"
        repository = copy_repository(folder / "repo", models=[])
        extra: Dict[str, Any] = {"options": {"intra_op_threads": 1}}
        if bound is not None:
            extra["max_queue_size"] = bound
        write_model(repository / "slow", "slow", extra, model=slow_model())
        server = MLServer.start(repository, folder)
        try:
            capacity = asyncio.run(_capacity(server.url, body, 5.0))
            # clients at 1 request/s each (a keep-alive connection idle less than uvicorn's 5 s)
            clients = max(1, round(2 * capacity))
            figures = asyncio.run(_open_loop(server.url, body, 2 * capacity, clients, seconds))
            results[label] = {"capacity_rps": round(capacity, 1), **figures}
        finally:
            server.stop()
        print(label, json.dumps(results[label]), flush=True)
    return results


class _Peak:
    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.before = self.peak = self.process.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def end(self) -> Dict[str, float]:
        self.stop.set()
        self.thread.join()
        return {"rss_before_mb": self.before / 2**20, "peak_growth_mb": (self.peak - self.before)
                / 2**20}


def body(root: Path) -> Dict[str, Any]:
    repository = copy_repository(root / "body" / "repo", models=["digits"])
    server = MLServer.start(repository, root / "body")
    try:
        size = 200 * 2**20
        head = (f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: "
                f"application/json\r\nContent-Length: {size}\r\n\r\n").encode()
        peak = _Peak(server.process.pid)
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=60) as sock:
            sock.sendall(head)
            sent = 0
            try:
                while sent < size:
                    sock.sendall(b" " * 2**20)
                    sent += 2**20
            except OSError:
                pass
            reply = sock.recv(4096)
        seconds = time.perf_counter() - started
        figures = {"status": reply.split(b" ")[1].decode(), "seconds": round(seconds, 3),
                   "body_bytes_sent_before_refusal": sent, **peak.end()}
    finally:
        server.stop()
    print("body", json.dumps(figures), flush=True)
    return figures


def _png(side: int, seed: int) -> bytes:
    ys, xs = np.mgrid[0:side:40, 0:side:40]
    small = ((np.sin(xs / (300 + seed)) + np.cos(ys / 500)) * 60 + 128).astype(np.uint8)
    image = Image.fromarray(np.stack([small] * 3, -1)).resize((side, side), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def images(root: Path) -> Dict[str, Any]:
    files = [_png(6000, i) for i in range(12)]
    results = {}
    for label, budget in (("budget default (100 M pixels)", None), ("unbounded", 10**12)):
        folder = root / f"images-{budget}"
        repository = copy_repository(folder / "repo", models=["digits", "digits-image"])
        if budget is not None:
            copy_model(repository / "digits-image", repository, "burst",
                       {"image_pixel_budget": budget})
        else:
            copy_model(repository / "digits-image", repository, "burst", {})
        server = MLServer.start(repository, folder)
        try:
            def send(data: bytes) -> int:
                request = {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                                       "parameters": {"content_type": "image"},
                                       "data": [base64.b64encode(data).decode()]}]}
                return httpx.post(f"{server.url}/v2/models/burst/infer", json=request,
                                  timeout=120).status_code

            send(files[0])
            peak = _Peak(server.process.pid)
            started = time.perf_counter()
            threads = [threading.Thread(target=send, args=(f,)) for f in files]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - started
            figures = peak.end()
            time.sleep(2)
            figures["after_2s_growth_mb"] = (peak.process.memory_info().rss - peak.before) / 2**20
            figures["seconds"] = round(seconds, 2)
            results[label] = {k: round(v, 1) for k, v in figures.items()}
        finally:
            server.stop()
        print(label, json.dumps(results[label]), flush=True)
    return results


def main() -> None:
    try:  # the clients' own timing must not suffer from the server's CPU use on a small machine
        os.nice(-10)
    except OSError:
        print("(could not raise this process's priority: client timings include CPU waits)")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="overload duration each")
    parser.add_argument("--only", default="overload,body,images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        report = {}
        for part in args.only.split(","):
            report[part] = {"overload": lambda: overload(root, args.seconds),
                            "body": lambda: body(root), "images": lambda: images(root)}[part]()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
