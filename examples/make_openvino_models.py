"""Regenerate the OpenVINO IR example from the committed digits-temperature model.

Run as ``python examples/make_openvino_models.py`` (needs ``pip install 'mlserver-npu[openvino]'``).
The output is deterministic and committed.

* ``examples/openvino-repository/digits-ir``: ``model-repository/digits-temperature``
  converted to OpenVINO IR (``model.xml`` + ``model.bin``) in fp32 (``compress_to_fp16=False``:
  OpenVINO's default would store the weights as fp16). The ``.xml`` suffix selects the
  openvino backend; no ``backend`` key is needed.

``squeezenet-auto`` in the same repository needs no file of its own: its ``uri`` names
``model-repository/squeezenet/model.onnx``.
"""
import os

import openvino as ov

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "model-repository", "digits-temperature", "model.onnx")
TARGET = os.path.join(ROOT, "examples", "openvino-repository", "digits-ir", "model.xml")


def main() -> None:
    model = ov.Core().read_model(SOURCE)
    ov.save_model(model, TARGET, compress_to_fp16=False)
    print(f"wrote {TARGET} and {TARGET[:-4]}.bin")


if __name__ == "__main__":
    main()
