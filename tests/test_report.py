"""The report's pieces on synthetic results: selection margins, reference baselines,
the ★ on the validation-selected row, figures, page furniture and pytest-html's table."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from experiments import references
from experiments.data import Splits
from experiments.report.markup import table
from experiments.report.names import config_text
from experiments.report.page import add_viewport, standalone
from experiments.report.sections.studies import study_section
from experiments.results import selection_margin
from experiments.stats import summarize

ROOT = Path(__file__).resolve().parent.parent


def variant(vid, label, f1s, val_values, metric="val_accuracy", family="rnn", hp=None, study="units", value=1):
    runs = [{"seed": i + 1, "keras_f1": f, "keras_accuracy": f, "best_epoch": 2, "epochs": 3,
             "history": {"loss": [1.0, 0.8, 0.7], "val_loss": [1.0, 0.9, 0.95], "val_accuracy": [0.5, v, v]},
             "flags": {"near_untrained": False, "collapsed": False, "overfit": False, "at_epoch_limit": False}}
            for i, (f, v) in enumerate(zip(f1s, val_values))]
    s, vs = summarize(f1s), summarize(val_values)
    return {"variant": vid, "label": label, "family": family, "study": study, "value": value,
            "hyperparameters": hp or {"units": vid}, "runs": runs, "seeds_planned": [1, 2, 3][:len(f1s)],
            "f1_mean": s.mean, "f1_std": s.as_dict()["std"], "accuracy_mean": s.mean, "accuracy_std": s.as_dict()["std"],
            "params": 100, "validation": {"metric": metric, "mean": vs.mean, "std": vs.as_dict()["std"],
                                          "values": list(val_values)},
            "split_sizes": {"train": 500, "val": 100, "test": 400}}


# ----------------------------------------------------------------------------- selection margins

def test_a_lead_under_one_validation_item_is_a_tie():
    best = variant("a", "A", [.7, .7], [.742, .738])
    runner = variant("b", "B", [.72, .72], [.736, .736])
    m = selection_margin(best, runner, 100)
    assert m["difference"] == pytest.approx(0.004) and m["one_item"] == pytest.approx(0.01)
    assert m["tie"] and "less than one validation item" in m["why"]
    # exactly one item (69 against 68 of 100, as float32 accuracies) is not under one item
    one = selection_margin(variant("a", "A", [.7], [np.float32(0.69)]), variant("b", "B", [.7], [np.float32(0.68)]), 100)
    assert not one["tie"]


def test_a_lead_under_the_seed_sd_is_a_tie_and_a_clear_lead_is_not():
    best = variant("a", "A", [.7, .7], [.80, .90])      # SD 0.071
    runner = variant("b", "B", [.7, .7], [.80, .80])
    m = selection_margin(best, runner, 100)
    assert m["tie"] and "seed SD" in m["why"] and "one validation item" not in m["why"]
    clear = selection_margin(variant("a", "A", [.7, .7], [.85, .86]), runner, 100)
    assert not clear["tie"] and clear["why"] == ""
    # validation loss: no "one item" criterion, the SD one still applies
    loss = selection_margin(variant("a", "A", [.7, .7], [.60, .70], metric="val_loss"),
                            variant("b", "B", [.7, .7], [.66, .66], metric="val_loss"), 10000)
    assert loss["one_item"] is None and loss["tie"]


def test_the_star_marks_the_validation_choice_not_the_best_test_score():
    chosen = variant("v-a", "32 units", [.70, .71], [.80, .81])
    best_test = variant("v-b", "64 units", [.80, .81], [.70, .71])
    study = {"family": "rnn", "study": "units", "title": "Units", "comparisons": [], "conclusion": "c"}
    page = study_section(study, [chosen, best_test], "RNN")
    assert "★ 32 units" in page and "★ 64 units" not in page
    row = page[page.index('<tr class="selected">'):]
    assert row.index("32 units") < row.index("</tr>")
    assert "validation split selects" in page


def test_comparison_table_labels_the_interval_per_comparison_and_shows_holm():
    a, b = variant("v-a", "A", [.70, .71, .72], [.8, .8, .8]), variant("v-b", "B", [.60, .61, .62], [.7, .7, .7])
    from experiments.stats import pairwise
    comps = [c.as_dict() for c in pairwise(["v-a", "v-b"], {"v-a": [.70, .71, .72], "v-b": [.60, .61, .62]})]
    page = study_section({"family": "rnn", "study": "units", "title": "Units", "comparisons": comps,
                          "conclusion": "c"}, [a, b], "RNN")
    assert "95% interval, this comparison alone" in page and "Holm-adjusted" in page and "Welch df" in page
    assert f"{comps[0]['df']:.1f}" in page


def test_text_columns_are_left_aligned_and_numbers_right_aligned():
    t = table(["name", "score"], [["Makanannya enak sekali 12", "0.712 ± 0.010"], ["b", "1.50×"]])
    assert '<td>Makanannya' in t and '<td class=num>0.712 ± 0.010</td>' in t and '<th class=num>score' in t
    assert t.startswith('<div class="scroll">')


def test_recurrent_layer_counts_read_as_words():
    from experiments.families._text import TEXT_STUDIES
    layers = next(s for s in TEXT_STUDIES if s.param == "layers")
    assert [layers.describe(v) for v in (1, 2, 3)] == ["1 layer", "2 layers", "3 layers"]
    assert config_text("rnn", {"layers": 1, "units": 64, "bidirectional": True}) == \
        "1 layer, 64 units, bidirectional"


# ----------------------------------------------------------------------------- reference baselines

def _text_splits():
    rng = np.random.default_rng(0)
    words = {0: "buruk jelek kecewa", 1: "biasa saja lumayan", 2: "enak bagus mantap"}

    def make(n):
        y = rng.integers(0, 3, n)
        x = np.array([" ".join(rng.choice(words[c].split(), 3)) + " " + " ".join(rng.choice(["dan", "ini", "itu"], 2))
                      for c in y], dtype=object)
        return x, y
    (xt, yt), (xv, yv), (xs, ys) = make(120), make(40), make(60)
    return Splits(xt, yt, xv, yv, xs, ys, ("negative", "neutral", "positive"), "synthetic", "fp-text")


def test_text_references_choose_on_validation_and_score_on_test():
    splits = _text_splits()
    refs = references.compute(splits)
    names = [m["name"] for m in refs["models"]]
    assert names == ["majority class", "TF-IDF + logistic regression", "TF-IDF + linear SVM"]
    tfidf = refs["models"][1]
    assert tfidf["test_macro_f1"] > 0.9 and tfidf["chosen"]["features"] in references.SPEC["text"]["features"]
    assert refs["models"][0]["test_macro_f1"] < 0.4
    assert references.best(refs)["name"] != "majority class"


def test_image_reference_on_pooled_pixels():
    rng = np.random.default_rng(1)

    def make(n):
        y = rng.integers(0, 3, n)
        x = rng.random((n, 8, 8, 3)).astype("float32") * 0.2
        x[..., 0] += (y == 0)[:, None, None] * 0.8
        x[..., 1] += (y == 1)[:, None, None] * 0.8
        return x, y
    (xt, yt), (xv, yv), (xs, ys) = make(90), make(30), make(30)
    splits = Splits(xt, yt, xv, yv, xs, ys, ("a", "b", "c"), "synthetic", "fp-img")
    assert references.pooled_pixels(xt, 2).shape == (90, 4 * 4 * 3)
    refs = references.compute(splits)
    assert refs["kind"] == "image" and refs["models"][1]["test_macro_f1"] > 0.9
    side = 8 // references.SPEC["image"]["pool"]
    assert f"{side}x{side}x3 = {side * side * 3}" in refs["models"][1]["chosen"]["features"]


def test_references_are_cached_atomically_and_never_recomputed(tmp_path):
    splits = _text_splits()
    path = tmp_path / "references.json"
    calls = []

    def fake(s):
        calls.append(1)
        return {"models": [{"name": "majority class", "val_macro_f1": 0.2, "test_macro_f1": 0.1,
                            "test_accuracy": 0.3}]}
    first = references.cached(splits, path, fake)
    again = references.cached(splits, path, lambda s: pytest.fail("recomputed a cached reference"))
    assert first == again and len(calls) == 1
    assert list(tmp_path.iterdir()) == [path]       # no temporary file left behind
    assert references.cache_key(splits) in json.loads(path.read_text())
    other = Splits(*list(splits.__dict__.values())[:8], fingerprint="other-data")
    references.cached(other, path, fake)
    assert len(calls) == 2 and len(json.loads(path.read_text())) == 2


def test_reference_sentence_says_which_side_wins():
    from experiments.conclusions import reference_sentence
    sel = {"f1_mean": 0.78, "f1_ci95": (0.75, 0.81), "n_runs": 5}
    refs = {"models": [{"name": "majority class", "val_macro_f1": 0.2, "test_macro_f1": 0.18, "test_accuracy": 0.4},
                       {"name": "TF-IDF + logistic regression", "val_macro_f1": 0.8, "test_macro_f1": 0.84,
                        "test_accuracy": 0.85}]}
    text = reference_sentence("LSTM", sel, refs)
    assert "TF-IDF + logistic regression (chosen on validation) scores 0.840" in text
    assert "above the whole 95% interval" in text and "The reference scores better" in text
    assert "majority class scores 0.180" in text


# ----------------------------------------------------------------------------- figures

def test_figures_are_shown_at_their_natural_size():
    from experiments import figures
    plt = figures._plt()
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.plot([1, 2])
    tag = figures.img(fig, "x")
    width = int(tag.split("width:")[1].split("px")[0])
    assert 400 < width < 520   # ~5 in at 96 px per inch (tight bbox trims a little)


def test_curves_mark_restored_epochs_and_stop_the_mean_at_the_first_stop():
    from experiments import figures
    short = variant("a", "A", [.7, .7], [.8, .8])
    short["runs"][1]["history"] = {k: v + [v[-1]] * 2 for k, v in short["runs"][1]["history"].items()}
    tag = figures.loss_figure("T", [short], "val_accuracy")
    assert tag.startswith("<img") and "training and validation curves" in tag
    dots = figures.f1_dot_figure("T", [short, variant("b", "B", [.6, .65], [.7, .7])], "a",
                                 {"name": "ref", "test_macro_f1": 0.66})
    assert dots.startswith("<img")


# ----------------------------------------------------------------------------- page furniture

def test_the_page_has_a_viewport_tag_once():
    page = "<html><head><meta charset='utf-8'/></head><body></body></html>"
    once = add_viewport(page)
    assert once.count('name="viewport"') == 1 and add_viewport(once) == once
    assert standalone({"variants": [], "studies": [], "selected": {}, "coverage": {},
                       "environment": {"versions": {}, "platform": "p", "cpus": 1, "profile": "full",
                                       "git_commit": "c", "date": "d"}}, {}).count('name="viewport"') == 1


def test_pytest_html_rows_keep_reasons_not_tuples_or_retracing_noise():
    from experiments.report.tests_table import clean_log
    skipped = SimpleNamespace(skipped=True, passed=False, longrepr=("/x/tests/t.py", 92, "Skipped: not trained yet"))
    data = ["('/x/tests/t.py', 92, 'Skipped: not trained yet')"]
    clean_log(skipped, data)
    assert data == ["Skipped: not trained yet"]
    passed = SimpleNamespace(skipped=False, passed=True, longrepr=None)
    data = ["---- Captured stderr call ----\nWARNING: 5 out of the last 5 calls triggered tf.function retracing"]
    clean_log(passed, data)
    assert "retracing" not in "".join(data)
    failed = SimpleNamespace(skipped=False, passed=False, longrepr="E assert 1 == 2")
    data = ["E assert 1 == 2\nW tf.function retracing warning\nkeep me"]
    clean_log(failed, data)
    assert data == ["E assert 1 == 2\nkeep me"]


def test_the_committed_results_rebuild_with_holm_and_margins():
    """The saved results.json re-renders with the current statistics (nothing retrained)."""
    from experiments.results import rebuild
    path = ROOT / "reports" / "results.json"
    if not path.exists():
        pytest.skip("no results.json")
    doc = rebuild(json.loads(path.read_text()))
    comps = [c for s in doc["studies"] for c in s["comparisons"] if c["p_value"] is not None]
    assert comps and all(c["p_holm"] >= c["p_value"] - 1e-12 for c in comps)
    assert all(c["significant"] == (c["p_holm"] < 0.05) for c in comps)
    for sel in doc["selected"].values():
        assert sel["margin"] is None or {"tie", "difference", "runner_up"} <= set(sel["margin"])
    assert not any("layer(s)" in v["label"] for v in doc["variants"])


# ----------------------------------------------------------------------------- benchmark comparisons

def test_benchmark_compare_fails_a_saved_run_that_got_slower(tmp_path):
    """The regression check the README documents: save a run with --benchmark-autosave,
    then --benchmark-compare --benchmark-compare-fail=median:10% fails when the median
    of a later run is more than 10% slower."""
    (tmp_path / "test_speed.py").write_text(textwrap.dedent("""
        import os, time
        def test_speed(benchmark):
            delay = float(os.environ.get("DELAY", "0.002"))
            benchmark.pedantic(time.sleep, args=(delay,), rounds=5, iterations=1)
    """))
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:html",
            "--rootdir", str(tmp_path), "-c", str(tmp_path / "none.ini"), str(tmp_path / "test_speed.py"),
            f"--benchmark-storage=file://{tmp_path / 'bench'}"]
    (tmp_path / "none.ini").write_text("[pytest]\n")
    env = {"PATH": "/usr/bin:/bin", "DELAY": "0.002"}
    saved = subprocess.run(base + ["--benchmark-autosave"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    slower = subprocess.run(base + ["--benchmark-compare", "--benchmark-compare-fail=median:10%"], cwd=tmp_path,
                            env={**env, "DELAY": "0.02"}, capture_output=True, text=True)
    assert slower.returncode != 0 and "Performance has regressed" in slower.stdout + slower.stderr
