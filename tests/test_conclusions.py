"""Statistics and generated conclusions say only what the numbers show."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from experiments.conclusions import conclude, overfitting, run_flags, validation_rank
from experiments.results import mean_history
from experiments.stats import pairwise, summarize, welch


# ----------------------------------------------------------------------------- statistics

def test_welch_matches_scipy_and_its_interval_contains_the_difference():
    a, b = [0.70, 0.72, 0.69, 0.71, 0.73], [0.60, 0.66, 0.58, 0.65, 0.61]
    c = welch("a", a, "b", b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert c.p_value == pytest.approx(ref.pvalue)
    assert c.mean_diff == pytest.approx(np.mean(a) - np.mean(b))
    assert c.ci_low < c.mean_diff < c.ci_high and c.significant


def test_welch_interval_includes_zero_for_seed_noise():
    # the numbers: SimpleRNN baseline vs 2 layers over seeds 1, 2, 3, 4, 42
    c = welch("bi64", [.549, .509, .514, .512, .651], "2layers", [.499, .597, .634, .487, .498])
    assert c.ci_low < 0 < c.ci_high and not c.significant


def test_welch_reports_its_degrees_of_freedom():
    a, b = [0.70, 0.72, 0.69], [0.60, 0.66]
    c = welch("a", a, "b", b)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 2
    assert c.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 1))
    assert c.ci_excludes_0 == (c.ci_low > 0 or c.ci_high < 0)


def test_holm_adjusts_within_a_study_and_only_holm_effects_count():
    """p-values are Holm-adjusted over a study's comparisons (statsmodels), and an effect
    needs p_holm < 0.05: a comparison whose own interval just excludes 0 can lose it."""
    from statsmodels.stats.multitest import multipletests
    values = {"a": [.60, .64, .56], "b": [.65, .70, .60], "c": [.70, .74, .66]}
    cs = pairwise(["a", "b", "c"], values)
    raw = [c.p_value for c in cs]
    assert [c.p_holm for c in cs] == pytest.approx(list(multipletests(raw, method="holm")[1]))
    ac = next(c for c in cs if (c.a, c.b) == ("a", "c"))
    assert ac.ci_excludes_0 and ac.p_value < 0.05 and ac.p_holm >= 0.05 and not ac.significant
    assert all(c.significant == (c.p_holm < 0.05) for c in cs)
    text = conclude(study([variant(k, k, i, v) for i, (k, v) in enumerate(values.items())]),
                    [variant(k, k, i, v) for i, (k, v) in enumerate(values.items())])
    assert "Not effects after the Holm adjustment" in text and "a vs c" in text
    assert "No difference is an effect (Holm, over the study's 3 comparisons" in text


def test_two_seed_comparisons_carry_a_caveat():
    vs = [variant("a", "A", 1, [.70, .72]), variant("b", "B", 2, [.60, .61])]
    text = conclude(study(vs), vs)
    assert "Caveat: the smallest variant has 2 seeds (Welch df" in text


def test_one_seed_gives_no_interval_and_no_effect():
    c = welch("a", [0.9], "b", [0.1, 0.2])
    assert c.ci_low is None and c.p_value is None and not c.significant
    assert c.mean_diff == pytest.approx(0.75)


def test_pairwise_covers_every_pair_once_in_declaration_order():
    cs = pairwise(["x", "y", "z", "empty"], {"x": [1, 2], "y": [2, 3], "z": [3, 5], "empty": []})
    assert [(c.a, c.b) for c in cs] == [("x", "y"), ("x", "z"), ("y", "z")]


def test_summary_uses_sample_sd():
    s = summarize([0.5, 0.7])
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert math.isnan(summarize([0.5]).std) and summarize([0.5]).as_dict()["std"] is None


def test_mean_history_averages_over_the_runs_that_reached_each_epoch():
    h = mean_history([{"loss": [3, 2, 1], "val_loss": [3, 2, 2]}, {"loss": [5, 4], "val_loss": [4, 3]}])
    assert h["loss"] == [4, 3, 1] and h["n"] == [2, 2, 1]
    assert h["val_loss_min"] == [3, 2, 2] and h["val_loss_max"] == [4, 3, 2]


# ----------------------------------------------------------------------------- run flags

def test_overfitting_detects_the_epoch_after_the_val_minimum():
    o = overfitting({"loss": [2, 1.5, 1.2, 1.0, 0.8], "val_loss": [1.9, 1.4, 1.3, 1.35, 1.5]})
    assert o["start_epoch"] == 4 and o["best_val"] == 1.3 and o["last_val"] == 1.5
    assert overfitting({"loss": [2, 1.5, 1.2], "val_loss": [1.9, 1.4, 1.3]}) is None
    assert overfitting({"loss": [2, 1.5, 1.7], "val_loss": [1.9, 1.4, 1.6]}) is None
    # a last-epoch wobble within 5% of the minimum is not overfitting; just above it is
    assert overfitting({"loss": [2, 1.5, 1.2], "val_loss": [1.9, 0.822, 0.827]}) is None
    assert overfitting({"loss": [2, 1.5, 1.2], "val_loss": [1.9, 1.0, 1.051]}) is not None


def test_flags_name_artefacts_and_collapse():
    untrained = {"history": {"loss": [1.09, 0.5, 0.2], "val_loss": [1.05, 1.1, 1.2]}, "best_epoch": 1,
                 "predicted_classes": 2, "recipe": {"epochs": 40}}
    f = run_flags(untrained, 3)
    assert f["near_untrained"] and f["collapsed"] and f["overfit"] and not f["at_epoch_limit"]
    healthy = {"history": {"loss": [1.0, 0.5, 0.3], "val_loss": [1.0, 0.8, 0.7]}, "best_epoch": 3,
               "predicted_classes": 3, "recipe": {"epochs": 3}}
    f = run_flags(healthy, 3)
    assert not (f["near_untrained"] or f["collapsed"] or f["overfit"]) and f["at_epoch_limit"]
    assert not f["cut_short"]


def test_cut_short_means_stopped_before_a_decaying_schedule_ended():
    """Early stopping under a constant learning rate is the recipe working; under a
    schedule that anneals to the last epoch it leaves weights from the high-rate phase."""
    stopped = {"history": {"loss": [2, 1.5, 1.2, 1.1], "val_loss": [1.9, 1.4, 1.5, 1.6]},
               "best_epoch": 2, "predicted_classes": 3}
    assert run_flags({**stopped, "recipe": {"epochs": 12, "schedule": "warmup_cosine"}}, 3)["cut_short"]
    assert not run_flags({**stopped, "recipe": {"epochs": 12, "schedule": "constant"}}, 3)["cut_short"]
    assert not run_flags({**stopped, "recipe": {"epochs": 4, "schedule": "warmup_cosine"}}, 3)["cut_short"]


# ----------------------------------------------------------------------------- conclusions

def variant(vid, label, value, f1s, val=0.8, params=1000, flags=None):
    runs = [{"seed": i + 1, "keras_f1": f, "flags": {"near_untrained": False, "collapsed": False,
                                                     "overfit": False, "at_epoch_limit": False, **(flags or {})}}
            for i, f in enumerate(f1s)]
    s = summarize(f1s)
    return {"variant": vid, "label": label, "value": value, "runs": runs, "seeds_planned": list(range(len(f1s))),
            "f1_mean": s.mean, "f1_std": s.as_dict()["std"], "best_val_loss_mean": val,
            "validation": {"metric": "val_loss", "mean": val}, "params": params}


def study(variants, also=""):
    comps = [c.as_dict() for c in pairwise([v["variant"] for v in variants],
                                           {v["variant"]: [r["keras_f1"] for r in v["runs"]] for v in variants})]
    return {"title": "T", "comparisons": comps, "also_changes": also}


def test_noise_only_study_claims_no_effect_and_no_trend():
    vs = [variant("a", "1 layer", 1, [.549, .509, .514, .512, .651]),
          variant("b", "2 layers", 2, [.499, .597, .634, .487, .498]),
          variant("c", "3 layers", 3, [.742, .532, .721, .628, .478])]
    text = conclude(study(vs), vs)
    assert "No difference is an effect" in text and "No trend is claimed" in text
    assert "monoton" not in text and "beats" not in text


def test_steady_trend_needs_every_step_to_be_an_effect():
    vs = [variant("a", "32", 32, [.60, .61, .59]), variant("b", "64", 64, [.70, .71, .69]),
          variant("c", "128", 128, [.80, .81, .79], val=0.5)]
    text = conclude(study(vs), vs)
    assert "rises at every step from 32 to 128" in text and "a trend" in text
    assert "selects 128, which also has the best mean test macro-F1" in text


def test_endpoint_effect_without_steps_is_not_a_trend():
    vs = [variant("a", "32", 32, [.60, .62, .58]), variant("b", "64", 64, [.65, .70, .60]),
          variant("c", "128", 128, [.70, .72, .68])]
    text = conclude(study(vs), vs)
    assert "128 beats 32" in text and "no evidence of a steady trend" in text


def test_categorical_study_states_effect_artefacts_and_what_else_changes():
    vs = [variant("max", "max pooling", "max", [.80, .81], val=0.6),
          variant("avg", "average pooling", "avg", [.70, .71], val=0.7,
                  flags={"near_untrained": True, "collapsed": True})]
    text = conclude(study(vs, also="Pooling has no weights."), vs)
    assert "max pooling beats average pooling by 0.100" in text
    assert "trend" not in text
    assert "Early-stopping artefacts" in text and "average pooling seed 1" in text
    assert "Collapsed runs" in text and "overfitting" not in text
    assert "Cut short" not in text
    assert text.endswith("Pooling has no weights.")


def test_cut_short_runs_are_named_with_their_epochs():
    vs = [variant("max", "max pooling", "max", [.75, .75], val=0.6),
          variant("avg", "average pooling", "avg", [.77, .66], val=0.7)]
    vs[1]["recipe"] = {"epochs": 12}
    vs[1]["runs"][1].update(epochs=8, best_epoch=4)
    vs[1]["runs"][1]["flags"]["cut_short"] = True
    text = conclude(study(vs), vs)
    assert ("average pooling seed 2 (stopped after epoch 8 of 12, restored epoch 4, "
            "test macro-F1 0.660)") in text


def test_missing_seeds_and_single_seeds_are_said():
    vs = [variant("a", "a", 1, [.5]), variant("b", "b", 2, [.6])]
    vs[0]["seeds_planned"] = [1, 2]
    text = conclude(study(vs), vs)
    assert "Incomplete: a (1 of 2 seeds)" in text and "No interval can be computed" in text
    assert "trend" not in text


def test_selection_follows_the_monitored_validation_metric():
    """Validation accuracy is maximised, validation loss minimised; test F1 plays no part."""
    acc = [variant("a", "A", 1, [.5, .6]), variant("b", "B", 2, [.9, .9])]
    acc[0]["validation"] = {"metric": "val_accuracy", "mean": 0.71}
    acc[1]["validation"] = {"metric": "val_accuracy", "mean": 0.70}
    assert min(acc, key=validation_rank)["variant"] == "a"
    assert "highest mean validation accuracy" in conclude(study(acc), acc)
    loss = [variant("a", "A", 1, [.5, .6], val=0.71), variant("b", "B", 2, [.9, .9], val=0.70)]
    assert min(loss, key=validation_rank)["variant"] == "b"



def test_overfitting_sentence_names_what_the_restored_epoch_was_best_at():
    """Text runs restore the epoch of best validation accuracy, CNN runs of best
    validation loss: the sentence about rising validation loss must not blur the two."""
    for metric, restored in (("val_accuracy", "validation accuracy"), ("val_loss", "validation loss")):
        vs = [variant("a", "A", 1, [.70, .71], flags={"overfit": True}),
              variant("b", "B", 2, [.72, .73], flags={"overfit": True})]
        for v in vs:
            v["validation"] = {"metric": metric, "mean": 0.7}
        text = conclude(study(vs), vs)
        assert f"in 4 of 4 runs (overfitting; the weights kept are those of the epoch with the best {restored})" in text
