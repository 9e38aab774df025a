"""Results: the machine, the table, the goals (ratios within one run) and the plot."""
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional

from .workloads import GOALS, TARGETS, WORKLOADS

COLUMNS = [
    ("workload", "workload", "{}"),
    ("target", "target", "{}"),
    ("protocol", "protocol", "{}"),
    ("conc", "concurrency", "{}"),
    ("req/s", "rps", "{:.1f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("server CPU ms/req", "server_cpu_ms", "{:.2f}"),
    ("client CPU ms/req", "client_cpu_ms", "{:.2f}"),
    ("errors", "errors", "{}"),
]


def machine() -> Dict[str, Any]:
    """What the numbers depend on: cores, CPU model, load at the start, versions."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu_model = platform.processor()
    versions = {}
    for package in ["mlserver", "mlserver-npu", "onnxruntime", "fastapi", "uvicorn", "httpx",
                    "grpcio", "numpy", "pillow"]:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def table(rows: List[Dict[str, Any]]) -> str:
    """A Markdown table: readable in a terminal, pastable into bench/README.md."""
    lines = ["| " + " | ".join(title for title, _, _ in COLUMNS) + " |",
             "|" + "|".join("---" if i < 3 else "--:" for i in range(len(COLUMNS))) + "|"]
    for row in rows:
        if "skipped" in row:
            cells = [row["workload"], row["target"], row["protocol"], "-"]
            cells += [f"skipped: {row['skipped']}"] + ["-"] * (len(COLUMNS) - 5)
        else:
            cells = [_cell(row.get(key), fmt) for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rps(rows: List[Dict[str, Any]], workload: str, target: str, concurrency: int) -> Optional[float]:
    for row in rows:
        if (row["workload"], row["target"], row.get("concurrency")) == (workload, target, concurrency):
            return row["rps"] if row["requests"] else None
    return None


def goals(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each goal's ratio from this run's rows; `met` is None when not measured or report-only."""
    results = []
    for goal in GOALS:
        top = _rps(rows, goal.workload, goal.numerator, goal.concurrency)
        if goal.denominator == "capacity":
            bottom = WORKLOADS[goal.workload].device.capacity if top else None
        else:
            bottom = _rps(rows, goal.workload, goal.denominator, goal.concurrency)
        ratio = top / bottom if top and bottom else None
        met = None if ratio is None or goal.threshold is None else ratio >= goal.threshold
        results.append({"goal": goal.label, "ratio": ratio, "threshold": goal.threshold,
                        "met": met})
    return results


def capacity_table(rows: List[Dict[str, Any]]) -> str:
    """For simulated NPUs: the fraction of the device's capacity (rows/s) that reached
    clients, per target and concurrency (every client sends one row per request)."""
    measured = [r for r in rows if r.get("requests") and WORKLOADS[r["workload"]].device]
    concurrency = sorted({r["concurrency"] for r in measured})
    if not measured:
        return ""
    lines = ["| workload | capacity rows/s | target | "
             + " | ".join(f"c={c}" for c in concurrency) + " |",
             "|---|--:|---|" + "--:|" * len(concurrency)]
    pairs = list(dict.fromkeys((r["workload"], r["target"]) for r in measured))
    for workload, target in pairs:
        capacity = WORKLOADS[workload].device.capacity
        cells = [_rps(measured, workload, target, c) for c in concurrency]
        lines.append(f"| {workload} | {capacity:,.0f} | {target} | "
                     + " | ".join("-" if v is None else f"{v / capacity:.2f}" for v in cells)
                     + " |")
    return "\n".join(lines)


def goals_text(results: List[Dict[str, Any]]) -> str:
    lines = []
    for result in results:
        if result["ratio"] is None:
            verdict, ratio = "not measured in this run", "-"
        else:
            ratio = f"{result['ratio']:.2f}x"
            if result["threshold"] is None:
                verdict = "reported"
            else:
                verdict = ("MET" if result["met"] else "NOT MET") + f" (target >= {result['threshold']}x)"
        lines.append(f"- {result['goal']}: {ratio}  {verdict}")
    return "\n".join(lines)


def plot(rows: List[Dict[str, Any]], path: Path, title: str) -> None:
    """Throughput against concurrency, one panel per workload, one line per target (log
    scales: the targets span four orders of magnitude)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    measured = [r for r in rows if r.get("requests")]
    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in measured)]
    if not workloads:
        return
    colors = dict(zip(TARGETS, plt.get_cmap("tab20").colors))
    figure, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4.4),
                                squeeze=False)
    for axis, workload in zip(axes[0], workloads):
        for target in TARGETS:
            points = [r for r in measured if (r["workload"], r["target"]) == (workload, target)]
            if points:
                axis.plot([p["concurrency"] for p in points], [p["rps"] for p in points],
                          marker="o", color=colors[target], label=target)
        axis.set_xscale("log")
        axis.set_yscale("log")
        concurrency = sorted({r["concurrency"] for r in measured if r["workload"] == workload})
        axis.set_xticks(concurrency, [str(c) for c in concurrency])
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.set_xlabel("concurrent requests")
        axis.set_ylabel("requests/s")
        axis.set_title(WORKLOADS[workload].description, fontsize=8)
        axis.grid(True, which="both", alpha=0.3)
    handles = {label: handle for axis in axes[0]
               for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 6),
                  fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def command_line() -> str:
    return " ".join(["python -m bench", *sys.argv[1:]])
