"""The in-memory fleet repository: schema-valid manifests indexed by kind and name, and a load's result.

Plain data with no I/O and no checks, so both the loader (:mod:`reconciler.fleet.manifests`) and the semantic
checks (:mod:`reconciler.fleet.validation`) can use it without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.core.diagnostics import ERROR, WARNING, Diagnostic
from reconciler.fleet.yamlsafe import Document


@dataclass
class Manifest:
    """One schema-valid document: its data plus where it came from."""

    kind: str
    name: str
    data: dict[str, Any]
    file: str
    doc: Document

    @property
    def spec(self) -> dict[str, Any]:
        return self.data.get("spec") or {}

    @property
    def labels(self) -> dict[str, str]:
        return self.data.get("metadata", {}).get("labels") or {}

    def pos(self, *path: Any, key: bool = False) -> tuple[int, int]:
        return self.doc.position(tuple(path), key=key)

    def diag(self, message: str, *path: Any, severity: str = ERROR, hint: str | None = None,
             code: str = "invalid", key: bool = False) -> Diagnostic:
        line, col = self.pos(*path, key=key)
        return Diagnostic(self.file, line, col, message, severity, self.kind, self.name, hint, code)


@dataclass(frozen=True)
class NonRegular:
    """A repository entry that is not a regular file: a symlink, a submodule (gitlink) or a special file.

    The readers report these instead of skipping them, so the loader can name them: an operator who commits a
    symlink must not believe its target is in force.
    """

    kind: str  # "symlink", "submodule", "special file"
    detail: str = ""  # the link target, the submodule commit

    def describe(self) -> str:
        if self.kind == "symlink":
            return f"a symbolic link (to {self.detail!r})" if self.detail else "a symbolic link"
        if self.kind == "submodule":
            return f"a submodule (commit {self.detail[:12]})" if self.detail else "a submodule"
        return f"a {self.kind}"


#: What the readers return and the loader takes: repository path → bytes of a regular file, or the entry.
RepoFiles = Mapping[str, bytes | NonRegular]


@dataclass
class FleetRepo:
    """The schema-valid content of a fleet repository, indexed by kind and name."""

    fleet: Manifest | None = None
    models: dict[str, Manifest] = field(default_factory=dict)
    deployments: dict[str, Manifest] = field(default_factory=dict)
    devices: dict[str, Manifest] = field(default_factory=dict)

    @property
    def fleet_spec(self) -> dict[str, Any]:
        return self.fleet.spec if self.fleet else {}

    @property
    def require_status_signatures(self) -> bool:
        """``spec.status.requireSignatures`` (default true: new fleets count only signed status)."""
        return bool((self.fleet_spec.get("status") or {}).get("requireSignatures", True))

    def status_keys(self) -> dict[str, list[str]]:
        """Every inventory device -> the status public keys its manifest lists (maybe none)."""
        return {name: [str(k) for k in (m.spec.get("statusKeys") or [])] for name, m in self.devices.items()}

    def model_version(self, model: str, version: str) -> dict[str, Any] | None:
        m = self.models.get(model)
        if m is None:
            return None
        for v in m.spec.get("versions", []):
            if v.get("version") == version:
                return v
        return None


@dataclass
class LoadResult:
    fleet: FleetRepo
    diagnostics: list[Diagnostic]
    files: int = 0

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors
