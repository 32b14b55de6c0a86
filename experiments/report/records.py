"""How a test hands a measurement to the report: :func:`record`, and the records gathered.

:func:`record` stores the measurement in the test's ``user_properties`` (these also
travel from pytest-xdist workers); :func:`gather` takes them, on the controlling
process, from the call phase of each test's report.
"""
from __future__ import annotations

RECORD_KEY = "scratchnet"
_records: list[dict] = []


def record(request, kind: str, **data) -> None:
    """Attach one measurement to the running test for the report."""
    request.node.user_properties.append((RECORD_KEY, {"kind": kind, **data}))


def gather(report) -> None:
    """Keep the measurements of one test's call phase (each once)."""
    if report.when == "call":
        for key, value in report.user_properties:
            if key == RECORD_KEY and value not in _records:
                _records.append(value)


def by_kind(kind: str) -> list[dict]:
    return [r for r in _records if r.get("kind") == kind]
