"""Report plugin: gathers the tests' measurements, writes ``results.json`` and the HTML report.

Tests hand their measurements over with :func:`record`, which stores them in the test's
``user_properties`` (these also travel from pytest-xdist workers); this plugin gathers
them on the controlling process from the call phase only and, when ``--html`` is given,
writes ``results.json`` beside the report (:mod:`experiments.results`) and adds the
scratchnet sections (:mod:`experiments.report_html`) to the pytest-html page.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import pytest

from . import report_backward
from . import report_html as sections
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
                    **doc, benchmarks=_by_kind("bench"), training_benchmarks=_by_kind("bench_train"), layer_divergence=_by_kind("layers"))
    return _DOC


def pytest_sessionfinish(session):
    config = session.config
    htmlpath = getattr(config.option, "htmlpath", None)
    if hasattr(config, "workerinput") or not htmlpath or not _by_kind("run"):
        return
    out = Path(htmlpath).parent / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results_document(config), indent=1, default=str))
    os.replace(tmp, out)


def _examples(doc: dict) -> dict:
    """Misclassified test items of each family's selected model, as HTML."""
    out = {}
    for fam in all_families():
        sel = doc["selected"].get(fam.name)
        if sel and sel.get("misclassified"):
            splits = fam.load_data()
            out[fam.name] = sections.misclassified_html(fam.name, sel, splits.x_test, splits.class_names)
    return out


def pytest_html_report_title(report):
    report.title = "scratchnet: studies and scratch_layers verification"


def pytest_html_results_summary(prefix, summary, postfix, session):
    titles = {f.name: f.title for f in all_families()}
    parts = [sections.STYLE, '<div class="scratchnet">',
             "<h2>scratchnet: Keras studies, verified against a from-scratch NumPy forward pass</h2>"]
    if not _by_kind("run"):
        parts.append("<p>No study model was verified in this session, so there are no study "
                     "sections (run without <code>-m</code> filters, or with a family marker).</p></div>")
        prefix.extend(parts)
        return
    doc = results_document(session.config)
    parts += [sections.answer_section(doc, titles), sections.toc(doc, titles), "</div>"]
    prefix.extend(parts)
    body = ['<div class="scratchnet">', "<h2>Studies</h2>"]
    for study in doc["studies"]:
        vs = [v for v in doc["variants"] if v["family"] == study["family"] and v["study"] == study["study"]]
        body.append(sections.study_section(study, vs, titles[study["family"]]))
    body += [sections.selected_section(doc, titles, _examples(doc)),
             sections.verification_section(doc, doc["layer_divergence"]),
             sections.recipe_section(doc, titles),
             sections.benchmark_section(doc["benchmarks"], doc["environment"].get("blas")),
             report_backward.backward_section(_by_kind("backward"), _by_kind("bench_train")),
             sections.provenance_section(doc["environment"], doc), "</div>"]
    postfix.extend(body)
