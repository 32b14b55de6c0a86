"""Each text family's classifier head is the one its validation split chose
(``reports/head_choice.json``, written by ``python -m experiments.head_choice``)."""
import numpy as np
import pytest

from experiments import head_choice
from experiments.families import all_families
from experiments.families._text import HEADS, build_text_model, head_of, with_head
from experiments.stats import summarize, welch

TEXT = [f for f in all_families() if f.name in ("lstm", "rnn")]


@pytest.fixture(scope="module")
def record():
    doc = head_choice.load()
    if not doc:
        pytest.fail("reports/head_choice.json is missing: run `python -m experiments.head_choice`")
    return doc


@pytest.mark.parametrize("fam", TEXT, ids=lambda f: f.name)
def test_each_text_family_declares_the_head_its_validation_chose(fam, record):
    choice = record.get(fam.name)
    assert choice, f"reports/head_choice.json has no entry for {fam.name}"
    assert head_of(fam) == choice["chosen"], (
        f"{fam.name} declares {head_of(fam)!r} but validation chose {choice['chosen']!r}: "
        f"change experiments/families/{fam.name}.py and retrain")


@pytest.mark.parametrize("fam", TEXT, ids=lambda f: f.name)
def test_the_recorded_choice_follows_from_its_own_numbers(fam, record):
    choice = record[fam.name]
    assert set(choice["heads"]) == set(HEADS)
    for head, h in choice["heads"].items():
        assert len(h["values"]) == len(choice["seeds"]) >= 5
        s = summarize(h["values"])
        assert h["mean"] == pytest.approx(s.mean) and h["std"] == pytest.approx(s.std)
        assert [r["macro_f1"] for r in h["runs"]] == h["values"]
        assert h["description"] == HEADS[head]
    best = max(choice["heads"], key=lambda k: choice["heads"][k]["mean"])
    assert choice["chosen"] == best
    d = welch(best, choice["heads"][best]["values"], choice["runner_up"],
              choice["heads"][choice["runner_up"]]["values"]).as_dict()
    assert choice["difference"]["mean_diff"] == pytest.approx(d["mean_diff"])
    assert d["mean_diff"] > 0
    assert (choice["difference"]["ci_low"], choice["difference"]["ci_high"]) == pytest.approx(
        (d["ci_low"], d["ci_high"]))


@pytest.mark.parametrize("fam", TEXT, ids=lambda f: f.name)
def test_the_declared_heads_evidence_is_the_committed_baseline_runs(fam, record):
    """The declared head's numbers come from the family's own (committed) baseline runs, so
    the study and the choice rest on the same models."""
    from experiments.runs import config_key, entry_name, profile_data

    splits = profile_data(fam, "full")
    planned = {entry_name(fam, fam.baseline,
                          config_key(fam, fam.baseline, "full", splits, s), s)
               for s in fam.seeds("full", fam.baseline)}
    runs = record[fam.name]["heads"][head_of(fam)]["runs"]
    assert {r["model"] for r in runs} == planned


def test_with_head_keeps_the_family_but_changes_its_key():
    lstm = next(f for f in TEXT if f.name == "lstm")
    other = with_head(lstm, "pooling" if head_of(lstm) == "final_state" else "final_state")
    assert other.name == lstm.name and other.baseline == lstm.baseline
    assert other.studies == lstm.studies
    assert head_of(other) != head_of(lstm)
    cnn = next(f for f in all_families() if f.name == "cnn")
    with pytest.raises(ValueError, match="not a text family"):
        with_head(cnn, "pooling")


def test_an_unknown_head_is_refused_by_name():
    from experiments.families._text import text_family
    with pytest.raises(ValueError, match="unknown text head 'max'.*final_state.*pooling"):
        text_family("x", "X", "lstm", "max")


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("layers", [1, 2])
def test_the_head_is_built_as_declared(head, layers):
    """Pooling: every recurrent layer returns its sequence and a masked average follows;
    final state: the last recurrent layer returns one vector and nothing pools."""
    from types import SimpleNamespace

    from keras import layers as kl

    splits = SimpleNamespace(x_train=np.array(["enak sekali", "buruk", "biasa saja ya"]))
    model = build_text_model({"layers": layers, "units": 4, "bidirectional": True}, splits, "lstm", head)
    recurrent = [l for l in model.layers if isinstance(l, kl.Bidirectional)]
    assert len(recurrent) == layers
    assert [l.forward_layer.return_sequences for l in recurrent] == \
        [True] * (layers - 1) + [head == "pooling"]
    pooled = any(isinstance(l, kl.GlobalAveragePooling1D) for l in model.layers)
    assert pooled is (head == "pooling")
    assert model.output_shape == (None, 3)


def test_the_design_section_states_each_head_and_its_validation_numbers(record):
    from experiments.report.sections.design import head_evidence

    for fam in TEXT:
        choice = record[fam.name]
        text = head_evidence(choice, HEADS[choice["chosen"]])
        for h in choice["heads"].values():
            assert f"{h['mean']:.3f} ± {h['std']:.3f}" in text
        assert f"seeds {choice['seeds'][0]}–{choice['seeds'][-1]}" in text
        assert f"{choice['difference']['mean_diff']:+.3f}" in text
        assert "another head" not in text
        other = next(k for k in HEADS if k != choice["chosen"])
        assert "trained with another head" in head_evidence(choice, HEADS[other])
    assert head_evidence(None, "x") == ""
