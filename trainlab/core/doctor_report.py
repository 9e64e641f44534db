"""The doctor's verdicts as plain data: what ``trainlab doctor --json`` prints and the
app reads back.

No torch here: the app (which never imports torch) parses the report of the
``doctor`` child process with :meth:`DoctorReport.from_dict`, and the engine writes it
with :meth:`DoctorReport.to_dict`, so both sides share one definition of the shape:
``{"checks": [{"name", "status", "detail"}...], "passed", "warned", "failed"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PASS, WARN, FAIL = "pass", "warn", "fail"
STATUSES = (PASS, WARN, FAIL)
"""A check's verdict, from best to worst; the only statuses a report may hold."""


class ReportError(ValueError):
    """A doctor report that is not of the documented shape; the message names the
    check and the field."""


def _bad_status(name: str, status: object) -> ReportError:
    """The error for a check whose status is not one of ``STATUSES``."""
    return ReportError(f"check {name!r} has status {status!r}; allowed: {', '.join(STATUSES)}")


@dataclass(frozen=True)
class CheckResult:
    """One finding of the doctor."""

    name: str
    status: str
    """pass, warn or fail (``STATUSES``)."""
    detail: str
    """The numbers and what they mean, in plain words; what to do when not a pass."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise _bad_status(self.name, self.status)

    @classmethod
    def from_dict(cls, index: int, item: Any) -> CheckResult:
        """Check ``index`` of a report's ``checks`` list, validated.

        Raises:
            ReportError: not an object with a string name, a status from
                ``STATUSES`` and a string detail.
        """
        if not isinstance(item, dict):
            raise ReportError(f"check {index} is not an object: {item!r:.200}")
        name, status, detail = item.get("name"), item.get("status"), item.get("detail")
        if not isinstance(name, str):
            raise ReportError(f"check {index} has no name: {item!r:.200}")
        if not isinstance(status, str):
            raise _bad_status(name, status)
        if not isinstance(detail, str):
            raise ReportError(f"check {name!r} has detail {detail!r}; a string is expected")
        return cls(name, status, detail)  # __post_init__ refuses an unknown status


@dataclass(frozen=True)
class DoctorReport:
    """Every check's result, in checklist order."""

    checks: tuple[CheckResult, ...]

    def count(self, status: str) -> int:
        """How many checks ended with ``status``."""
        return sum(1 for check in self.checks if check.status == status)

    @property
    def failed(self) -> bool:
        """Did any check fail?"""
        return self.count(FAIL) > 0

    def summary(self) -> str:
        """``5 passed, 2 warned, 1 failed``."""
        return (f"{self.count(PASS)} passed, {self.count(WARN)} warned, "
                f"{self.count(FAIL)} failed")

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object: checks, and how many passed, warned and failed."""
        return {
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail}
                       for c in self.checks],
            "passed": self.count(PASS),
            "warned": self.count(WARN),
            "failed": self.count(FAIL),
        }

    @classmethod
    def from_dict(cls, data: Any) -> DoctorReport:
        """The report ``to_dict`` wrote. The counts are recomputed from the checks, not
        taken from the ``passed``/``warned``/``failed`` fields.

        Raises:
            ReportError: ``data`` is not an object with a list of well-formed checks.
        """
        if not isinstance(data, dict):
            raise ReportError(f"the report is not an object: {data!r:.200}")
        checks = data.get("checks")
        if not isinstance(checks, list):
            raise ReportError(f"the report has no list of checks: {data!r:.200}")
        return cls(tuple(CheckResult.from_dict(i, item) for i, item in enumerate(checks)))
