"""Distribution `mlserver-npu`: an MLServer runtime for ONNX and TFLite models on NPUs."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "mlserver_npu" / "__init__.py").read_text()
).group(1)

setup(
    name="mlserver-npu",
    version=VERSION,
    description="Serve ONNX and TFLite models on NPUs with MLServer (V2 REST and gRPC)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mlserver_npu", "mlserver_npu.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=[
        "mlserver>=1.7.1,<1.8",
        # uvloop 0.22 kills MLServer's worker processes at start (SeldonIO/MLServer#2286).
        "uvloop<0.22",
        # tested with 1.22.1 and 1.32.0; 1.22 reads ONNX external data outside the model's
        # folder, which the plugin refuses itself (backends/external.py)
        "onnxruntime>=1.22",
        # ONNX external-data locations checked by the plugin (backends/external.py)
        "onnx>=1.16",
        "numpy>=1.24",
        "pydantic>=2.0,<3",
        "pydantic-settings>=2.0",
        # MLServer's REST parses and renders JSON with orjson when it is installed (mlserver
        # 1.7.1 requires it; explicit here because the REST path's speed rests on it).
        "orjson>=3.8",
        "packaging>=21",  # wire.py's MLServer version guard
        # rest_tensors.py: JSON tensor data straight into numpy (Array.as_buffer)
        "pysimdjson>=6.0",
        # uvicorn parses HTTP with httptools when it is installed, else with h11 in pure
        # Python: 2.9 MB JSON requests went from 38 to 45 req/s (bench/README.md)
        "httptools>=0.6",
        # remote model URIs (mlserver_npu.sources)
        "httpx>=0.27",
        "aiofiles>=23.1",
        "boto3>=1.28.57",  # AWS_ENDPOINT_URL support
        "filelock>=3.13",
        # image codec and preprocessing (ImageOps.exif_transpose(in_place=...) is 9.4+)
        "pillow>=9.4",
        # OpenCV (the headless build: no GUI libraries; never opencv-python beside it): OCR's
        # contours, rectangles and warps (processing/text_detection.py, regions.py), detection
        # NMS (cv2.dnn.NMSBoxes), letterbox and OpenCV resampling; the unclip offset from
        # pyclipper and the polygon area from shapely, as PaddleOCR computes them
        "opencv-python-headless>=4.8",
        "pyclipper>=1.3",
        "shapely>=2.0",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "tritonclient[http,grpc]>=2.40",
            "onnx>=1.15",
            "scikit-learn>=1.6",  # multinomial newton-cholesky (examples/make_models.py)
            "threadpoolctl>=3.1",
            "skl2onnx>=1.16",
            "moto[server]>=5.0",
            # TFLite serving tests, and examples/make_npu_models.py's flatbuffer schema
            "ai-edge-litert>=1.0",
            # the openvino backend, tested for real on the CPU (tests/test_openvino.py) with
            # 2025.4 and 2026.4; 2024.6 fails AUTO:NPU,CPU where the NPU plugin cannot load
            "openvino>=2025.4",
            # QNN on the emulated HTP (tests/test_qnn.py); a plugin beside onnxruntime, which
            # it does not replace; its wheels are for Linux x86_64 and Windows
            "onnxruntime-qnn>=2.7; sys_platform == 'linux' and platform_machine == 'x86_64'",
            # tests/test_bench_smoke.py runs `python -m bench --quick`
            "psutil>=5.9",
            "matplotlib>=3.7",
            # tests/test_manifests.py: deploy/ against Kubernetes' schemas
            "kubernetes-validate>=1.30",
            "pyyaml>=6",
            # tests/test_docs.py: mkdocs build --strict (1.6 validates anchors)
            "mkdocs>=1.6",
            "mkdocs-material>=9.5",
            # tests/test_ocr.py imports rapidocr-onnxruntime from its wheel, fetched without
            # its dependencies (it declares opencv-python); these are the others it needs
            "six>=1.15",
        ],
        # the example clients (examples/infer_digits.py, classify.py) and the docs' snippets;
        # `pip install -e .` alone serves the example models (onnxruntime on the CPU)
        "examples": ["tritonclient[http,grpc]>=2.40", "scikit-learn>=1.6"],
        # the documentation site: `mkdocs serve` (mkdocs.yml, docs/)
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5"],
        # `python -m bench` (bench/README.md); fastapi, uvicorn, grpcio come with mlserver
        "bench": [
            "psutil>=5.9",
            "matplotlib>=3.7",
            "py-spy>=0.3",
            "onnx>=1.15",  # bench/models.py builds the large and resnet50 models
        ],
        "tflite": ["ai-edge-litert>=1.0"],
        "furiosa": ["furiosa-runtime>=0.10"],
        # Intel CPUs, GPUs and NPUs (backend "openvino"); never onnxruntime-openvino, which
        # replaces the onnxruntime package in place
        "openvino": ["openvino>=2025.4"],
        # Qualcomm NPUs (device "qnn"): the plugin EP needs onnxruntime >= 1.24.2
        "qnn": ["onnxruntime-qnn>=2.7", "onnxruntime>=1.24.2"],
        # onnxruntime's options.shape (fixing unnamed dynamic dims) rewrites the model with onnx
        "reshape": ["onnx>=1.15"],
    },
    entry_points={"console_scripts": ["mlserver-npu=mlserver_npu.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "License :: OSI Approved :: Apache Software License",
    ],
)
