"""Run the servers a plan needs and drive them from load processes."""
import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .servers import MLSERVERS, FastAPIServer, MLServer, repo_env, start_mlserver
from .workloads import REPO, Target, Workload


@dataclass
class Settings:
    """What every target shares: thread count, adaptive batching, and the sweep."""

    threads: int = 1
    max_batch_size: int = 8
    max_batch_time: float = 0.005
    concurrency: Tuple[int, ...] = (1, 4, 16, 64)
    duration: float = 10.0
    warmup: float = 2.0


@dataclass
class Servers:
    mlservers: Dict[str, MLServer] = field(default_factory=dict)  # by servers.MLSERVERS name
    fastapi: Optional[FastAPIServer] = None

    def job(self, workload: Workload, target: Target, settings: Settings) -> Dict[str, Any]:
        """What the load process needs: where to send, whose CPU to count, the sweep."""
        job = {"workload": workload.name, "target": target.name, "threads": settings.threads,
               "concurrency": list(settings.concurrency), "duration": settings.duration,
               "warmup": settings.warmup}
        if target.server in MLSERVERS:
            server = self.mlservers[target.server]
            job["address"] = server.grpc_target if target.protocol == "grpc" else server.url
            job["cpu_pid"] = server.process.pid
        elif target.server == "fastapi":
            job["address"], job["cpu_pid"] = self.fastapi.url, self.fastapi.process.pid
        return job


@contextlib.contextmanager
def servers(pairs: List[Tuple[Workload, Target]], settings: Settings,
            root: Path) -> Iterator[Servers]:
    """Start the servers the pairs need (at once; each idles while another is measured)."""
    needs = {target.server for _, target in pairs}
    running = Servers()
    try:
        batching = (settings.max_batch_size, settings.max_batch_time)
        for name, env in MLSERVERS.items():
            if name in needs:
                running.mlservers[name] = start_mlserver(
                    root / name, [(w, t) for w, t in pairs if t.server == name],
                    settings.threads, batching, **env,
                )
        if "fastapi" in needs:
            running.fastapi = FastAPIServer(
                root / "fastapi", {w for w, t in pairs if t.server == "fastapi"}, settings.threads
            )
        for server in filter(None, [*running.mlservers.values(), running.fastapi]):
            server.wait_ready()
        yield running
    finally:
        for server in filter(None, [running.fastapi, *reversed(running.mlservers.values())]):
            server.stop()


def start_load(job: Dict[str, Any]) -> subprocess.Popen:
    """`python -m bench.load JOB` in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.load", json.dumps(job)], cwd=REPO, env=repo_env(),
        text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def finish_load(process: subprocess.Popen, timeout: float) -> List[Dict[str, Any]]:
    """The load process's points (one per concurrency), or one `skipped` entry saying why."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return [{"skipped": f"load process timed out after {timeout:.0f}s"}]
    points = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not points:
        tail = err.strip().splitlines()[-1] if err.strip() else f"exit {process.returncode}"
        points.append({"skipped": f"load process failed: {tail}"})
    return points


def load_timeout(settings: Settings) -> float:
    return 60 + 3 * (settings.warmup + settings.duration) * len(settings.concurrency)
