"""Report plugin: the pytest hooks that gather the tests' measurements and write ``results.json``
and the HTML report.

Loaded from the root ``conftest.py``.  Tests hand measurements over with
:func:`experiments.report.records.record`; this plugin gathers them on the controlling
process and, when ``--html`` is given, writes ``results.json`` beside the report
(:mod:`experiments.report.document`) and adds the scratchnet sections
(:mod:`experiments.report.page`) to the pytest-html page: the answer and contents before
pytest-html's summary, the report's sections after it, and pytest-html's own test table
last, hidden behind one checkbox (:mod:`experiments.report.tests_table`).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from .document import results_document, write_results
from .page import add_viewport, examples, no_study_sections, sections
from .records import by_kind, gather
from .tests_table import clean_log, tests_toggle


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report):
    gather(report)


def pytest_html_report_title(report):
    report.title = "scratchnet: studies and scratch_layers verification"


def pytest_html_results_summary(prefix, summary, postfix, session):
    if not by_kind("run"):
        prefix.extend(no_study_sections())
        summary.append(tests_toggle())
        return
    doc = results_document(session.config)
    before, after = sections(doc, examples(doc), by_kind("backward"))
    prefix.extend(before)
    postfix.extend(after)
    summary.append(tests_toggle(session.testscollected))


def pytest_html_results_table_html(report, data):
    clean_log(report, data)


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session):
    """``results.json`` beside the report; and, after pytest-html has written the page, the
    viewport tag its template lacks."""
    result = yield
    write_results(session)
    htmlpath = getattr(session.config.option, "htmlpath", None)
    if htmlpath and not hasattr(session.config, "workerinput"):
        path = Path(htmlpath)
        if path.exists():
            page = path.read_text(encoding="utf-8")
            fixed = add_viewport(page)
            if fixed != page:
                path.write_text(fixed, encoding="utf-8")
    return result
