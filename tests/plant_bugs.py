"""Plant each bug a test is meant to catch, run that test, revert: every line must say CAUGHT.

    python tests/plant_bugs.py [words of the bug names to run]

Not a test module (pytest does not collect it): each bug costs a server start."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (bug, file, code, planted code, test file, -k expression)
MUTATIONS = [
    ("full batch waits", "mlserver_npu/batcher.py",
     "        if pending >= self.max_batch_size:\n", "        if False:\n",
     "test_mutations.py", "full_batch"),
    ("FP64 as 4 bytes", "mlserver_npu/wire.py",
     '    "FP64": np.dtype("<f8"),', '    "FP64": np.dtype("<f4"),',
     "test_mutations.py", "fp64"),
    ("rows count padding", "mlserver_npu/pool.py",
     "        model.rows(rows)\n", "        model.rows(len(next(iter(feeds.values()))))\n",
     "test_mutations.py", "batch_rows"),
    ("steps in listed order", "mlserver_npu/graph.py",
     "        self.order = self._ordered()\n",
     "        self._ordered()\n        self.order = list(config.steps)\n",
     "test_mutations.py", "dependent_step"),
    ("max of two", "mlserver_npu/graph.py",
     "        return np.maximum.reduce(arrays)\n",
     "        return np.maximum(arrays[0], arrays[1])\n",
     "test_mutations.py", "dependent_step"),
    ("mean by two", "mlserver_npu/graph.py",
     "np.sum(arrays, axis=0) / len(arrays)", "np.sum(arrays, axis=0) / 2",
     "test_mutations.py", "dependent_step"),
    ("tiles column-major", "mlserver_npu/processing/preprocess.py",
     "            for top in range(0, image.height, height)\n"
     "            for left in range(0, image.width, width)\n",
     "            for left in range(0, image.width, width)\n"
     "            for top in range(0, image.height, height)\n",
     "test_mutations.py", "2x2"),
    ("ties higher index first", "mlserver_npu/processing/classification.py",
     '    order = np.argsort(-flat.astype(np.float64), axis=1, kind="stable")[:, :top_k]\n',
     '    order = np.argsort(-flat.astype(np.float64)[:, ::-1], axis=1, kind="stable")'
     '[:, :top_k]\n    order = flat.shape[1] - 1 - order\n',
     "test_mutations.py", "tied"),
    ("deeper nesting flattened", "mlserver_npu/tensors.py",
     "    if flat and type(flat[0]) is list:\n        raise ValueError",
     "    if flat and type(flat[0]) is list:\n"
     "        return list(itertools.chain.from_iterable(flat))\n        raise ValueError",
     "test_mutations.py", "nested_deeper"),
]
LIMITS = [
    ("no REST body bound", "mlserver_npu/rest.py", "    Limits,  # limits.py", "    # Limits,",
     "test_limits.py", "413 or chunked"),
    ("no load shedding", "mlserver_npu/admission.py",
     "        if self.limit and self.held >= self.limit:", "        if False:",
     "test_limits.py", "overload or fast_429"),
    ("no pixel budget", "mlserver_npu/codecs/budget.py",
     "                if not taken and not self._changed.wait_for(",
     "                if False and not self._changed.wait_for(", "test_limits.py", "burst"),
    ("glibc threshold left dynamic", "mlserver_npu/codecs/budget.py",
     "        _map_large_blocks()\n", "        pass\n", "test_limits.py", "burst"),
    ("paths not confined", "mlserver_npu/sources/local.py",
     "    if any(target.is_relative_to(root) for root in roots):", "    if True:",
     "test_limits.py", "out_of_the_model_folder or allowed"),
    ("pipeline step unconfined", "mlserver_npu/pipeline.py",
     "        confined(step.model,", "        (lambda *a, **k: None)(step.model,",
     "test_limits.py", "pipeline_step"),
    ("external data unchecked", "mlserver_npu/backends/onnxruntime.py",
     "    real_path = check_external_data(model_path)", "    real_path = model_path.resolve()",
     "test_limits.py", "external"),
    ("symlink path to the runtime", "mlserver_npu/backends/onnxruntime.py",
     "    source: Union[str, bytes] = str(real_path)",
     "    source: Union[str, bytes] = str(model_path)",
     "test_limits.py", "symlinked"),
]


def main() -> None:
    only = sys.argv[1:]
    for name, path, old, new, tests, expression in MUTATIONS + LIMITS:
        if only and not any(word in name for word in only):
            continue
        file = REPO / path
        original = file.read_text()
        assert original.count(old) == 1, f"{name}: the code to change is not there once"
        file.write_text(original.replace(old, new))
        try:
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", f"tests/{tests}", "-k", expression],
                capture_output=True, text=True, timeout=900, cwd=REPO,
            )
            last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
            print(f"{name:30s} {'CAUGHT' if result.returncode else 'MISSED'}: {last}", flush=True)
        finally:
            file.write_text(original)


if __name__ == "__main__":
    main()
