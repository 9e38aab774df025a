"""Benchmarks of mlserver-npu against raw onnxruntime, MLServer's echo floor and a plain
FastAPI app: `python -m bench --help`. Not part of the package; see bench/README.md."""
