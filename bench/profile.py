"""Where a server's time goes under load: `python -m bench.profile --model squeezenet
--target npu-grpc` samples the server with py-spy while a load process drives it, then
prints the functions that hold the most samples (own time, and time including callees).

    python -m bench.profile --model digits --target npu-rest --concurrency 16 --seconds 10

Needs `py-spy` (pip install py-spy) and the right to ptrace the server (root, or
kernel.yama.ptrace_scope = 0). The collapsed stacks are kept (--out) for flame graphs.
"""
import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from .runner import Settings, finish_load, load_timeout, servers, start_load
from .workloads import TARGETS, WORKLOADS


def summarize(collapsed: Path, top: int) -> str:
    """Own and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: Dict[str, int] = collections.Counter()
    inclusive: Dict[str, int] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame.split(" (")[0] + " (" + frame.split(" (")[-1] for frame in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)

    def block(title: str, counts: Dict[str, int]) -> List[str]:
        rows = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [title] + [f"{100 * n / total:5.1f}%  {frame}" for frame, n in rows]

    return "\n".join([f"{total} samples"] + block("own time:", own) + [""]
                     + block("including callees:", inclusive))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--model", default="digits", choices=list(WORKLOADS))
    parser.add_argument("--target", default="npu-rest", choices=list(TARGETS))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--gil", action="store_true",
                        help="sample only the thread holding the GIL (Python CPU time)")
    parser.add_argument("--out", type=Path, default=Path("profile.txt"),
                        help="collapsed stacks (flamegraph.pl / speedscope input)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    workload, target = WORKLOADS[args.model], TARGETS[args.target]
    settings = Settings(threads=args.threads, concurrency=(args.concurrency,),
                        duration=args.seconds + 2, warmup=1.0)
    with tempfile.TemporaryDirectory(prefix="mlserver-npu-profile-") as tmp:
        with servers([(workload, target)], settings, Path(tmp)) as running:
            job = running.job(workload, target, settings)
            load = start_load(job)
            time.sleep(3)  # the load process imports, probes and warms up
            pid = job.get("cpu_pid") or load.pid
            subprocess.run([py_spy, "record", "--pid", str(pid), "--duration",
                            str(int(args.seconds)), "--rate", str(args.rate), "--format", "raw",
                            "--output", str(args.out), "--nonblocking",
                            *(["--gil"] if args.gil else [])],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            points = finish_load(load, load_timeout(settings))
    print(f"{args.model} / {args.target} @ {args.concurrency}: {points}")
    print(summarize(args.out, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
