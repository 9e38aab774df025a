"""Load shedding: each model holds at most `max_queue_size` requests at once (queued in the
batcher or waiting for a session, and running: Triton's `max_queue_size`, counting the
running ones too). One more is refused at once with a 429 (gRPC RESOURCE_EXHAUSTED) that
says why, and counted as `mlserver_npu_requests_total{outcome="rejected"}`: the requests
taken keep a bounded latency, and the health endpoints keep answering.

A REST request is counted from its arrival, before its body is read and parsed (limits.py,
the REST boundary: refusing it there costs next to nothing); a gRPC request from its
`predict` (ServedModel.admitted).
"""
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Dict, Iterator, Optional

from fastapi import status
from mlserver.errors import MLServerError


class Overloaded(MLServerError):
    """A request past the model's `max_queue_size`: 429, retry later or elsewhere."""

    def __init__(self, model_name: str, limit: int):
        super().__init__(overloaded_message(model_name, limit), status.HTTP_429_TOO_MANY_REQUESTS)


def overloaded_message(model_name: str, limit: int) -> str:
    return (
        f"model '{model_name}' is overloaded: it already holds {limit} "
        f"request{'s' if limit != 1 else ''} "
        "(parameters.extra.max_queue_size, by default MLSERVER_NPU_MAX_QUEUE_SIZE); retry later"
    )


class Admission:
    """The requests one model (by name, all its versions) holds, and their bound."""

    def __init__(self, model_name: str, limit: int, rejected: Optional[Callable[[], None]] = None):
        self.model_name = model_name
        self.limit = limit  # 0: no bound
        self.held = 0
        self._rejected = rejected
        self._copies = 0  # loaded copies (a reload loads the new one before it drops the old)

    def enter(self) -> bool:
        """Take one request, or False (counted as rejected) when the model holds its bound."""
        if self.limit and self.held >= self.limit:
            if self._rejected is not None:
                self._rejected()
            return False
        self.held += 1
        return True

    def leave(self) -> None:
        self.held -= 1

    def admitted(self) -> "_Admitted":
        """Around a `predict` (`with admission.admitted():`): a REST request was taken at the
        boundary already."""
        return _Admitted(self)


class _Admitted:
    # A class, not a @contextmanager generator: one is entered for every request.
    __slots__ = ("admission", "entered")

    def __init__(self, admission: Admission):
        self.admission = admission

    def __enter__(self) -> None:
        admission = self.admission
        self.entered = _ADMITTED.get() is not admission
        if self.entered and not admission.enter():
            raise Overloaded(admission.model_name, admission.limit)

    def __exit__(self, *exc: object) -> None:
        if self.entered:
            self.admission.leave()


ADMISSIONS: Dict[str, Admission] = {}
# The model whose admission a REST request holds, set by the boundary (limits.py).
_ADMITTED: ContextVar[Optional[Admission]] = ContextVar("mlserver_npu_admitted", default=None)


def register(
    model_name: str, limit: int, rejected: Optional[Callable[[], None]] = None
) -> Admission:
    """The model's admission, shared by its loaded copies, with the newest copy's bound."""
    admission = ADMISSIONS.get(model_name)
    if admission is None:
        admission = ADMISSIONS[model_name] = Admission(model_name, limit, rejected)
    admission.limit, admission._rejected = limit, rejected or admission._rejected
    admission._copies += 1
    return admission


def unregister(admission: Admission) -> None:
    admission._copies -= 1
    if admission._copies <= 0 and ADMISSIONS.get(admission.model_name) is admission:
        del ADMISSIONS[admission.model_name]


@contextmanager
def held_by_boundary(admission: Admission) -> Iterator[None]:
    """Around a REST request the boundary took: `admitted` then does not count it again."""
    token = _ADMITTED.set(admission)
    try:
        yield
    finally:
        _ADMITTED.reset(token)
        admission.leave()
