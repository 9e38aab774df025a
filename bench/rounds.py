"""python -m bench.rounds: the goals' ratios from alternating rounds, for a noisy machine.

One `python -m bench` point per target is one sample of a machine whose speed drifts by
tens of percent from minute to minute (other VMs, other work): a ratio of two points taken
a minute apart carries that drift. Here each goal's two targets are measured back to back,
round after round (the order alternating), and the goal reads the median of the per-round
ratios; the server CPU per request of each target is given too (its median), which the
drift moves far less.

    python -m bench.rounds --models digits,squeezenet,resnet50,large --rounds 5 --duration 5
"""
import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .runner import Settings, finish_load, load_timeout, servers, start_load
from .workloads import GOALS, TARGETS, WORKLOADS, Goal


def measured_goals(models: List[str]) -> List[Goal]:
    """The goals of `models` that compare two measured targets (not a simulated capacity)."""
    return [goal for goal in GOALS
            if goal.workload in models and goal.denominator in TARGETS]


def run(goals: List[Goal], rounds: int, settings: Settings, root: Path
        ) -> Dict[Goal, List[Tuple[Dict, Dict]]]:
    """Per goal, per round: the (numerator, denominator) points."""
    pairs = list(dict.fromkeys(
        (WORKLOADS[goal.workload], TARGETS[name])
        for goal in goals for name in (goal.numerator, goal.denominator)
    ))
    results: Dict[Goal, List[Tuple[Dict, Dict]]] = {goal: [] for goal in goals}
    with servers(pairs, settings, root) as running:
        for index in range(rounds):
            for goal in goals:
                order = [goal.numerator, goal.denominator]
                if index % 2:
                    order.reverse()
                points = {}
                point_settings = dataclasses.replace(settings, concurrency=(goal.concurrency,))
                for name in order:
                    job = running.job(WORKLOADS[goal.workload], TARGETS[name], point_settings)
                    points[name] = finish_load(start_load(job), load_timeout(point_settings))[0]
                results[goal].append((points[goal.numerator], points[goal.denominator]))
                print(f"round {index + 1}/{rounds}: {goal.label}: "
                      f"{_ratio(*results[goal][-1]) or 0:.2f}", flush=True)
    return results


def _ratio(numerator: Dict, denominator: Dict) -> Optional[float]:
    if not numerator.get("rps") or not denominator.get("rps"):
        return None
    return numerator["rps"] / denominator["rps"]


def _cpu(points: List[Dict]) -> str:
    values = [p["server_cpu_ms"] for p in points if p.get("server_cpu_ms")]
    return f"{statistics.median(values):.2f}" if values else "-"


def table(results: Dict[Goal, List[Tuple[Dict, Dict]]]) -> str:
    lines = ["| goal | median ratio | per round | server CPU ms/req (median) | goal met |",
             "|---|--:|---|---|---|"]
    for goal, rounds in results.items():
        ratios = [r for r in (_ratio(*pair) for pair in rounds) if r is not None]
        if not ratios:
            lines.append(f"| {goal.label} | - | - | - | no measurement |")
            continue
        median = statistics.median(ratios)
        cpu = (f"{_cpu([n for n, _ in rounds])} vs {_cpu([d for _, d in rounds])}")
        met = "-" if goal.threshold is None else (
            f"{'yes' if median >= goal.threshold else 'no'} (>= {goal.threshold:.2f})")
        lines.append(f"| {goal.label} | {median:.2f}x | "
                     f"{', '.join(f'{r:.2f}' for r in ratios)} | {cpu} | {met} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rounds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,squeezenet,resnet50,large",
                        help="the workloads whose goals to measure, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in models if name not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown model: {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    goals = measured_goals(models)
    if not goals:
        raise SystemExit(f"no goal compares two measured targets on {', '.join(models)}")
    settings = Settings(threads=args.threads, duration=args.duration, warmup=args.warmup)
    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as root:
        results = run(goals, args.rounds, settings, Path(root))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
