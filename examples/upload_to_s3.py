"""Put an ONNX model whose weights sit in a side file into S3, as a .tar.gz archive.

    python examples/upload_to_s3.py [s3://models/digits-temperature.tar.gz]

Re-saves model-repository/digits-temperature with its weights in `model.onnx.data` (as
torch's exporter writes large models), packs the folder, uploads it with boto3 and prints the
sha256 to pin in model-settings.json. boto3 reads the standard AWS environment: credentials,
AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL for MinIO or another S3-compatible store. The bucket
is created if it does not exist.
"""
import hashlib
import sys
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import onnx

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    uri = urlsplit(sys.argv[1] if len(sys.argv) > 1 else "s3://models/digits-temperature.tar.gz")
    bucket, key = uri.netloc, uri.path.lstrip("/")
    with tempfile.TemporaryDirectory() as workdir:
        folder = Path(workdir) / "digits-temperature"
        folder.mkdir()
        model = onnx.load(str(ROOT / "model-repository" / "digits-temperature" / "model.onnx"))
        onnx.save_model(
            model, str(folder / "model.onnx"), save_as_external_data=True,
            all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0,
        )
        archive = Path(workdir) / "model.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(folder, arcname=folder.name)
        s3 = boto3.client("s3")
        if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
            s3.create_bucket(Bucket=bucket)
        s3.upload_file(str(archive), bucket, key)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    print(f"uploaded s3://{bucket}/{key}, sha256 {digest}")


if __name__ == "__main__":
    main()
