"""The report's own sections put together, for the pytest-html page or a page of their own.

:func:`sections` returns the HTML that the pytest-html page carries before (``prefix``)
and after (``postfix``) pytest-html's own summary; :mod:`experiments.report.plugin` hands
it to pytest-html.  :func:`standalone` wraps the same sections in a page of their own
(:mod:`experiments.report.rerender`).
"""
from __future__ import annotations

from ..families import all_families
from ..references import best
from .markup import STYLE
from .sections.answer import answer_section, toc
from .sections.backward import backward_section
from .sections.benchmarks import benchmark_section
from .sections.design import design_section
from .sections.first_screen import first_screen
from .sections.provenance import provenance_section
from .sections.recipes import recipe_section
from .sections.selected import misclassified_html, selected_section
from .sections.studies import family_intro, study_section
from .sections.conformance import conformance_section
from .sections.verification import verification_section

VIEWPORT = '<meta name="viewport" content="width=device-width, initial-scale=1">'
HEADING = "<h2>scratchnet: Keras studies, verified against a from-scratch NumPy forward pass</h2>"


def examples(doc: dict) -> dict:
    """Misclassified test items of each family's selected model, as HTML (loads the data)."""
    out = {}
    for fam in all_families():
        sel = doc["selected"].get(fam.name)
        if sel and sel.get("misclassified"):
            splits = fam.load_data()
            out[fam.name] = misclassified_html(fam.name, sel, splits.x_test, splits.class_names)
    return out


def no_study_sections() -> list[str]:
    """The prefix of a session that verified no study model."""
    return [STYLE, '<div class="scratchnet">', HEADING,
            "<p>No study model was verified in this session, so there are no study sections "
            "(run without <code>-m</code> filters, or with a family marker).</p></div>"]


def sections(doc: dict, examples_html: dict, backward: list[dict] | None = None) -> tuple[list[str], list[str]]:
    """(prefix, postfix) HTML; ``backward`` None leaves the backward-pass section out (a saved
    results document does not carry its records)."""
    fams = all_families()
    titles = {f.name: f.title for f in fams}
    prefix = [STYLE, '<div class="scratchnet">', HEADING, first_screen(doc, titles),
              answer_section(doc, titles), toc(doc, titles), "</div>"]
    body = ['<div class="scratchnet">', design_section(doc, fams)]
    refs = doc.get("references") or {}
    for fam in fams:
        studies = [s for s in doc["studies"] if s["family"] == fam.name]
        if not studies:
            continue
        body.append(family_intro(fam.name, fam.title, doc))
        for study in studies:
            vs = [v for v in doc["variants"] if v["family"] == study["family"] and v["study"] == study["study"]]
            body.append(study_section(study, vs, fam.title, best(refs.get(fam.name))))
    body += [selected_section(doc, titles, examples_html),
             verification_section(doc, doc.get("layer_divergence", [])),
             conformance_section(doc.get("backends", [])),
             recipe_section(doc, titles),
             benchmark_section(doc.get("benchmarks", []), doc.get("environment", {}).get("blas")),
             backward_section(list(backward), doc.get("training_benchmarks", []))
             if backward is not None else "",
             provenance_section(doc["environment"], doc), "</div>"]
    return prefix, body


def add_viewport(page: str) -> str:
    """A viewport meta tag in ``<head>`` (pytest-html's template has none), once."""
    if 'name="viewport"' in page:
        return page
    return page.replace("<head>", "<head>\n    " + VIEWPORT, 1)


def standalone(doc: dict, examples_html: dict) -> str:
    prefix, body = sections(doc, examples_html)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">" + VIEWPORT
            + "<title>scratchnet: studies and scratch_layers verification</title></head><body>"
            + "".join(prefix) + "".join(body) + "</body></html>")
