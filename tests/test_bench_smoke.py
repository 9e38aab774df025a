"""The benchmark command still runs: a few seconds on the tiny model and the simulated NPU
(`--quick`), every target measured, each point with requests served and no errors. Speed is
not checked here."""
import json
import subprocess
import sys
from pathlib import Path

from server import REPO

NPU_TARGETS = ["npu-rest", "npu-rest-binary", "npu-grpc", "npu-batch-rest", "npu-batch-grpc",
               "npu-batcher-rest", "npu-batcher-grpc"]
# npu-rest-mlserver, npu-rest-before: two more servers, the REST boundary off (the second also
# on h11, as before issue 19); no simulated NPU there
TARGETS = ["raw", *NPU_TARGETS[:2], "npu-rest-mlserver", "npu-rest-before", *NPU_TARGETS[2:],
           "echo-rest", "echo-grpc", "fastapi"]
# The simulated NPU exists only behind mlserver-npu.
PLAN = [("digits", t) for t in TARGETS] + [("npu-sim", t) for t in NPU_TARGETS]


def test_bench_quick_measures_every_target(tmp_path: Path):
    out = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out),
         "--plot", str(tmp_path / "throughput.png")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["workload"], r["target"], r.get("concurrency")) for r in rows] == [
        (workload, target, concurrency) for workload, target in PLAN for concurrency in (1, 4)
    ], rows
    for row in rows:
        assert row["requests"] > 0 and row["rps"] > 0 and row["errors"] == 0, row
        assert row["p50_ms"] <= row["p99_ms"]
        assert row["server_cpu_ms"] > 0, row
    # The printed table has the same rows, and the plot was drawn.
    table = [line.split("|")[1:3] for line in completed.stdout.splitlines()
             if line.startswith(("| digits |", "| npu-sim |"))]
    assert [(w.strip(), t.strip()) for w, t in table[:len(rows)]] == [
        (r["workload"], r["target"]) for r in rows]
    # ... and the simulated NPU's share of its capacity, per target
    capacity = completed.stdout.split("fraction of device capacity reaching clients:")[1]
    assert [line.split("|")[3].strip() for line in capacity.splitlines()
            if line.startswith("| npu-sim |")] == NPU_TARGETS
    assert (tmp_path / "throughput.png").stat().st_size > 0


def test_batcher_only_drives_the_simulated_npu():
    """`python -m bench.batcher_only`: the batcher and pool in-process, both modes measured."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.batcher_only", "--concurrency", "8", "--duration", "0.3"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [line.split("|")[1:4] for line in completed.stdout.splitlines()
            if line.startswith("| npu-sim |")]
    assert [mode.strip() for _, mode, _ in rows] == ["off", "ours"], completed.stdout
    off, ours = (float(fraction) for _, _, fraction in rows)
    assert 0 < off and 0 < ours <= 1.05, completed.stdout


def test_rounds_reads_each_goal_from_alternating_rounds():
    """`python -m bench.rounds`: each tiny goal's two targets measured in every round, the
    table giving the median of the per-round ratios."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.rounds", "--models", "digits", "--rounds", "2",
         "--duration", "0.3", "--warmup", "0.1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in completed.stdout.splitlines()
            if line.startswith("| tiny @16")]
    assert [label.strip() for label, *_ in rows] == [
        "tiny @16: mlserver-npu / echo floor (REST)", "tiny @16: mlserver-npu / echo floor (gRPC)"]
    for _, median, per_round, cpu, met in rows:
        ratios = [float(r) for r in per_round.split(",")]
        assert len(ratios) == 2 and all(r > 0 for r in ratios), rows
        # the median of two rounds is their mean (both printed to 2 decimals)
        assert abs(float(median.strip().rstrip("x")) - sum(ratios) / 2) <= 0.01, rows
        assert " vs " in cpu and met.strip().startswith(("yes", "no")), rows


def test_tiny_gap_measures_the_four_models():
    """`python -m bench.tiny_gap`: digits as NPURuntime, as an NPURuntime that only runs the
    model, as one that echoes, and MLServer's echo, each answering in every round."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.tiny_gap", "--rounds", "1", "--seconds", "0.3",
         "--concurrency", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:5] for line in completed.stdout
            .splitlines() if line.startswith("| ") and not line.startswith("| model")}
    assert list(rows) == ["digits", "run-only", "echo-npu", "echo"], completed.stdout
    for cpu, rps, ratio in rows.values():
        assert float(cpu) > 0 and float(rps) > 0, completed.stdout
    assert rows["echo"][2].strip() == "1.00x"


def test_the_before_issue_19_server_runs_on_h11():
    """bench's `mlserver-before` server (the REST path before issue 19) hides httptools, so
    uvicorn's `http="auto"` takes h11 there, and only there."""
    from bench.servers import MLSERVERS
    from server import server_env

    probe = [sys.executable, "-c", "import uvicorn.protocols.http.auto as auto; "
             "print(auto.AutoHTTPProtocol.__name__)"]
    protocols = {
        name: subprocess.run(probe, env=server_env(env), capture_output=True, text=True,
                             timeout=60, check=True).stdout.strip()
        for name, env in MLSERVERS.items()
    }
    assert protocols == {"mlserver": "HttpToolsProtocol", "mlserver-plain": "HttpToolsProtocol",
                         "mlserver-before": "H11Protocol"}
