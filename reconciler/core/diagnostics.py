"""Diagnostics: what validation reports, each with ``file:line:column``, the object it is about and a fix hint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ERROR = "error"
WARNING = "warning"
#: Said for the record; neither fails validation nor counts as a warning with ``--strict``.
NOTE = "note"


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int
    column: int
    message: str
    severity: str = ERROR
    kind: str | None = None
    name: str | None = None
    hint: str | None = None
    code: str = "invalid"

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def location(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    def format_text(self) -> str:
        who = f"{self.kind}/{self.name}: " if self.kind and self.name else (f"{self.kind}: " if self.kind else "")
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{self.location()}: {self.severity}: {who}{self.message}{hint}"

    def format_github(self) -> str:
        level = "error" if self.is_error else ("notice" if self.severity == NOTE else "warning")
        who = f"{self.kind}/{self.name}: " if self.kind and self.name else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        msg = f"{who}{self.message}{hint}".replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        title = self.code.replace(",", " ").replace("::", " ")
        return f"::{level} file={self.file},line={self.line},col={self.column},title={title}::{msg}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}
