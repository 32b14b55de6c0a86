"""Every trained run (configuration x seed): scratch_layers equals Keras on the whole test split.

Models come from the cache of the selected profile (``reports/models`` for ``full``),
or are trained now.  With ``--no-train`` (CI) a run that is not trained yet is skipped
with the command that trains it; the report counts such runs as missing.
"""
import numpy as np
import pytest

from experiments.report.records import record
from experiments.verification import failure_message, first_diverging_node, misclassified_examples
from scratch_layers.verify.keras import ATOL, RTOL, TWIN_ATOL, layer_divergence

pytestmark = pytest.mark.slow


def test_scratch_matches_keras(run, trained, verification, backend, request):
    """The backend under test (``--backend``, default scratch_layers) on the whole test split."""
    from experiments.backends import record_case, skip_refused
    from scratch_layers.verify.backends import Refused
    if isinstance(verification, Refused):
        skip_refused(request, backend, run.family.name, run.id, verification)
    v, scratch_model, kp, sp = verification  # Keras' side: cached references
    splits = run.family.load_data()
    meta = trained.meta
    failure = None
    if not v.passed:  # Keras is loaded only to explain a failure
        keras_model = trained.load_keras()
        where = first_diverging_node(keras_model, scratch_model, splits.x_test, kp, sp, v.precision)
        failure = failure_message(run.id, v, keras_model, scratch_model, splits.x_test, kp, sp,
                                  backend.name, where)
    record_case(request, backend, run.family.name, run.id, "passed" if v.passed else "wrong",
                max_abs_diff=v.max_abs_diff, max_abs_diff_float64=v.max_abs_diff_float64,
                precision=v.precision, backend_seconds=v.scratch_seconds, keras_seconds=v.keras_seconds,
                node=failure and where["node"], node_diff=failure and where["diff"], message=failure)
    if not backend.is_default:  # the study records (report, results.json) are scratch_layers'
        assert v.passed, failure
        return
    record(request, "run", family=run.family.name, run=run.id, config=run.config, seed=run.seed,
           profile=trained.profile, recipe=meta["recipe"], epochs=meta["epochs"],
           best_epoch=meta["best_epoch"], best_val_loss=meta["best_val_loss"],
           history=meta["history"], params=meta["params"], train_seconds=meta["train_seconds"],
           model=trained.entry.path.name, data_source=meta["data_source"],
           split_sizes=meta["split_sizes"], class_names=list(splits.class_names),
           misclassified=misclassified_examples(splits.y_test, kp), **v.as_dict())
    assert v.n_test == len(splits.y_test), "verification must cover the whole test split"
    assert v.passed, failure
    if trained.profile == "full":  # agreement on a collapsed model would prove little
        assert v.predicted_classes > 1, f"{run.id} predicts a single class: collapsed model"
    print(f"{run.id}: max|dp| {v.max_abs_diff:.2e}, vs float64 twin {v.max_abs_diff_float64:.2e}, "
          f"agreement {v.agreement:.2%}, macro-F1 {v.keras_f1:.4f}")


@pytest.fixture(scope="session")
def baseline_trained(pytestconfig, family, profile):
    from experiments.plugin import trained_or_skip
    return trained_or_skip(pytestconfig, family, family.baseline, profile)


def test_layer_by_layer(family, baseline_trained, backend, request):
    """Every intermediate layer output of the family's baseline model matches Keras."""
    from experiments.plugin import load_or_skip
    from scratch_layers.verify.backends import has_intermediate_outputs
    splits = family.load_data()
    n = 256
    scratch_model = load_or_skip(backend, baseline_trained.path)
    if not has_intermediate_outputs(scratch_model):
        pytest.skip(f"backend {backend.name!r} offers no intermediate_outputs(x): no per-node table")
    keras_model = baseline_trained.load_keras()
    precision = backend.precision_of(backend.call(scratch_model.predict, splits.x_test[:2]))
    rows = layer_divergence(keras_model, scratch_model, splits.x_test[:n], precision)
    if backend.is_default:
        record(request, "layers", family=family.name, model=baseline_trained.entry.path.name,
               n_items=n, rows=rows)
    compared = [r for r in rows if r["max_abs_diff"] is not None]
    assert len(compared) >= len(rows) - 1, f"layers without a comparable Keras output: {rows}"
    bad = [r for r in compared if not r["allclose"]]
    assert not bad, f"layers diverging from Keras: {bad}"
    if precision == "float32":  # the twin gates float64 backends only
        return
    off_twin = [r for r in compared if r["max_abs_diff_float64"] is None or r["max_abs_diff_float64"] > TWIN_ATOL]
    assert not off_twin, f"layers differing from Keras' float64 maths (the twin) by more than {TWIN_ATOL}: {off_twin}"


@pytest.mark.parametrize("family_name", [pytest.param(f, marks=getattr(pytest.mark, f)) for f in ("rnn", "lstm")])
def test_raw_text_pipeline_matches_keras(pytestconfig, profile, family_name, backend):
    """Raw NusaX test strings through scratch's TextVectorization+model equal Keras fed the same strings,
    and the token ids equal Keras' token for token (where the backend offers intermediate_outputs)."""
    import keras
    from experiments.families import family
    from experiments.plugin import load_or_skip, trained_or_skip

    fam = family(family_name)
    tm = trained_or_skip(pytestconfig, fam, fam.baseline, profile)
    texts = fam.load_data().x_test
    scratch_model = load_or_skip(backend, tm.path)
    keras_model = tm.load_keras()
    vec = next(l for l in keras_model.layers if isinstance(l, keras.layers.TextVectorization))
    keras_ids = np.asarray(vec(texts))
    scratch_ids = (scratch_model.intermediate_outputs(list(texts)) if hasattr(scratch_model, "intermediate_outputs")
                   else {}).get(vec.name, keras_ids)
    assert np.array_equal(scratch_ids, keras_ids), \
        f"token ids differ on {int((scratch_ids != keras_ids).any(1).sum())} of {len(texts)} texts"
    kp = keras_model.predict(texts, verbose=0)
    sp = scratch_model.predict(list(texts))
    assert np.allclose(sp, kp, atol=ATOL, rtol=RTOL), f"max|dp| {np.abs(sp - kp).max():.3g}"
    assert (sp.argmax(1) == kp.argmax(1)).all()


def test_model_cache_holds_only_planned_runs_of_this_data(family, profile):
    """Every entry in the cache is a planned run of the current recipe and data, or of
    the recipe it superseded while the new one is being built (``Family.superseded``).

    An entry trained on other data (another data fingerprint) or under an older recipe
    is named here, with what to do, instead of silently counting as "not trained"."""
    from experiments.runs import cache_root, planned_entries, profile_data

    root = cache_root(profile)
    entries = sorted(p.name for p in root.glob(f"{family.name}-*") if p.is_dir()) if root.is_dir() else []
    if not entries:
        pytest.skip(f"no {family.name} model in {root} yet")
    splits = profile_data(family, profile)
    planned = planned_entries(family, profile, splits)
    if profile in family.superseded:
        planned |= planned_entries(family, profile, splits, family.superseded[profile])
    stale = [e for e in entries if e not in planned]
    assert not stale, (
        f"{len(stale)} of {len(entries)} {family.name} entries in {root} are not runs of the "
        f"current recipe on this data (data fingerprint {splits.fingerprint}; e.g. {stale[0]}). "
        f"If your dataset differs from the one the committed models were trained on, run "
        f"`make report RETRAIN=1`; if the recipe changed, delete the stale entries.")
