"""MLServer's floor: a runtime that returns its inputs as outputs, so a benchmark of it
measures what MLServer costs (HTTP/gRPC, parsing, types, encoding) before any model runs."""
import numpy as np
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput, TensorData

from mlserver_npu import NPURuntime
from mlserver_npu.tensors import datatype_of
from mlserver_npu.wire import wire_array


class EchoRuntime(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                ResponseOutput(
                    name=item.name,
                    shape=item.shape,
                    datatype=item.datatype,
                    parameters=item.parameters,
                    data=item.data,
                )
                for item in payload.inputs
            ],
        )


class EchoNPURuntime(NPURuntime):
    """The plugin's runtime, loaded as usual (its model, zero-copy gRPC registration, REST
    boundary), whose predict echoes as EchoRuntime does: against EchoRuntime it measures what
    being an NPURuntime costs outside predict; against NPURuntime, what predict costs."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        return await EchoRuntime.predict(self, payload)


class RunOnlyNPURuntime(NPURuntime):
    """The plugin's runtime, loaded as usual, whose predict only runs the model: onnxruntime's
    `InferenceSession.run` of its first session on the (zero-copy gRPC) input, its outputs
    wrapped as arrays, nothing checked, timed or counted. The floor of a request that runs
    the model: against EchoNPURuntime it measures the run, against NPURuntime the rest of
    predict. For onnxruntime models fed over gRPC only (bench.tiny_gap)."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        session = self.stages.pool.sessions[0]
        feeds = {item.name: item.data.root.view(np.ndarray).reshape(item.shape)
                 for item in payload.inputs}
        names = [spec.name for spec in session.outputs]
        results = session._session.run(names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                ResponseOutput(name=name, shape=list(array.shape),
                               datatype=datatype_of(array.dtype),
                               data=TensorData.model_construct(root=wire_array(array)))
                for name, array in zip(names, results)
            ],
        )
