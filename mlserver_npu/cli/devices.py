"""`mlserver-npu devices [--json]`: the backends usable here and the devices each can open."""
import argparse
import json
from typing import Any, Dict

from ..backends import BACKENDS, BackendError, get_backend


def list_devices() -> Dict[str, Dict[str, Any]]:
    """Backend name -> {"available": True, "devices": [...], "names"?: {device: full name}}
    or {"available": False, "reason": ...}."""
    report: Dict[str, Dict[str, Any]] = {}
    for name in BACKENDS:
        try:
            backend = get_backend(name)
        except BackendError as error:
            report[name] = {"available": False, "reason": str(error)}
        else:
            report[name] = {"available": True, "devices": backend.available_devices()}
            if hasattr(backend, "device_names"):  # full names, where the runtime has them
                report[name]["names"] = backend.device_names()
    return report


def _print_devices(report: Dict[str, Dict[str, Any]]) -> None:
    width = max(map(len, report))
    for name, entry in report.items():
        if not entry["available"]:
            line = f"unavailable: {entry['reason']}"
        else:
            names = entry.get("names", {})
            line = ", ".join(
                f"{d} ({names[d]})" if d in names else d for d in entry["devices"]
            ) or "available, no device found"
        print(f"{name:<{width}}  {line}")


NAME = "devices"
HELP = "list the backends usable on this machine and their devices"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    report = list_devices()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_devices(report)
    return 0
