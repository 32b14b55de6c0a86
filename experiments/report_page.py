"""The report's own sections, put together; and a re-render from a saved ``results.json``.

:func:`sections` returns the HTML that the pytest-html page carries before (``prefix``)
and after (``postfix``) pytest-html's own summary; :mod:`experiments.report` hands it to
pytest-html.  :func:`standalone` wraps the same sections in a page of their own, so the
report can be rebuilt from a results document without running the tests::

    python -m experiments.report_page reports/results.json -o /tmp/report.html

re-derives everything the current code computes from the measurements (comparisons with
Holm adjustment, conclusions, selection and its margin; :func:`experiments.results.rebuild`),
adds the reference baselines (cached in ``reports/references.json``) and writes the page.
Nothing is trained, verified or timed: the runs, benchmarks and verification numbers are
those of the saved document.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import report_backward
from . import report_html as html
from .families import all_families

VIEWPORT = '<meta name="viewport" content="width=device-width, initial-scale=1">'


def examples(doc: dict) -> dict:
    """Misclassified test items of each family's selected model, as HTML (loads the data)."""
    out = {}
    for fam in all_families():
        sel = doc["selected"].get(fam.name)
        if sel and sel.get("misclassified"):
            splits = fam.load_data()
            out[fam.name] = html.misclassified_html(fam.name, sel, splits.x_test, splits.class_names)
    return out


def sections(doc: dict, examples_html: dict, backward: list[dict] | None = None) -> tuple[list[str], list[str]]:
    """(prefix, postfix) HTML; ``backward`` None leaves the backward-pass section out (a saved
    results document does not carry its records)."""
    fams = all_families()
    titles = {f.name: f.title for f in fams}
    prefix = [html.STYLE, '<div class="scratchnet">',
              "<h2>scratchnet: Keras studies, verified against a from-scratch NumPy forward pass</h2>",
              html.answer_section(doc, titles), html.toc(doc, titles), "</div>"]
    body = ['<div class="scratchnet">', html.design_section(doc, fams)]
    refs = doc.get("references") or {}
    from .references import best
    for fam in fams:
        studies = [s for s in doc["studies"] if s["family"] == fam.name]
        if not studies:
            continue
        body.append(html.family_intro(fam.name, fam.title, doc))
        for study in studies:
            vs = [v for v in doc["variants"] if v["family"] == study["family"] and v["study"] == study["study"]]
            body.append(html.study_section(study, vs, fam.title, best(refs.get(fam.name))))
    body += [html.selected_section(doc, titles, examples_html),
             html.verification_section(doc, doc.get("layer_divergence", [])),
             html.recipe_section(doc, titles),
             html.benchmark_section(doc.get("benchmarks", []), doc.get("environment", {}).get("blas")),
             report_backward.backward_section(list(backward), doc.get("training_benchmarks", []))
             if backward is not None else "",
             html.provenance_section(doc["environment"], doc), "</div>"]
    return prefix, body


def tests_toggle(n_tests: int | None = None) -> str:
    """The pytest-html results table is hidden until this box is ticked (CSS only)."""
    what = f"the {n_tests} test results" if n_tests else "the test results"
    return ('<div class="tests-toggle scratchnet" id="tests"><b>The test session.</b> '
            f'<label><input type="checkbox" id="sn-show-tests"> show {what} and pytest\'s environment '
            "(pytest-html's table; each row's log collapsed)</label></div>")


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


def rerender(results_path: Path, out: Path, with_examples: bool = True, with_references: bool = True) -> dict:
    from . import references, results
    doc = results.rebuild(json.loads(Path(results_path).read_text()))
    if with_references:
        doc["references"] = references.for_families(all_families())
    page = standalone(doc, examples(doc) if with_examples else {})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return doc


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.report_page", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", default="reports/results.json")
    ap.add_argument("-o", "--out", required=True, help="where to write the page")
    ap.add_argument("--json-out", default=None, help="also write the rebuilt results document here")
    ap.add_argument("--no-examples", action="store_true", help="skip the misclassified items (no data loading)")
    ap.add_argument("--no-references", action="store_true", help="skip the reference baselines")
    a = ap.parse_args(argv)
    doc = rerender(Path(a.results), Path(a.out), not a.no_examples, not a.no_references)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(doc, indent=1, default=str))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
