"""Split heads with distribution-focal-loss box regression, as NPU compilers cut detectors
before their decode (PP-PicoDet, GFL, NanoDet; YOLOv8/YOLO11 raw heads): per stride, a class
score tensor and a box tensor of 4 x (reg_max + 1) bins, each side's distance from the cell
centre being the expectation of its softmax, times the stride.

Tensors are [B, H*W, K] (PaddleDetection's exports) or [B, K, H, W] (`layout: nchw`, the raw
heads of Ultralytics' graphs; `nhwc` for TFLite). Without names, the two channel counts tell
the score tensors from the box tensors, and the cell counts pair them by stride.
"""
from typing import Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ...backends import TensorSpec
from ...errors import ConfigurationError
from .base import (
    Candidates,
    Decoder,
    Size,
    as_float,
    empty_candidates,
    is_float,
    logit,
    named_output,
    outputs_text,
    real,
    select,
    shape_error,
    shape_text,
    sigmoid,
    softmax,
)

# box channels of the usual heads: PicoDet/GFL reg_max 7, Ultralytics' 16 bins (reg_max 15)
USUAL_BOX_CHANNELS = (32, 64)


class DFLSettings(BaseModel):
    """`"decoder": {"type": "dfl", ...}` (also `picodet`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["dfl", "picodet"]
    scores: Optional[List[str]] = Field(
        None, description="the class score outputs, one per stride; default: found by shape"
    )
    boxes: Optional[List[str]] = Field(
        None, description="the box distribution outputs, one per stride; default: by shape"
    )
    strides: Optional[List[int]] = Field(
        None, description="per score output; default: from the input size and the cell counts"
    )
    reg_max: Optional[int] = Field(
        None,
        ge=1,
        description="the largest distance bin (PaddleDetection's meaning: reg_max + 1 bins; "
        "Ultralytics' reg_max=16 is 15 here); default: box channels / 4 - 1",
    )
    layout: Literal["auto", "cells", "nchw", "nhwc"] = Field(
        "auto", description="cells [B, H*W, K]; nchw [B, K, H, W]; auto: cells for 3 dimensions, "
        "nchw for 4",
    )
    activation: Literal["none", "sigmoid"] = Field(
        "none", description="sigmoid: the scores are logits (Ultralytics' raw heads)"
    )
    multi_label: bool = Field(
        False, description="a candidate per class above the threshold (PaddleDetection's NMS)"
    )
    cell_offset: float = Field(0.5, ge=0, le=1, description="centre of a cell, in cells")


class Level:
    """One stride's score and box tensors."""

    def __init__(self, scores: TensorSpec, boxes: TensorSpec, stride: Optional[int]):
        self.scores, self.boxes, self.stride = scores, boxes, stride


class DFLDecoder(Decoder):
    Settings = DFLSettings
    nms_done = False

    def __init__(
        self, settings: DFLSettings, outputs: Sequence[TensorSpec], input_size: Optional[Size]
    ):
        super().__init__(settings, outputs, input_size)
        rank = {"cells": 3, "nchw": 4, "nhwc": 4}.get(settings.layout)
        self.channel_axis = {"cells": -1, "nhwc": -1, "nchw": 1}.get(settings.layout)
        by_name = {spec.name: spec for spec in outputs}
        for key in ("scores", "boxes"):
            for name in getattr(settings, key) or ():
                named_output(outputs, name, key)
        named = (settings.scores or []) + (settings.boxes or [])
        usable = [by_name[n] for n in named] or [
            s for s in outputs if is_float(s) and len(s.shape) in ((rank,) if rank else (3, 4))
        ]
        if not usable:
            raise ConfigurationError(
                "no model output is a [batch, cells, channels] or [batch, channels, height, "
                f"width] tensor; outputs: {outputs_text(outputs)}"
            )
        if self.channel_axis is None:
            self.channel_axis = -1 if len(usable[0].shape) == 3 else 1
        for spec in usable:
            if len(spec.shape) != len(usable[0].shape):
                raise shape_error(spec, self._expected(), "score and box tensors mix layouts")
            if spec.shape[self.channel_axis] is None:
                raise shape_error(spec, self._expected(), "its channels must be static")
        scores, boxes = self._split(usable, by_name)
        if len(scores) != len(boxes):
            raise ConfigurationError(
                f"{len(scores)} score outputs ({outputs_text(scores)}) but {len(boxes)} box "
                f"outputs ({outputs_text(boxes)}): one of each per stride"
            )
        bins = boxes[0].shape[self.channel_axis]
        if bins % 4 or settings.reg_max is not None and bins != 4 * (settings.reg_max + 1):
            want = "4 x (reg_max + 1)" if settings.reg_max is None else 4 * (settings.reg_max + 1)
            raise shape_error(boxes[0], self._expected(f"{want} box channels"))
        self.bins = bins // 4
        self.classes = scores[0].shape[self.channel_axis]
        for spec in scores + boxes:
            channels = self.classes if spec in scores else bins
            if spec.shape[self.channel_axis] != channels:
                raise shape_error(spec, self._expected(f"{channels} channels"))
        if settings.scores is None:  # pair by cell count, finest stride first
            scores.sort(key=self._cells, reverse=True)
            boxes.sort(key=self._cells, reverse=True)
        if settings.strides is not None and len(settings.strides) != len(scores):
            raise ConfigurationError(
                f"decoder strides has {len(settings.strides)} values for {len(scores)} score "
                "outputs"
            )
        self.levels = []
        for index, (score, box) in enumerate(zip(scores, boxes)):
            if self._cells(score) != self._cells(box) and None not in (
                self._cells(score),
                self._cells(box),
            ):
                raise shape_error(
                    box, f"the cells of '{score.name}' {shape_text(score.shape)}", "not paired"
                )
            stride = settings.strides[index] if settings.strides else None
            self.levels.append(Level(score, box, stride))
        self.sources = [level.scores.name for level in self.levels] + [
            level.boxes.name for level in self.levels
        ]
        self._grids: Dict[Tuple[int, int, int, int], np.ndarray] = {}

    def _expected(self, what: str = "") -> str:
        layout = (
            "[batch, cells, channels]"
            if self.channel_axis == -1 and self.settings.layout != "nhwc"
            else "[batch, height, width, channels]"
            if self.settings.layout == "nhwc"
            else "[batch, channels, height, width]"
        )
        return f"{layout} with {what}" if what else layout

    def _cells(self, spec: TensorSpec) -> Optional[int]:
        channel_axis = self.channel_axis % len(spec.shape)
        dims = [d for axis, d in enumerate(spec.shape) if axis not in (0, channel_axis)]
        return None if None in dims else int(np.prod(dims))

    def _split(
        self, usable: List[TensorSpec], by_name: Dict[str, TensorSpec]
    ) -> Tuple[List[TensorSpec], List[TensorSpec]]:
        if self.settings.scores and self.settings.boxes:
            scores = [by_name[n] for n in self.settings.scores]
            return scores, [by_name[n] for n in self.settings.boxes]
        counts = sorted({spec.shape[self.channel_axis] for spec in usable})
        if len(counts) != 2:
            raise ConfigurationError(
                "cannot tell score outputs from box outputs by their channels "
                f"({outputs_text(usable)}); name them in the decoder's 'scores' and 'boxes'"
            )
        box_channels = None
        if self.settings.reg_max is not None:
            box_channels = 4 * (self.settings.reg_max + 1)
        elif self.settings.boxes:
            box_channels = by_name[self.settings.boxes[0]].shape[self.channel_axis]
        elif self.settings.scores:
            score_channels = by_name[self.settings.scores[0]].shape[self.channel_axis]
            box_channels = next(c for c in counts if c != score_channels)
        else:
            fours = [c for c in counts if c % 4 == 0]
            usual = [c for c in counts if c in USUAL_BOX_CHANNELS]
            box_channels = fours[0] if len(fours) == 1 else usual[0] if len(usual) == 1 else None
        if box_channels not in counts:
            raise ConfigurationError(
                "cannot tell score outputs from box outputs by their channels "
                f"({outputs_text(usable)}); set the decoder's 'reg_max' or name the outputs"
            )
        scores = [s for s in usable if s.shape[self.channel_axis] != box_channels]
        boxes = [s for s in usable if s.shape[self.channel_axis] == box_channels]
        return scores, boxes

    def _stride(self, level: Level, cells: int, shape: Tuple[int, ...], input_size: Size) -> int:
        if level.stride is not None:
            return level.stride
        height, width = input_size
        if len(shape) == 4:
            rows = shape[2] if self.channel_axis == 1 else shape[1]
            return max(1, int(round(height / rows)))
        for stride in (8, 16, 32, 64, 128, 4, 2, 256):
            if -(-height // stride) * -(-width // stride) == cells:
                return stride
        raise ConfigurationError(
            f"output '{level.scores.name}' has {cells} cells, which no stride gives for a "
            f"{width}x{height} input; set the decoder's 'strides'"
        )

    def _grid(self, stride: int, rows: int, columns: int, cells: int) -> np.ndarray:
        """Cell centres [cells, 2] (x, y) in input pixels, row-major as the heads flatten."""
        key = (stride, rows, columns, cells)
        if key not in self._grids:
            offset = self.settings.cell_offset
            ys, xs = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
            grid = (np.stack([xs.ravel(), ys.ravel()], axis=1) + offset) * stride
            self._grids[key] = grid[:cells].astype(np.float32)
        return self._grids[key]

    def __call__(
        self, outputs: Mapping[str, np.ndarray], input_size: Size, confidence_threshold: float
    ) -> List[Candidates]:
        logits = self.settings.activation == "sigmoid"
        threshold = logit(confidence_threshold) if logits else confidence_threshold
        height, width = input_size
        per_row: List[List[Candidates]] = []
        for level in self.levels:
            scores = real(outputs, level.scores)
            boxes = real(outputs, level.boxes)
            batch = scores.shape[0]
            if scores.ndim == 4:
                if self.channel_axis == 1:
                    rows, columns = scores.shape[2:]
                    scores = scores.reshape(batch, self.classes, -1)  # [B, C, cells]
                    boxes = boxes.reshape(batch, 4, self.bins, -1)
                else:
                    rows, columns = scores.shape[1:3]
                    scores = scores.reshape(batch, -1, self.classes).transpose(0, 2, 1)
                    boxes = boxes.reshape(batch, -1, 4, self.bins).transpose(0, 2, 3, 1)
                cells = rows * columns
            else:
                cells = scores.shape[1]
                scores = scores.transpose(0, 2, 1)  # [B, C, cells]
                boxes = boxes.reshape(batch, cells, 4, self.bins).transpose(0, 2, 3, 1)
                rows = columns = None
            stride = self._stride(level, cells, outputs[level.scores.name].shape, input_size)
            if rows is None:
                rows, columns = -(-height // stride), -(-width // stride)
            grid = self._grid(stride, rows, columns, cells)
            for row in range(batch):
                cell, classes, values = select(scores[row], threshold, self.settings.multi_label)
                values = as_float(values)
                if logits:
                    values = sigmoid(values).astype(np.float32)
                if len(cell) > cells:  # multi_label at a low threshold: a cell many times
                    distances = self._distances(boxes[row])[cell] * stride
                else:
                    distances = self._distances(boxes[row][:, :, cell]) * stride  # [n, 4] l t r b
                centres = grid[cell]
                corners = np.concatenate(
                    [centres - distances[:, :2], centres + distances[:, 2:]], axis=1
                )
                if len(per_row) <= row:
                    per_row.append([])
                per_row[row].append(Candidates(corners.astype(np.float32), values, classes))
        return [_concatenate(parts) for parts in per_row]

    def _distances(self, bins: np.ndarray) -> np.ndarray:
        """[4, bins, n] logits -> [n, 4] expected distances in cells."""
        bins = as_float(bins)
        weights = softmax(bins)
        return (weights * np.arange(self.bins, dtype=np.float32)[:, None]).sum(axis=1).T


def _concatenate(parts: List[Candidates]) -> Candidates:
    if not parts:
        return empty_candidates()
    return Candidates(
        boxes=np.concatenate([p.boxes for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
        classes=np.concatenate([p.classes for p in parts]),
    )
