"""What went wrong in one step of building or measuring a variant, in words a report can carry. Pure.

A library that fails on a real model often says little: ``AssertionError`` with no message from deep inside
ONNX Runtime's symbolic shape inference, or a protobuf error naming a node. :func:`describe` keeps the step
(what we asked the library to do), the exception's type and its whole message, and when the message is empty
the failing source line and where it is, so the publisher can tell a library limitation from a bad model.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import asdict, dataclass
from typing import Any

MAX_MESSAGE = 2000


@dataclass(frozen=True)
class Failure:
    step: str  # e.g. "pre-processing (quant_pre_process with symbolic shape inference)"
    type: str  # the exception's class name, e.g. "AssertionError"
    message: str

    def text(self) -> str:
        return f"{self.step}: {self.type}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StepError(Exception):
    """A build failed; ``failures`` are every attempt in order, the last one the decisive."""

    def __init__(self, failures: list[Failure]) -> None:
        super().__init__("; ".join(f.text() for f in failures))
        self.failures = failures


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe(step: str, exc: BaseException) -> Failure:
    message = one_line(str(exc))
    if not message:
        # A bare `assert` inside a library: its source line and location are all there is to go on.
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            last = frames[-1]
            code = f"{last.line} " if last.line else ""
            message = f"{code}(at {os.path.basename(last.filename)}:{last.lineno} in {last.name})"
        else:
            message = "(no message)"
    return Failure(step, type(exc).__name__, message)
