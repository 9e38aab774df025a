"""Load time with and without the compiled-model cache: `python -m bench.compile_cache`.

Opens one session as a model load does (`backend.open`: read, reshape, compile or import),
`--repeat` times into a fresh cache (cold) and `--repeat` times from the filled cache (warm),
and prints the median of each and their ratio. Needs the openvino extra; the QNN row needs
onnxruntime-qnn (skipped without it).
"""
import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # (backend, device, model file)
    ("openvino", "CPU", ROOT / "model-repository" / "squeezenet" / "model.onnx"),
    ("openvino", "AUTO", ROOT / "model-repository" / "squeezenet" / "model.onnx"),
    ("onnxruntime", "qnn", ROOT / "model-repository" / "digits-temperature" / "model.onnx"),
]


async def _open_seconds(backend_name: str, device: str, model: Path) -> float:
    from mlserver_npu.backends import get_backend

    backend = get_backend(backend_name)
    start = time.perf_counter()
    session = await backend.open(model, device, backend.Options.model_validate({}))
    seconds = time.perf_counter() - start
    await session.close()
    return seconds


def _entry_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in (cache / "compiled").rglob("*") if p.is_file())


def measure(backend: str, device: str, model: Path, repeat: int) -> Tuple[float, float, int]:
    """Median cold and warm load seconds, and the size of the cache entry."""
    cold: List[float] = []
    with tempfile.TemporaryDirectory() as warm_cache:
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as fresh:
                os.environ["MLSERVER_NPU_CACHE_DIR"] = fresh
                cold.append(asyncio.run(_open_seconds(backend, device, model)))
        os.environ["MLSERVER_NPU_CACHE_DIR"] = warm_cache
        asyncio.run(_open_seconds(backend, device, model))  # fills it
        warm = [asyncio.run(_open_seconds(backend, device, model)) for _ in range(repeat)]
        size = _entry_bytes(Path(warm_cache))
    return statistics.median(cold), statistics.median(warm), size


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print("| backend | device | model | cold load | from the cache | speed-up | entry size |")
    print("|---|---|---|---|---|---|---|")
    for backend, device, model in CASES:
        try:
            cold, warm, size = measure(backend, device, model, args.repeat)
        except Exception as error:  # e.g. onnxruntime-qnn not installed
            print(f"| {backend} | {device} | {model.parent.name} | skipped: {error} ||||")
            continue
        print(f"| {backend} | {device} | {model.parent.name} | {cold * 1000:.0f} ms "
              f"| {warm * 1000:.0f} ms | {cold / warm:.1f}x | {size / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
