"""CTC postprocessing for text recognizers: per-timestep class probabilities [N, T, C] -> one
string and one score per row, by greedy decoding (argmax, collapse repeats, drop the blank).

The character dictionary follows PaddleOCR's CTCLabelDecode: class 0 is the blank, classes
1..len(dictionary) are the dictionary's lines, and the class after them is a space
(`use_space_char`). PaddlePaddle's ONNX exports carry the dictionary in the model's metadata
under `character`, one character per line.
"""
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import numpy as np
from mlserver.errors import InferenceError
from mlserver.types import MetadataTensor, ResponseOutput
from pydantic import BaseModel, ConfigDict, Field

from ..backends import TensorSpec
from ..errors import ConfigurationError
from ..tensors import encode_output
from .postprocess import BuildContext, Planned, Postprocess, RequestContext, chosen_output


class CTCSettings(BaseModel):
    """`parameters.extra.postprocess` with `"type": "ctc"`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["ctc"]
    output: Optional[str] = Field(
        None, description="the [N, T, C] probabilities output; default: the model's only output"
    )
    dictionary: Optional[str] = Field(
        None,
        description="characters file, one per line (relative path); default: the model's "
        "metadata key `character`",
    )
    metadata_key: str = Field("character", description="model metadata key of the dictionary")
    blank: Literal["first", "last"] = Field(
        "first", description="where the blank class is: PaddleOCR's is first (index 0)"
    )
    space: bool = Field(
        True, description="a space class follows the dictionary (PaddleOCR `use_space_char`)"
    )
    text_output: str = Field("text", description="BYTES [N]: the decoded text of each row")
    score_output: str = Field(
        "text_scores", description="FP32 [N]: mean probability of the kept characters"
    )


def read_dictionary(path: Path) -> List[str]:
    """One character per line; only the line break is stripped (a line may be a space)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigurationError(f"dictionary file '{path}' cannot be read: {error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigurationError(f"dictionary file '{path}' is not UTF-8: {error}") from None
    return [line.rstrip("\r\n") for line in text.splitlines(keepends=True)]


class CTCDecoder:
    """The class index -> character table of a CTC model, and the greedy decoding."""

    def __init__(self, characters: List[str], blank: int):
        self.blank = blank
        self._table = np.array([c.encode("utf-8") for c in characters], dtype=object)

    @classmethod
    def build(
        cls,
        config: CTCSettings,
        classes: Optional[int],
        metadata: Mapping[str, str],
        resolve: Callable[[str], Path],
    ) -> "CTCDecoder":
        """Check the dictionary against the number of classes the model outputs (when it is
        static); a mismatch is a ConfigurationError that says both counts."""
        if config.dictionary is not None:
            where = f"dictionary file '{resolve(config.dictionary)}'"
            lines = read_dictionary(resolve(config.dictionary))
        elif config.metadata_key in metadata:
            where = f"model metadata '{config.metadata_key}'"
            lines = metadata[config.metadata_key].splitlines()
        else:
            raise ConfigurationError(
                f"postprocess.dictionary is not set and the model's metadata has no "
                f"'{config.metadata_key}' key: give a characters file"
            )
        characters = lines + ([" "] if config.space else [])
        characters = [""] + characters if config.blank == "first" else characters + [""]
        if classes is not None and classes != len(characters):
            raise ConfigurationError(
                f"{where} gives {len(characters)} classes ({len(lines)} characters"
                f"{', a space' if config.space else ''} and the blank), but the model "
                f"outputs {classes}"
            )
        blank = 0 if config.blank == "first" else len(characters) - 1
        return cls(characters, blank)

    def decode(self, probabilities: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """[N, T, C] -> texts (object array of UTF-8 bytes) [N] and scores (float32) [N]."""
        probabilities = np.asarray(probabilities)
        if probabilities.ndim != 3:
            raise ValueError(
                f"CTC decoding takes [N, T, C] probabilities, got shape {list(probabilities.shape)}"
            )
        best = probabilities.argmax(axis=2)
        confidence = probabilities.max(axis=2)
        keep = best != self.blank
        keep[:, 1:] &= best[:, 1:] != best[:, :-1]
        texts = np.empty(len(best), dtype=object)
        scores = np.zeros(len(best), np.float32)
        for row in range(len(best)):
            indices = best[row][keep[row]]
            if indices.size and indices.max() >= len(self._table):
                raise ValueError(
                    f"class {int(indices.max())} is past the dictionary's {len(self._table)}"
                )
            texts[row] = b"".join(self._table[indices])
            if indices.size:
                scores[row] = np.mean(confidence[row][keep[row]], dtype=np.float64)
        return texts, scores


class CTC(Postprocess):
    """`"type": "ctc"`: the text of every row of a recognizer's [N, T, C] probabilities."""

    Settings = CTCSettings

    def __init__(self, settings: CTCSettings, source: str, decoder: CTCDecoder):
        self.settings = settings
        self.decoder = decoder
        self.sources = [source]
        self.replaces = [source]

    @classmethod
    def build(
        cls, settings: CTCSettings, outputs: Sequence[TensorSpec], context: BuildContext
    ) -> "CTC":
        spec = chosen_output(settings.output, outputs, "the CTC probabilities")
        if len(spec.shape) != 3 or np.dtype(spec.dtype).kind != "f":
            raise ConfigurationError(
                f"ctc: output '{spec.name}' is {np.dtype(spec.dtype).name} {spec.v2_shape}, "
                "expected floating-point [N, T, C] (rows, timesteps, classes)"
            )
        decoder = CTCDecoder.build(settings, spec.shape[2], context.metadata, context.resolve)
        return cls(settings, spec.name, decoder)

    def metadata(self) -> List[MetadataTensor]:
        return [
            MetadataTensor(name=self.settings.text_output, datatype="BYTES", shape=[-1]),
            MetadataTensor(name=self.settings.score_output, datatype="FP32", shape=[-1]),
        ]

    def arrays(
        self, results: Mapping[str, np.ndarray], request: RequestContext, options: Any = None
    ) -> Dict[str, np.ndarray]:
        try:
            texts, scores = self.decoder.decode(results[self.sources[0]])
        except ValueError as error:
            raise InferenceError(f"output '{self.sources[0]}': {error}") from None
        return {self.settings.text_output: texts, self.settings.score_output: scores}

    def encode(
        self, items: Sequence[Planned], results: Mapping[str, np.ndarray],
        request: RequestContext, options: Any,
    ) -> Dict[str, ResponseOutput]:
        arrays = self.arrays(results, request, options)
        return {
            item.name: encode_output(item.name, arrays[item.name], request.as_arrays)
            for item in items
        }
