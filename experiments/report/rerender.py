"""The report rebuilt from a saved ``results.json``, without running the tests::

    python -m experiments.report.rerender reports/results.json -o /tmp/report.html

re-derives everything the current code computes from the measurements (comparisons with
Holm adjustment, conclusions, selection and its margin; :func:`experiments.results.rebuild`),
adds the reference baselines (cached in ``reports/references.json``) and writes the page
(:func:`experiments.report.page.standalone`).  Nothing is trained, verified or timed: the
runs, benchmarks and verification numbers are those of the saved document.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .. import head_choice, references, results
from ..families import all_families
from .page import examples, standalone


def rerender(results_path: Path, out: Path, with_examples: bool = True, with_references: bool = True) -> dict:
    doc = results.rebuild(json.loads(Path(results_path).read_text()))
    doc["head_choice"] = head_choice.load()  # the text heads' validation evidence, as committed
    if with_references:
        doc["references"] = references.for_families(all_families())
    page = standalone(doc, examples(doc) if with_examples else {})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return doc


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.report.rerender",
                                 description=__doc__.split("\n\n")[0].rstrip(":"))
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
