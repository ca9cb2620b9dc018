"""FHIR errors, each carrying its HTTP status and OperationOutcome issue code (FHIR R4 §3.1.0.1.8)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Issue:
    diagnostics: str
    code: str = "invalid"  # http://hl7.org/fhir/issue-type
    severity: str = "error"
    expression: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


class FhirError(Exception):
    status: int = 400

    def __init__(self, issues: Sequence[Issue] | str, *, status: int | None = None) -> None:
        self.issues: tuple[Issue, ...] = (Issue(issues),) if isinstance(issues, str) else tuple(issues)
        if status is not None:
            self.status = status
        super().__init__("; ".join(i.diagnostics for i in self.issues))

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


class InvalidResourceError(FhirError):
    status = 400  # 422 is for business rules; structural problems are 400 (R4 §3.1.0.8)


class UnsupportedTypeError(FhirError):
    status = 400


class NotFoundError(FhirError):
    status = 404


class GoneError(FhirError):
    status = 410


class PreconditionFailedError(FhirError):
    status = 412


class ConflictError(FhirError):
    status = 409


class VersionConflictError(ConflictError):
    """Another request wrote the same resource first (R4 http.html "Managing Resource Contention")."""


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}
