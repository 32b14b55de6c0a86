"""Report plugin: gathers the tests' measurements, writes ``results.json`` and the HTML report.

Tests hand their measurements over with :func:`record`, which stores them in the test's
``user_properties`` (these also travel from pytest-xdist workers); this plugin gathers
them on the controlling process from the call phase only and, when ``--html`` is given,
writes ``results.json`` beside the report (:mod:`experiments.results`) and adds the
scratchnet sections (:mod:`experiments.report_page`) to the pytest-html page: the
answer and contents before pytest-html's summary, the report's sections after it, and
pytest-html's own test table last, hidden behind one checkbox, each row's log reduced
to what helps (a skip reason, a failure; no captured TensorFlow chatter).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import pytest

from . import report_page
from . import results
from .data import DATA_DIR_ENV
from .families import all_families

RECORD_KEY = "scratchnet"
_records: list[dict] = []


def record(request, kind: str, **data) -> None:
    """Attach one measurement to the running test for the report."""
    request.node.user_properties.append((RECORD_KEY, {"kind": kind, **data}))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report):
    if report.when == "call":
        for key, value in report.user_properties:
            if key == RECORD_KEY and value not in _records:
                _records.append(value)


def _by_kind(kind: str) -> list[dict]:
    return [r for r in _records if r.get("kind") == kind]


# ----------------------------------------------------------------------------- results.json

def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        # the report and results.json are being rewritten by this very run: not "changes"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)reports/report.html", ":(exclude)reports/results.json"],
                               cwd=root, capture_output=True, text=True).stdout
        files = [line[3:] for line in dirty.splitlines() if line.strip()]  # "XY path"
        if not files:
            return sha
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        return f"{sha}+uncommitted changes to {shown}"
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def environment(config) -> dict:
    import numpy
    versions = {"python": platform.python_version(), "numpy": numpy.__version__}
    try:
        import keras
        import tensorflow as tf
        versions.update(tensorflow=tf.__version__, keras=keras.__version__)
    except ImportError:
        pass
    import scratch_layers
    return {"versions": versions, "platform": platform.platform(), "cpus": os.cpu_count(),
            "blas": scratch_layers.blas_info(),
            "profile": config.scratchnet_profile, "git_commit": _git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "data_dir": os.environ.get(DATA_DIR_ENV) or "download"}


_DOC: dict = {}


def results_document(config) -> dict:
    """The whole results document (memoized: figures and JSON come from one copy)."""
    if not _DOC:
        doc = results.build(_by_kind("run"), config.scratchnet_profile)
        _DOC.update(environment=environment(config),
                    datasets={v["family"]: {"source": v["data_source"], "splits": v["split_sizes"]}
                              for v in doc["variants"] if v["runs"]},
                    seeds={fam.name: {"seeds": list(fam.recipe[config.scratchnet_profile]["seeds"]),
                                      "baseline_seeds": list(fam.seeds(config.scratchnet_profile, fam.baseline))}
                           for fam in all_families()},
                    **doc, references=_references(),
                    benchmarks=_by_kind("bench"), training_benchmarks=_by_kind("bench_train"),
                    layer_divergence=_by_kind("layers"))
    return _DOC


def _references() -> dict:
    """Reference baselines per family (cached in reports/references.json; see
    :mod:`experiments.references`); a failure is reported in the document, not raised."""
    from . import references
    try:
        return references.for_families(all_families())
    except Exception as exc:  # noqa: BLE001 - the report must still be written
        return {"error": f"{type(exc).__name__}: {exc}"}


def _write_results(session):
    config = session.config
    htmlpath = getattr(config.option, "htmlpath", None)
    if hasattr(config, "workerinput") or not htmlpath or not _by_kind("run"):
        return
    out = Path(htmlpath).parent / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results_document(config), indent=1, default=str))
    os.replace(tmp, out)


def pytest_html_report_title(report):
    report.title = "scratchnet: studies and scratch_layers verification"


def pytest_html_results_summary(prefix, summary, postfix, session):
    if not _by_kind("run"):
        prefix.extend([report_page.html.STYLE, '<div class="scratchnet">',
                       "<h2>scratchnet: Keras studies, verified against a from-scratch NumPy forward pass</h2>",
                       "<p>No study model was verified in this session, so there are no study sections "
                       "(run without <code>-m</code> filters, or with a family marker).</p></div>"])
        summary.append(report_page.tests_toggle())
        return
    doc = results_document(session.config)
    before, after = report_page.sections(doc, report_page.examples(doc), _by_kind("backward"))
    prefix.extend(before)
    postfix.extend(after)
    summary.append(report_page.tests_toggle(session.testscollected))


_NOISE = ("retracing", "tf.function", "triggered tf.function", "WARNING: All log messages before absl")


def clean_log(report, data: list) -> None:
    """pytest-html's log cell of one test, cut to what a reader needs: a skip's reason (not
    the raw ``(path, line, reason)`` tuple), a failure's traceback and output without
    TensorFlow's retracing warnings, and nothing for a pass (its output is in the terminal)."""
    if report.skipped:
        lr = report.longrepr
        reason = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
        data[:] = [html_escape(reason)]
    elif report.passed:
        data[:] = ["passed (captured output is not kept in the report)"]
    else:
        data[:] = ["\n".join(line for line in chunk.splitlines() if not any(n in line for n in _NOISE))
                   for chunk in data]


def html_escape(x: str) -> str:
    import html
    return html.escape(x)


def pytest_html_results_table_html(report, data):
    clean_log(report, data)


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session):
    """``results.json`` beside the report; and, after pytest-html has written the page, the
    viewport tag its template lacks."""
    result = yield
    _write_results(session)
    htmlpath = getattr(session.config.option, "htmlpath", None)
    if htmlpath and not hasattr(session.config, "workerinput"):
        path = Path(htmlpath)
        if path.exists():
            page = path.read_text(encoding="utf-8")
            fixed = report_page.add_viewport(page)
            if fixed != page:
                path.write_text(fixed, encoding="utf-8")
    return result
