"""The results document (``results.json``): the recorded runs summarized (:mod:`experiments.results`),
with the environment, datasets, seeds, reference baselines, benchmarks and layer tables."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

from .. import head_choice, results
from ..data import DATA_DIR_ENV
from ..families import all_families
from ..runs import PROJECT_ROOT
from ..backends import matrix as backend_matrix
from .records import by_kind


def _git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        # the report and results.json are being rewritten by this very run: not "changes"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)reports/report.html", ":(exclude)reports/results.json"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
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
        doc = results.build(by_kind("run"), config.scratchnet_profile)
        _DOC.update(environment=environment(config),
                    datasets={v["family"]: {"source": v["data_source"], "splits": v["split_sizes"]}
                              for v in doc["variants"] if v["runs"]},
                    seeds={fam.name: {"seeds": list(fam.recipe[config.scratchnet_profile]["seeds"]),
                                      "baseline_seeds": list(fam.seeds(config.scratchnet_profile, fam.baseline))}
                           for fam in all_families()},
                    **doc, references=_references(), head_choice=head_choice.load(),
                    benchmarks=by_kind("bench"), training_benchmarks=by_kind("bench_train"),
                    layer_divergence=by_kind("layers"), backends=backend_matrix(by_kind("backend")))
    return _DOC


def _references() -> dict:
    """Reference baselines per family (cached in reports/references.json; see
    :mod:`experiments.references`); a failure is reported in the document, not raised."""
    from .. import references
    try:
        return references.for_families(all_families())
    except Exception as exc:  # noqa: BLE001 - the report must still be written
        return {"error": f"{type(exc).__name__}: {exc}"}


def write_results(session) -> None:
    """``results.json`` beside the ``--html`` report, on the controlling process, when runs
    were recorded (written to a temporary file, then renamed)."""
    config = session.config
    htmlpath = getattr(config.option, "htmlpath", None)
    if hasattr(config, "workerinput") or not htmlpath or not by_kind("run"):
        return
    out = Path(htmlpath).parent / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results_document(config), indent=1, default=str))
    os.replace(tmp, out)
