"""A runtime that is not NPURuntime and fails every request with an exception that is no
MLServer error (a bug, as MLServer sees it), with a long message: for tests/test_runtime_errors.py."""
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse


class Faulty(MLModel):
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        raise RuntimeError("the runtime's state is broken: " + "detail " * 5000)
