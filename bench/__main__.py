"""python -m bench: start every server, drive each from a separate load process, sweep
concurrency, then print the table and the goals and write results.json and the plot."""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import report
from .runner import Settings, finish_load, load_timeout, servers, start_load
from .workloads import TARGETS, WORKLOADS, plan

QUICK = {"models": "digits,npu-sim", "concurrency": "1,4", "duration": 0.5, "warmup": 0.3}
DEFAULTS = {"models": ",".join(WORKLOADS), "concurrency": "1,4,16,64", "duration": 10.0,
            "warmup": 2.0}


def names(value: str, known: Dict[str, Any], what: str) -> List[str]:
    chosen = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--models", help=f"workloads, comma-separated: {', '.join(WORKLOADS)} "
                        "(default: all; --quick: digits,npu-sim)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"servers under test, comma-separated (default: all): "
                        f"{', '.join(TARGETS)}")
    parser.add_argument("--concurrency", help="requests in flight per point (default 1,4,16,64; "
                        "--quick: 1,4)")
    parser.add_argument("--duration", type=float, help="measured seconds per point (default 10; "
                        "--quick: 0.5)")
    parser.add_argument("--warmup", type=float, help="seconds before each point's window "
                        "(default 2; --quick: 0.3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads for every target (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=8,
                        help="adaptive batching of the npu-batch-* targets (default 8)")
    parser.add_argument("--max-batch-time", type=float, default=0.005,
                        help="seconds adaptive batching waits to fill a batch (default 0.005)")
    parser.add_argument("--out", type=Path, default=Path("results.json"))
    parser.add_argument("--plot", type=Path, help="PNG of throughput against concurrency")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds on the tiny model: checks the harness, not speed")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = names(args.models, WORKLOADS, "model")
    args.targets = names(args.targets, TARGETS, "target")
    args.concurrency = tuple(int(c) for c in args.concurrency.split(","))
    return args


def measure(args: argparse.Namespace, settings: Settings) -> List[Dict[str, Any]]:
    """Every (workload, target) pair, one load process each, in plan order."""
    pairs = plan(args.models, args.targets)
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mlserver-npu-bench-") as tmp:
        with servers(pairs, settings, Path(tmp)) as running:
            for workload, target in pairs:
                load = start_load(running.job(workload, target, settings))
                label = {"workload": workload.name, "target": target.name,
                         "protocol": target.protocol_for(workload)}
                for point in finish_load(load, load_timeout(settings)):
                    rows.append({**label, **point})
                    print(report.table([rows[-1]]).splitlines()[-1], file=sys.stderr,
                          flush=True)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    settings = Settings(args.threads, args.max_batch_size, args.max_batch_time,
                        args.concurrency, args.duration, args.warmup)
    info = report.machine()
    started = time.time()
    rows = measure(args, settings)
    goals = report.goals(rows)
    command = report.command_line()
    print(f"\n{command}\n{info['nproc']} CPUs ({info['cpu_model']}), load average at start "
          f"{info['loadavg_at_start'][0]:.2f}; {args.threads} intra-op thread(s); "
          f"{args.duration:g} s per point after {args.warmup:g} s warm-up\n")
    print(report.table(rows))
    capacity = report.capacity_table(rows)
    if capacity:
        print("\nSimulated NPUs: fraction of device capacity reaching clients:")
        print(capacity)
    print("\nGoals (ratios of throughput within this run):")
    print(report.goals_text(goals))
    results = {"command": command, "machine": info, "seconds": round(time.time() - started, 1),
               "settings": vars(settings), "rows": rows, "goals": goals}
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if args.plot:
        report.plot(rows, args.plot, f"{command}\n{info['nproc']} CPUs, {info['cpu_model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
