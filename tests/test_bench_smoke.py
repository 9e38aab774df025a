"""The benchmark command still runs: a few seconds on the tiny model (`--quick`), every target
measured, each point with requests served and no errors. Speed is not checked here."""
import json
import subprocess
import sys
from pathlib import Path

from server import REPO

TARGETS = ["raw", "npu-rest", "npu-grpc", "npu-batch-rest", "npu-batch-grpc", "echo-rest",
           "echo-grpc", "fastapi"]


def test_bench_quick_measures_every_target(tmp_path: Path):
    out = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out),
         "--plot", str(tmp_path / "throughput.png")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["target"], r.get("concurrency")) for r in rows] == [
        (target, concurrency) for target in TARGETS for concurrency in (1, 4)
    ], rows
    for row in rows:
        assert row["workload"] == "digits"
        assert row["requests"] > 0 and row["rps"] > 0 and row["errors"] == 0, row
        assert row["p50_ms"] <= row["p99_ms"]
        assert row["server_cpu_ms"] > 0, row
    # The printed table has the same rows, and the plot was drawn.
    table = [line for line in completed.stdout.splitlines() if line.startswith("| digits |")]
    assert [line.split("|")[2].strip() for line in table] == [r["target"] for r in rows]
    assert (tmp_path / "throughput.png").stat().st_size > 0
