"""References between a pipeline's tensors, as Seldon Core 2 writes them: `inputs.<name>` (a
pipeline input) and `<step>.outputs.<name>` (a step's output)."""
from dataclasses import dataclass
from typing import Annotated, Any, Optional

from pydantic import PlainValidator


@dataclass(frozen=True)
class Reference:
    """`inputs.<name>` (step None) or `<step>.outputs.<name>`."""

    step: Optional[str]
    name: str

    def __str__(self) -> str:
        return f"inputs.{self.name}" if self.step is None else f"{self.step}.outputs.{self.name}"


def parse_reference(text: Any) -> Reference:
    if isinstance(text, Reference):
        return text
    if not isinstance(text, str):
        raise ValueError(f"a reference is a string, not {type(text).__name__}")
    step, dot, rest = text.partition(".")
    if step == "inputs" and rest:
        return Reference(None, rest)
    kind, _, name = rest.partition(".")
    if dot and kind == "outputs" and name and step:
        return Reference(step, name)
    raise ValueError(f"'{text}' is not 'inputs.<name>' or '<step>.outputs.<name>'")


Ref = Annotated[Reference, PlainValidator(parse_reference)]
