"""A runtime that is not NPURuntime, for tests/test_wire.py: it returns each input as it got
it, plus the Python type of its data, so a test sees what other runtimes receive."""
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class TypeEcho(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        outputs = []
        for item in payload.inputs:
            data = item.data.root
            outputs.append(
                ResponseOutput(name=item.name, shape=item.shape, datatype=item.datatype, data=data)
            )
            outputs.append(
                ResponseOutput(
                    name=f"{item.name}_type",
                    shape=[1],
                    datatype="BYTES",
                    data=[type(data).__name__.encode()],
                )
            )
        return InferenceResponse(model_name=self.name, outputs=outputs)
