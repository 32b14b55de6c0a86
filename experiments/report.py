"""Report plugin: study figures, tables, conclusions, verification and benchmarks.

Tests hand their measurements over with :func:`record`, which stores them in the test's
``user_properties`` (these also travel from pytest-xdist workers); this plugin gathers them on the
controlling process and, when ``--html`` is given, adds the scratchnet sections to
the pytest-html report and writes ``results.json`` beside it.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
import platform
import subprocess
from pathlib import Path

import pytest

from .conclusions import conclude
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
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+uncommitted changes" if dirty else "")
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
    return {"versions": versions, "platform": platform.platform(), "cpus": os.cpu_count(),
            "profile": config.scratchnet_profile, "git_commit": _git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "data_dir": os.environ.get(DATA_DIR_ENV) or "download"}


RESULT_FIELDS = ("study", "family", "variant", "hyperparameters", "profile", "epochs", "history",
                 "keras_f1", "scratch_f1", "agreement", "max_abs_diff", "n_test", "params",
                 "train_seconds")


def results_document(config) -> dict:
    variants = _by_kind("variant")
    return {"environment": environment(config),
            "datasets": {r["family"]: {"source": r["data_source"], "splits": r["split_sizes"]}
                         for r in variants},
            "seeds": {r["family"]: r["seed"] for r in variants},
            "variants": variants,
            "benchmarks": _by_kind("bench"),
            "layer_divergence": _by_kind("layers")}


def pytest_sessionfinish(session):
    config = session.config
    htmlpath = getattr(config.option, "htmlpath", None)
    if hasattr(config, "workerinput") or not htmlpath or not _by_kind("variant"):
        return
    out = Path(htmlpath).parent / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results_document(config), indent=1, default=str))
    os.replace(tmp, out)


# ----------------------------------------------------------------------------- HTML

def _figure_html(fig, alt: str) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def loss_figure(title: str, rows: list[dict]) -> str:
    """Train (left) and validation (right) loss per epoch, one colour per variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for i, r in enumerate(rows):
        epochs = range(1, len(r["history"]["loss"]) + 1)
        axes[0].plot(epochs, r["history"]["loss"], color=f"C{i}", marker="o", ms=3, label=r["label"])
        axes[1].plot(epochs, r["history"]["val_loss"], color=f"C{i}", marker="s", ms=3, label=r["label"])
    for ax, which in zip(axes, ("training", "validation")):
        ax.set(title=f"{which} loss", xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("sparse categorical cross-entropy")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    return _figure_html(fig, f"{title} loss curves")


def confusion_figure(title: str, matrix: list, class_names) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(m), 0.8 + 0.5 * len(m)))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > m.max() / 2 else "black")
    ax.set_xticks(range(len(m)), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(m)), class_names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _figure_html(fig, title)


def _table(headers, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="scratchnet"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _study_rows(study_records: list[dict]) -> list[dict]:
    return [{"label": r["label"], "value": r["value"], "f1": r["keras_f1"],
             "accuracy": r["keras_accuracy"], "n_test": r["n_test"], "history": r["history"],
             "best_val_loss": min(r["history"]["val_loss"])} for r in study_records]


def study_section(family, study, recs: list[dict]) -> str:
    # declaration order; values that crossed from an xdist worker arrive as lists
    recs = sorted(recs, key=lambda r: study.values.index(_tuple(r["value"])))
    rows = _study_rows(recs)
    table = _table(
        ["variant", study.param, "params", "epochs", "train time", "test macro-F1 (Keras)",
         "test macro-F1 (scratch)", "classes predicted", "argmax agreement", "max|Δp|", "best val loss"],
        [[html.escape(r["variant"]), html.escape(str(r["value"])), f"{r['params']:,}", r["epochs"],
          f"{r['train_seconds']:.0f} s", f"{r['keras_f1']:.4f}", f"{r['scratch_f1']:.4f}",
          f"{r['predicted_classes']}/{len(r['class_names'])}", f"{r['agreement']:.2%}", f"{r['max_abs_diff']:.2e}", f"{min(r['history']['val_loss']):.4f}"]
         for r in recs])
    return (f'<h3 id="{family.name}-{study.name}">{html.escape(family.title)}: {html.escape(study.title)}</h3>'
            + loss_figure(study.title, rows) + table
            + f'<p class="conclusion"><b>Conclusion.</b> {html.escape(conclude(study.title, rows))}</p>')


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


def benchmark_section() -> str:
    benches = _by_kind("bench")
    if not benches:
        return "<p>No benchmarks ran in this session (select them with <code>-m bench</code>).</p>"
    rows = []
    for fam in sorted({b["family"] for b in benches}):
        by_impl = {b["impl"]: b for b in benches if b["family"] == fam}
        k, s = by_impl.get("keras"), by_impl.get("scratch")
        ratio = f"{s['mean'] / k['mean']:.2f}×" if k and s else "n/a"
        any_b = k or s
        rows.append([fam, html.escape(any_b["model"]), any_b["n_items"],
                     f"{k['mean']:.3f} s" if k else "n/a", f"{s['mean']:.3f} s" if s else "n/a", ratio,
                     any_b.get("rounds", "")])
    return _table(["family", "model", "items", "Keras predict (mean)", "scratch predict (mean)",
                   "scratch / Keras", "rounds"], rows)


def verification_section() -> str:
    variants = _by_kind("variant")
    models: dict[str, dict] = {}
    for r in variants:
        m = models.setdefault(r["model"], {**r, "variants": []})
        m["variants"].append(r["variant"])
    worst = max((r["max_abs_diff"] for r in variants), default=float("nan"))
    n_pass = sum(1 for m in models.values() if m["passed"])
    out = [f"<p>{len(models)} distinct models behind {len(variants)} variants; "
           f"{n_pass} of {len(models)} pass (same argmax on every test item, max|Δp| ≤ 1e-5, "
           f"equal macro-F1 to 4 decimals). Worst max|Δp| over all models: {worst:.2e}.</p>"]
    out.append(_table(["model file", "variants", "test items", "agreement", "max|Δp|", "passed"],
                      [[html.escape(name), html.escape(", ".join(m["variants"])), m["n_test"],
                        f"{m['agreement']:.2%}", f"{m['max_abs_diff']:.2e}", "yes" if m["passed"] else "NO"]
                       for name, m in models.items()]))
    for layers in _by_kind("layers"):
        out.append(f"<h4>Per-layer divergence: {html.escape(layers['model'])} "
                   f"(first {layers['n_items']} test items)</h4>")
        out.append(_table(["layer", "scratch class", "output shape", "max |scratch − Keras|"],
                          [[html.escape(r["layer"]), r["class"], r["shape"],
                            "n/a" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"]
                           for r in layers["rows"]]))
    return "".join(out)


def header_section(config) -> str:
    env = environment(config)
    variants = _by_kind("variant")
    data = {}
    for r in variants:
        data.setdefault(r["family"], (r["data_source"], r["split_sizes"], r["seed"]))
    rows = [["Python / TensorFlow / Keras / NumPy",
             " / ".join(env["versions"].get(k, "?") for k in ("python", "tensorflow", "keras", "numpy"))],
            ["platform", f"{env['platform']}, {env['cpus']} CPUs"],
            ["profile", env["profile"]], ["git commit", env["git_commit"]], ["date (UTC)", env["date"]]]
    rows += [[f"data: {fam}", f"{html.escape(src)}; splits {sizes}; seed {seed}"]
             for fam, (src, sizes, seed) in data.items()]
    return _table(["", ""], rows)


def training_cost_section() -> str:
    """Wall time spent training each family's distinct models (from their metadata)."""
    models: dict[str, dict] = {}
    for r in _by_kind("variant"):
        models.setdefault(r["model"], r)
    rows, total = [], 0.0
    for fam in sorted({m["family"] for m in models.values()}):
        ms = [m for m in models.values() if m["family"] == fam]
        secs = sum(m["train_seconds"] for m in ms)
        total += secs
        rows.append([fam, len(ms), sum(m["epochs"] for m in ms), f"{secs / 60:.1f} min"])
    rows.append(["all", len(models), sum(m["epochs"] for m in models.values()), f"{total / 60:.1f} min"])
    return _table(["family", "distinct models", "epochs run", "training wall time"], rows)


def confusion_section() -> str:
    variants = _by_kind("variant")
    out = []
    for fam in all_families():
        recs = [r for r in variants if r["family"] == fam.name]
        if not recs:
            continue
        best = min(recs, key=lambda r: min(r["history"]["val_loss"]))  # chosen on validation
        out.append(confusion_figure(
            f"{fam.name}: {best['variant']} (lowest val loss; test macro-F1 {best['keras_f1']:.4f})",
            best["confusion"], best["class_names"]))
    return "".join(out)


STYLE = """<style>
table.scratchnet{border-collapse:collapse;margin:6px 0 12px;font-size:12px}
table.scratchnet td,table.scratchnet th{border:1px solid #ccc;padding:3px 7px;text-align:right}
table.scratchnet td:first-child,table.scratchnet th:first-child{text-align:left}
p.conclusion{max-width:900px;background:#f4f7fb;padding:6px 10px;border-left:3px solid #4a7}
</style>"""


def pytest_html_results_summary(prefix, summary, postfix, session):
    variants = _by_kind("variant")
    parts = [STYLE, "<h2>scratchnet: Keras studies verified against a from-scratch NumPy forward pass</h2>",
             header_section(session.config)]
    if not variants:
        parts.append("<p>No study model was verified in this session, so there are no study "
                     "sections (run without <code>-m</code> filters, or with a family marker).</p>")
    for fam in all_families():
        for study in fam.studies:
            recs = [r for r in variants if r["family"] == fam.name and r["study"] == study.name]
            if recs:
                parts.append(study_section(fam, study, recs))
    parts += ["<h2>Verification summary</h2>", verification_section(),
              "<h2>Training cost</h2>", training_cost_section(),
              "<h2>Benchmarks: forward pass over the whole test split</h2>", benchmark_section(),
              "<h2>Confusion matrices (best model per family, chosen on validation loss)</h2>",
              confusion_section()]
    prefix.extend(parts)
