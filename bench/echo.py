"""MLServer's floor: a runtime that returns its inputs as outputs, so a benchmark of it
measures what MLServer costs (HTTP/gRPC, parsing, types, encoding) before any model runs."""
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from mlserver_npu import NPURuntime


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
