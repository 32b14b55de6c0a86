"""The report's first screen: the forest plot of every study's comparisons beside the
selected configurations against the reference baselines, before any prose."""
import json
import re
from pathlib import Path

import pytest
from matplotlib.colors import to_rgba

from experiments import figures
from experiments.report.page import standalone
from experiments.report.sections.first_screen import first_screen
from experiments.stats import mean_interval, pairwise

ROOT = Path(__file__).resolve().parent.parent
TITLES = {"cnn": "CNN", "lstm": "LSTM", "rnn": "SimpleRNN"}


def _variant(family, study, vid, label, f1s):
    return {"variant": vid, "label": label, "family": family, "study": study, "runs": [
        {"keras_f1": f} for f in f1s]}


def _doc(with_refs=True):
    """Two families: an LSTM study with one clear effect and one null comparison, and a
    CNN study with one comparison; selected models and references."""
    values = {"lstm-units-32": [.70, .71, .72], "lstm-units-64": [.60, .61, .62],
              "lstm-units-128": [.705, .69, .725], "cnn-pool-max": [.79, .80, .795],
              "cnn-pool-avg": [.78, .80, .79]}
    variants = [_variant("lstm", "units", "lstm-units-32", "32 units", values["lstm-units-32"]),
                _variant("lstm", "units", "lstm-units-64", "64 units", values["lstm-units-64"]),
                _variant("lstm", "units", "lstm-units-128", "128 units", values["lstm-units-128"]),
                _variant("cnn", "pool", "cnn-pool-max", "max pooling", values["cnn-pool-max"]),
                _variant("cnn", "pool", "cnn-pool-avg", "average pooling", values["cnn-pool-avg"])]
    lstm_ids = ["lstm-units-32", "lstm-units-64", "lstm-units-128"]
    studies = [{"family": "lstm", "study": "units", "title": "Units",
                "comparisons": [c.as_dict() for c in pairwise(lstm_ids, values)]},
               {"family": "cnn", "study": "pool", "title": "Pooling",
                "comparisons": [c.as_dict() for c in pairwise(["cnn-pool-max", "cnn-pool-avg"], values)]}]
    selected = {f: {"f1_mean": sum(values[v]) / 3, "f1_ci95": mean_interval(values[v]), "n_runs": 3}
                for f, v in (("lstm", "lstm-units-32"), ("cnn", "cnn-pool-max"))}
    refs = {"lstm": {"models": [{"name": "majority class", "val_macro_f1": .18, "test_macro_f1": .18},
                                {"name": "TF-IDF + logistic regression", "val_macro_f1": .79,
                                 "test_macro_f1": .756}]},
            "cnn": {"models": [{"name": "logistic regression on pixels", "val_macro_f1": .41,
                                "test_macro_f1": .405}]}} if with_refs else {}
    return {"variants": variants, "studies": studies, "selected": selected, "references": refs,
            "coverage": {}}


@pytest.fixture
def captured(monkeypatch):
    """The matplotlib figures the report would embed, kept open for inspection."""
    figs = []

    def keep(fig, alt, width=None):
        figs.append(fig)
        return f'<img alt="{alt}">'
    monkeypatch.setattr(figures, "img", keep)
    yield figs
    plt = figures._plt()
    for f in figs:
        plt.close(f)


@pytest.fixture
def no_png(monkeypatch):
    """Figures are built (their code runs) but not rendered to PNG: a whole page in seconds."""
    def close(fig, alt, width=None):
        figures._plt().close(fig)
        return f'<img alt="{alt}">'
    monkeypatch.setattr(figures, "img", close)


# ----------------------------------------------------------------------------- labels and rows

@pytest.mark.parametrize("b, a, expected", [
    ("3 conv layers", "2 conv layers", "3 − 2 conv layers"),
    ("filters 48-96-192", "filters 16-32-64", "filters 48-96-192 − 16-32-64"),
    ("average pooling", "max pooling", "average − max pooling"),
    ("2 layers", "1 layer", "2 layers − 1 layer"),
    ("bidirectional", "unidirectional", "bidirectional − unidirectional"),
    ("same words", "same words", "same words − same words"),
    ("filters 16-32-64", "kernels 3x3", "filters 16-32-64 − kernels 3x3"),
])
def test_difference_labels_say_shared_words_once(b, a, expected):
    assert figures.difference_label(b, a) == expected


def test_forest_rows_read_later_minus_earlier_with_the_interval_negated():
    doc = _doc()
    labels = {v["variant"]: v["label"] for v in doc["variants"]}
    rows = figures._forest_rows([doc["studies"][0]], labels)
    comps = doc["studies"][0]["comparisons"]
    assert [r["label"] for r in rows] == ["64 − 32 units", "128 − 32 units", "128 − 64 units"]
    for r, c in zip(rows, comps):
        assert r["diff"] == pytest.approx(-c["mean_diff"])
        assert (r["low"], r["high"]) == pytest.approx((-c["ci_high"], -c["ci_low"]))
        assert r["low"] <= r["diff"] <= r["high"]
        assert r["effect"] is c["significant"]
    # 64 units is 0.10 below 32 units on every seed: an effect; 128 vs 32 is noise
    assert rows[0]["effect"] and rows[0]["high"] < 0 and not rows[1]["effect"]


# ----------------------------------------------------------------------------- the figures

def test_forest_plot_has_one_panel_per_family_a_zero_line_and_filled_effects(captured):
    doc = _doc()
    labels = {v["variant"]: v["label"] for v in doc["variants"]}
    panels = [("LSTM", [doc["studies"][0]]), ("CNN", [doc["studies"][1]])]
    figures.forest_figure(panels, labels)
    fig = captured[-1]
    assert len(fig.axes) == 2
    for ax, (_, studies) in zip(fig.axes, panels):
        rows = figures._forest_rows(studies, labels)
        zero = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [0, 0]]
        assert zero, "no zero line"
        points = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
        assert len(points) == len(rows)
        for ln, r in zip(points, rows):
            assert ln.get_xdata()[0] == pytest.approx(r["diff"])
            filled = to_rgba(ln.get_markerfacecolor()) != to_rgba("white")
            assert filled is r["effect"]
        assert [t.get_text() for t in ax.get_yticklabels()] == [r["label"] for r in rows]


def test_selected_against_references_shows_the_interval_and_points_off_scale_at_the_edge(captured):
    doc = _doc()
    panels = [("LSTM", doc["selected"]["lstm"], doc["references"]["lstm"]["models"])]
    figures.selected_vs_references_figure(panels)
    ax = captured[-1].axes[0]
    lo, hi = ax.get_xlim()
    sel = doc["selected"]["lstm"]
    bars = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 2]
    assert any(tuple(b.get_xdata()) == pytest.approx(sel["f1_ci95"]) for b in bars)
    assert lo <= sel["f1_ci95"][0] and sel["f1_ci95"][1] <= hi
    # TF-IDF (0.756) is near the selected model: a square inside the range; the majority
    # class (0.18) is far below: a left-pointing triangle on the left edge, value written
    square = [ln for ln in ax.get_lines() if ln.get_marker() == "s"]
    assert [ln.get_xdata()[0] for ln in square] == [pytest.approx(.756)]
    edge = [ln for ln in ax.get_lines() if ln.get_marker() == "<"]
    assert len(edge) == 1 and edge[0].get_xdata()[0] == pytest.approx(lo) and lo > .18
    assert "0.180" in [t.get_text() for t in ax.texts]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "selected (n=3)", "majority class", "TF-IDF + logistic regression"]


# ----------------------------------------------------------------------------- the section and the page

def test_the_first_screen_counts_comparisons_and_effects_and_stays_short():
    doc = _doc()
    html = first_screen(doc, TITLES)
    n = sum(len(s["comparisons"]) for s in doc["studies"])
    n_eff = sum(c["significant"] for s in doc["studies"] for c in s["comparisons"])
    assert html.count("<img") == 2
    assert f"all {n} comparisons" in html and f"{n_eff} are effects" in html
    paragraphs = re.findall(r"<p[^>]*>(.*?)</p>", html)
    assert len(paragraphs) == 2 and all(len(p) < 400 for p in paragraphs), \
        "the sentences beneath the figure must stay short"
    items = re.findall(r"<li>(.*?)</li>", html)
    assert len(items) == len(doc["selected"]) and all(len(i) < 160 for i in items)
    # the LSTM reference (0.756) lies above the selected model's whole interval
    assert "TF-IDF + logistic regression 0.756, above that interval" in html


def _committed():
    from experiments.results import rebuild
    return rebuild(json.loads((ROOT / "reports" / "results.json").read_text()))


def test_the_page_opens_with_the_figure_before_any_prose(no_png):
    page = standalone(_committed(), {})
    first_img = page.index("<img")
    assert page.index('id="first-screen"') < first_img < page.index("The answer, in short")
    assert "Forest plot" in page[:page.index("The answer, in short")]


def test_no_comparisons_means_no_first_screen():
    doc = _doc(with_refs=False)
    for s in doc["studies"]:
        s["comparisons"] = []
    assert first_screen(doc, TITLES) == ""


def test_the_committed_results_give_a_forest_row_per_comparison(captured):
    """On the committed results.json, rebuilt by the current code: one forest row per
    comparison of every study, effects as the studies' Holm adjustment says."""
    doc = _committed()
    html = first_screen(doc, TITLES)
    forest = captured[0]
    rows = sum(len([ln for ln in ax.get_lines() if ln.get_marker() == "o"]) for ax in forest.axes)
    assert rows == sum(len(s["comparisons"]) for s in doc["studies"])
    assert len(forest.axes) == len({s["family"] for s in doc["studies"] if s["comparisons"]})
    n_eff = sum(c["significant"] for s in doc["studies"] for c in s["comparisons"])
    assert f"{n_eff} are effects" in html
