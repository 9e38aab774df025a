"""FuriosaAI NPUs (Warboy) through `furiosa.runtime`, FuriosaRT's async runner API (>= 0.10).

`device` strings go to the runtime as they are (`warboy(1)*1`, `npu:0:0`, `npu:0:0-1`); the
pool opens one runner per comma-separated device. `options` are `create_runner`'s own keyword
arguments, the same fields as a `furiosa server` model config.
"""
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .base import BackendError, InvalidInput, TensorSpec

try:
    from furiosa.runtime import create_runner
except Exception as error:  # without the NPU driver the SDK raises RuntimeError, not ImportError
    raise ImportError(
        f"FuriosaAI's furiosa.runtime cannot be imported ({type(error).__name__}: {error}); "
        "it needs the furiosa extra (pip install 'mlserver-npu[furiosa]') and FuriosaAI's NPU "
        "driver and runtime libraries"
    ) from error


class Options(BaseModel):
    """`parameters.extra.options` for the furiosa backend: `create_runner` keyword arguments."""

    model_config = ConfigDict(extra="forbid")

    compiler_config: Optional[Dict[str, Any]] = Field(
        None, description="passed to the compiler as is, e.g. {'keep_unsignedness': true}"
    )
    worker_num: Optional[int] = Field(None, ge=1, description="worker threads per runner")
    batch_size: Optional[int] = Field(
        None, ge=1, description="compile for this batch: multiplies axis 0 of every tensor"
    )


def _specs(descs: List[Any], kind: str) -> List[TensorSpec]:
    # TensorDesc.name is None for model formats without tensor names.
    return [
        TensorSpec(name=desc.name or f"{kind}_{i}", dtype=np.dtype(desc.dtype.numpy),
                   shape=list(desc.shape))
        for i, desc in enumerate(descs)
    ]


class FuriosaSession:
    def __init__(self, runner: Any, device: str):
        self._runner = runner
        self.device = device
        self.warnings: List[str] = []
        self.inputs = _specs(runner.model.inputs(), "input")
        self.outputs = _specs(runner.model.outputs(), "output")

    async def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        try:
            results = await self._runner.run([feeds[spec.name] for spec in self.inputs])
        except (TypeError, ValueError) as error:  # the runtime's dtype and shape errors
            raise InvalidInput(str(error)) from error
        return {spec.name: np.asarray(result) for spec, result in zip(self.outputs, results)}

    async def close(self) -> None:
        await self._runner.close()


class FuriosaBackend:
    name = "furiosa"
    Options = Options

    def available_devices(self) -> List[str]:
        """NPU PEs by the kernel driver's device files (/dev/npu0pe0 -> npu:0:0)."""
        names = os.listdir("/dev") if os.path.isdir("/dev") else []
        pes = (re.fullmatch(r"npu(\d+)pe(\d+(?:-\d+)?)", name) for name in names)
        return sorted(f"npu:{m.group(1)}:{m.group(2)}" for m in pes if m)

    async def open(
        self, model_path: Path, device: Optional[str], options: Options
    ) -> FuriosaSession:
        label = device or "default"
        arguments = options.model_dump(exclude_none=True)
        try:
            runner = await create_runner(str(model_path), device=device, **arguments)
        except Exception as error:  # FuriosaRuntimeError, or TypeError/ValueError for arguments
            raise BackendError(
                f"furiosa cannot open '{model_path.name}' on device '{label}': "
                f"{type(error).__name__}: {error}"
            ) from error
        try:
            return FuriosaSession(runner, label)
        except Exception as error:  # e.g. a tensor type without a numpy equivalent
            await runner.close()
            raise BackendError(
                f"furiosa model '{model_path.name}' is not servable: {error}"
            ) from error
