"""A pipeline step run on regions of the request's images (`steps[].regions`): the fan-out cuts
every region of every image (processing/regions.py) into one batch for the step's model, which
runs it as any batch (static batch split and padded, sessions, the plugin's batcher); the
fan-in gives the step's outputs back per image, [images, K, ...], K the most regions of an
image (rows past an image's count are zeros or empty strings)."""
import asyncio
from typing import Collection, Dict, List, Mapping, Optional, Sequence

import numpy as np
from mlserver.errors import InferenceError
from mlserver.types import MetadataTensor, Parameters
from PIL import Image

from .backends import TensorSpec
from .codecs.image import original_size
from .errors import ConfigurationError
from .metrics import stage
from .processing.postprocess import Postprocess, RequestContext
from .processing.preprocess import Preprocessor
from .processing.regions import (
    INTERPOLATION, RegionsSettings, as_quads, cut, feed, groups, region_counts, regroup,
)
from .stages import ModelStages, stack_rows


def dtype_of(datatype: str) -> np.dtype:
    """V2 datatype -> numpy dtype (BYTES: object, holding bytes)."""
    if datatype == "BYTES":
        return np.dtype(object)
    if datatype == "BOOL":
        return np.dtype(bool)
    return np.dtype(datatype.lower().replace("fp", "float"))


def spec_of(tensor: MetadataTensor) -> TensorSpec:
    return TensorSpec(
        tensor.name, dtype_of(tensor.datatype), [None if d < 0 else d for d in tensor.shape]
    )


def post_specs(
    posts: Sequence[Postprocess], model_outputs: Sequence[TensorSpec]
) -> List[TensorSpec]:
    """The outputs a step's postprocesses add to its model's (those of other names)."""
    taken = {spec.name for spec in model_outputs}
    return [
        spec_of(tensor) for post in posts for tensor in post.metadata() if tensor.name not in taken
    ]


def post_arrays(
    posts: Sequence[Postprocess], results: Mapping[str, np.ndarray], request: RequestContext,
    wanted: Collection[str], parameters: Optional[Parameters] = None,
) -> Dict[str, np.ndarray]:
    """The outputs `wanted` that the postprocesses make, as arrays (`parameters`: the
    request's, for per-request overrides). Types with an `arrays` method give them directly;
    others are encoded (numeric data as arrays) and read back."""
    made: Dict[str, np.ndarray] = {}
    for post in posts:
        # a name the model's outputs have stays theirs (classification replaces its scores
        # for clients, not for the steps that take them)
        names = [name for name in post.names if name in wanted and name not in results]
        if not names:
            continue
        options = post.options(parameters)
        arrays = getattr(post, "arrays", None)
        if arrays is not None:
            made.update({k: v for k, v in arrays(results, request, options).items() if k in names})
            continue
        items = [post.plan(name, None) for name in names]
        context = RequestContext(request.geometry, request.images, request.tiles, as_arrays=True)
        for name, output in post.encode(items, results, context, options).items():
            data = getattr(output.data, "root", output.data)
            dtype = dtype_of(output.datatype)
            made[name] = np.asarray(data if dtype != object else list(data), dtype).reshape(
                output.shape
            )
    return made


class FanOut:
    """The regions of one pipeline step: what it cuts, feeds and gives back."""

    def __init__(
        self,
        settings: RegionsSettings,
        stages: ModelStages,
        boxes: TensorSpec,
    ):
        """Check the settings against the step's model; a ConfigurationError names the key."""
        self.settings = settings
        self.stages = stages
        inputs = stages.pool.inputs
        names = [spec.name for spec in inputs]
        if settings.input is not None and settings.input not in names:
            raise ConfigurationError(
                f"regions.input '{settings.input}' is not an input of its model; the model's "
                f"inputs are: {', '.join(names)}"
            )
        if len(inputs) != 1:
            raise ConfigurationError(
                "regions feed models of one input (the regions); this one has "
                + ", ".join(names)
            )
        self.input = settings.input or names[0]
        spec = inputs[0]
        if tuple(boxes.shape[2:]) not in ((4, 2), (4,), (4, None), (None, 2), (None,)):
            raise ConfigurationError(
                f"regions.boxes '{settings.boxes}' is {boxes.v2_shape}, expected [images, K, "
                "4, 2] quadrilaterals or [images, K, 4] boxes"
            )
        self.boxes_spec = boxes
        decoder = stages.input_decoder([self.input])
        self.max_image_pixels = decoder.max_pixels  # for images no model step decodes
        preprocessor = decoder.preprocessor(self.input)
        if not isinstance(preprocessor, Preprocessor):
            raise ConfigurationError(f"input '{self.input}' cannot take regions: {preprocessor}")
        self.preprocessor = preprocessor
        if preprocessor.reshape is None:
            axes = (2, 3) if preprocessor.layout == "NCHW" else (1, 2)
            self.height = settings.height or spec.shape[axes[0]]
            self.width = settings.width or spec.shape[axes[1]]
        else:  # e.g. the 8x8 digits as [N, 64]: the regions' size is the settings'
            self.height, self.width = settings.height, settings.width
            channels = 1 if preprocessor.mode == "L" else 3
            if self.height is None or self.width is None or (
                self.height * self.width * channels != int(np.prod(preprocessor.reshape))
            ):
                raise ConfigurationError(
                    f"input '{self.input}' is {spec.v2_shape}: set regions.height and "
                    f"regions.width so that height x width x {channels} channel(s) = "
                    f"{int(np.prod(preprocessor.reshape))}"
                )
        if self.height is None:
            raise ConfigurationError(
                f"input '{self.input}' has a dynamic height: set regions.height"
            )
        self.posts: List[Postprocess] = list(stages.outputs.postprocesses)
        # what the step reads itself, whether or not later steps or the pipeline take it
        self.reads = {part.output for part in (settings.keep, settings.join) if part is not None}
        model_outputs = list(stages.pool.outputs)
        self.row_specs = model_outputs + post_specs(self.posts, model_outputs)
        kept, count = settings.names
        rows = {spec.name for spec in self.row_specs}
        for name in (kept, count) + ((settings.join.name,) if settings.join else ()):
            if name in rows:
                raise ConfigurationError(
                    f"the regions' output '{name}' is already an output of the step's model: "
                    "rename it (regions.boxes_output, count_output, join.as)"
                )
        for key, name, kind in (
            ("keep.output", settings.keep.output if settings.keep else None, "fiu"),
            ("join.output", settings.join.output if settings.join else None, "O"),
        ):
            if name is None:
                continue
            found = next((s for s in self.row_specs if s.name == name), None)
            if found is None or np.dtype(found.dtype).kind not in kind or len(found.shape) != 1:
                raise ConfigurationError(
                    f"regions.{key} '{name}' is not a {'numeric' if kind != 'O' else 'BYTES'} "
                    f"[regions] output of the step; its outputs are: "
                    + ", ".join(s.name for s in self.row_specs)
                )

    def specs(self) -> List[TensorSpec]:
        """The step's outputs: every output per image, the regions kept and their count."""
        kept, count = self.settings.names
        specs = [
            TensorSpec(s.name, s.dtype, [None, None, *s.shape[1:]]) for s in self.row_specs
        ]
        boxes = [None, None, *self.boxes_spec.shape[2:]]
        specs.append(TensorSpec(kept, np.dtype(np.float32), boxes))
        specs.append(TensorSpec(count, np.dtype(np.int32), [None]))
        if self.settings.join is not None:
            specs.append(TensorSpec(self.settings.join.name, np.dtype(object), [None]))
        return specs

    def _pixels(self, image: Image.Image) -> np.ndarray:
        image = image.convert(self.preprocessor.mode)
        array = np.asarray(image)
        if array.ndim == 2:
            return array[:, :, np.newaxis]
        return array[:, :, ::-1] if self.preprocessor.bgr else array

    def _feed(self, regions: List[np.ndarray]) -> np.ndarray:
        """Regions as the model input's batch: resized, normalized, padded, laid out."""
        settings = self.settings
        batch = feed(regions, self.height, self.width, settings.min_width, self._normalize,
                     settings.width_multiple, INTERPOLATION[settings.resample])
        if self.preprocessor.layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        batch = batch.astype(self.preprocessor.dtype, copy=False)
        if self.preprocessor.reshape is not None:
            batch = batch.reshape([len(batch), *self.preprocessor.reshape])
        return np.ascontiguousarray(batch)

    def _normalize(self, batch: np.ndarray) -> np.ndarray:
        for op in self.preprocessor.arrays:
            batch = op.apply(batch)
        return batch

    def _turned(self, scores: Optional[np.ndarray], counts: Sequence[int]) -> Optional[np.ndarray]:
        rotate = self.settings.rotate
        if rotate is None or scores is None:
            return None
        flags = []
        for index, count in enumerate(counts):
            rows = np.asarray(scores[index][:count], np.float32)
            rows = rows.reshape(count, -1) if count else np.zeros((0, 1), np.float32)
            if rows.size and rows.shape[1] <= rotate.class_index:
                raise InferenceError(
                    f"regions.rotate.class {rotate.class_index} is past the "
                    f"{rows.shape[1]} classes of '{rotate.scores}'"
                )
            best = rows.argmax(axis=1) if rows.size else np.zeros(0, int)
            flags.extend(
                (best == rotate.class_index) & (rows.max(axis=1, initial=0) > rotate.threshold)
            )
        return np.array(flags, bool)

    def _counts(self, boxes: np.ndarray, count: Optional[np.ndarray], images: int) -> List[int]:
        if boxes.ndim < 3 or len(boxes) != images:
            raise InferenceError(
                f"regions.boxes '{self.settings.boxes}' has shape {list(boxes.shape)}, for "
                f"{images} image(s)"
            )
        counts = region_counts(boxes, count)
        limit = self.settings.max_regions
        for index, found in enumerate(counts):
            if found > limit and not self.settings.truncate:
                raise InferenceError(
                    f"image {index} has {found} regions, more than regions.max_regions "
                    f"({limit}) allows"
                )
        return [min(found, limit) for found in counts]

    async def run(
        self, images: Sequence[Image.Image], arrays: Mapping[str, np.ndarray],
        wanted: Collection[str], parameters: Optional[Parameters] = None,
    ) -> Dict[str, np.ndarray]:
        """The step's outputs for the request's `images` (the decoded originals) and the
        step outputs its regions take (`regions.boxes`, ...)."""
        settings = self.settings
        boxes = np.asarray(arrays["regions.boxes"], np.float32)
        counts = self._counts(boxes, arrays.get("regions.count"), len(images))
        quads = []
        with stage("preprocess"):
            for image, found, rows in zip(images, counts, boxes):
                scale = np.float32(image.size) / np.float32(original_size(image))
                quads.append(as_quads(rows[:found]) * scale)
            turn = self._turned(arrays.get("regions.rotate"), counts)
            regions = cut(
                [self._pixels(image) for image, n in zip(images, counts) if n],
                [q for q in quads if len(q)], settings.upright_ratio, turn,
            )
        if regions:
            batches = groups(regions, [n for n in counts if n], settings.group_size)
            with stage("preprocess"):
                feeds = [self._feed([regions[i] for i in batch]) for batch in batches]
            runs = await asyncio.gather(*(self.stages.run({self.input: f}) for f in feeds))
            with stage("postprocess"):
                runs = [
                    {**run, **post_arrays(self.posts, run, RequestContext(),
                                          {*wanted, *self.reads}, parameters)}
                    for run in runs
                ]
            order = np.argsort(np.concatenate([np.array(b, int) for b in batches]), kind="stable")
            rows = {name: stack_rows([run[name] for run in runs])[order] for name in runs[0]}
        else:  # no region in any image: no device run
            rows = {
                spec.name: np.zeros([0, *[d or 0 for d in spec.shape[1:]]], spec.dtype)
                for spec in self.row_specs
            }
        return self._fan_in(rows, boxes, counts)

    def _fan_in(
        self, rows: Dict[str, np.ndarray], boxes: np.ndarray, counts: List[int]
    ) -> Dict[str, np.ndarray]:
        settings = self.settings
        kept_boxes = np.concatenate(
            [b[:n] for b, n in zip(boxes, counts)] or [np.zeros((0, *boxes.shape[2:]), np.float32)]
        )
        if settings.keep is not None:
            keep = np.asarray(rows[settings.keep.output]) >= settings.keep.threshold
            starts = np.cumsum([0] + counts)
            counts = [int(keep[a:b].sum()) for a, b in zip(starts[:-1], starts[1:])]
            rows = {name: array[keep] for name, array in rows.items()}
            kept_boxes = kept_boxes[keep]
        out = {name: regroup(array, counts) for name, array in rows.items()}
        kept, count = settings.names
        out[kept] = regroup(kept_boxes.astype(np.float32), counts)
        out[count] = np.array(counts, np.int32)
        if settings.join is not None:
            texts = rows[settings.join.output]
            joined = np.empty(len(counts), dtype=object)
            start = 0
            for index, found in enumerate(counts):
                parts = [t.decode() if isinstance(t, bytes) else str(t)
                         for t in texts[start : start + found]]
                joined[index] = settings.join.separator.join(parts).encode()
                start += found
            out[settings.join.name] = joined
        return out
