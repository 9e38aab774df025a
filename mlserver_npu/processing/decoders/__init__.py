"""Detection decoders, one per output layout, by the `type` a model-settings `decoder` names."""
from typing import Any, Dict, Mapping, Optional, Sequence, Type, Union

from pydantic import ValidationError

from ...backends import TensorSpec
from ...errors import ConfigurationError, shorten
from .base import Candidates, Decoder, Size
from .boxes import BoxesDecoder
from .dfl import DFLDecoder
from .nms import End2EndDecoder, NMSTensorsDecoder
from .ssd import SSDDecoder
from .yolov5 import YOLOv5Decoder
from .yolov8 import YOLOv8Decoder

DECODERS: Dict[str, Type[Decoder]] = {
    "yolov8": YOLOv8Decoder,
    "yolo11": YOLOv8Decoder,
    "yolov11": YOLOv8Decoder,
    "yolov5": YOLOv5Decoder,
    "yolov7": YOLOv5Decoder,
    "dfl": DFLDecoder,
    "picodet": DFLDecoder,
    "ssd": SSDDecoder,
    "boxes": BoxesDecoder,
    "end2end": End2EndDecoder,
    "yolov10": End2EndDecoder,
    "nms_tensors": NMSTensorsDecoder,
}


def create_decoder(
    config: Union[str, Mapping[str, Any]],
    outputs: Sequence[TensorSpec],
    input_size: Optional[Size] = None,
) -> Decoder:
    """The decoder a model-settings `decoder` value names (`"yolov8"` or `{"type": ...}`),
    checked against the model's outputs; `ConfigurationError` naming the key otherwise."""
    if isinstance(config, str):
        config = {"type": config}
    if not isinstance(config, Mapping):
        raise ConfigurationError(
            f"decoder must be a name or an object with a 'type', not {type(config).__name__}"
        )
    kind = config.get("type")
    if not isinstance(kind, str):  # a list or an object would not even hash
        given = "it is missing" if kind is None else f"got {type(kind).__name__} {shorten(kind)}"
        raise ConfigurationError(
            f"decoder.type must be a decoder name ({', '.join(sorted(DECODERS))}); {given}"
        )
    if kind not in DECODERS:
        raise ConfigurationError(
            f"decoder.type {shorten(kind)} is not known; known: {', '.join(sorted(DECODERS))}"
        )
    cls = DECODERS[kind]
    try:
        settings = cls.Settings.model_validate(dict(config))
    except ValidationError as error:
        problems = "; ".join(
            f"decoder.{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        raise ConfigurationError(problems) from None
    return cls(settings, outputs, input_size)


__all__ = ["Candidates", "DECODERS", "Decoder", "Size", "create_decoder"]
