"""Study declarations and model builders: every variant builds with the required layers."""
import pytest

from experiments.families import all_families
from experiments.studies import canonical


def test_ten_studies_and_27_variants_with_readable_unique_ids():
    fams = {f.name: f for f in all_families()}
    assert set(fams) >= {"cnn", "rnn", "lstm"}
    core = [fams[n] for n in ("cnn", "rnn", "lstm")]
    assert sum(len(f.studies) for f in core) == 10
    variants = [v for f in core for v in f.variants()]
    assert len(variants) == 27
    ids = [v.id for v in variants]
    assert len(set(ids)) == len(ids)
    assert "cnn-filters-32_64_128" in ids and "lstm-direction-true" in ids


def test_variants_differ_from_the_baseline_only_in_their_hyperparameter():
    for fam in all_families():
        assert fam.baseline in fam.configs()
        for v in fam.variants():
            changed = {k for k in fam.baseline if v.config[k] != fam.baseline[k]}
            assert changed <= {v.study.param}, v.id
            assert fam.baseline[v.study.param] in v.study.values, f"{v.id}: study must contain the baseline"
        assert len(fam.configs()) == len({canonical(v.config) for v in fam.variants()})


def _layer_types(model):
    out = []
    for layer in model.layers:
        out.append(type(layer).__name__)
        if hasattr(layer, "forward_layer"):
            out.append(type(layer.forward_layer).__name__)
    return out


@pytest.mark.cnn
@pytest.mark.parametrize("v", [pytest.param(v, id=v.id) for f in all_families() if f.name == "cnn"
                               for v in f.variants()])
def test_cnn_variant_builds_with_required_layers(v):
    model = v.family.build_model(v.config, None)
    types = _layer_types(model)
    n = v.config["conv_layers"]
    assert types.count("Conv2D") == n
    pool = {"max": "MaxPooling2D", "avg": "AveragePooling2D"}[v.config["pooling"]]
    assert types.count(pool) == n
    assert "Flatten" in types or "GlobalAveragePooling2D" in types
    assert types.count("Dense") == 2 and "Dropout" in types
    convs = [l for l in model.layers if type(l).__name__ == "Conv2D"]
    assert [c.filters for c in convs][:3] == list(v.config["filters"])[:n]
    assert [c.kernel_size[0] for c in convs][:3] == list(v.config["kernel_sizes"])[:n]
    assert all(c.padding == "same" for c in convs)
    assert types.count("BatchNormalization") == n and types.count("ReLU") == n
    assert {"RandomFlip", "RandomTranslation"} <= set(types), "training-time augmentation"
    assert model.output_shape == (None, 10)


def test_seeds_are_part_of_the_full_recipe_and_smoke_stays_at_one():
    fams = {f.name: f for f in all_families()}
    cnn = fams["cnn"]
    assert len(cnn.seeds("full", cnn.baseline)) >= 3
    assert all(len(cnn.seeds("full", c)) >= 2 for c in cnn.configs())
    for name in ("rnn", "lstm"):
        assert all(len(fams[name].seeds("full", c)) >= 5 for c in fams[name].configs())
    for fam in fams.values():
        assert all(len(fam.seeds("smoke", c)) == 1 for c in fam.configs())


def test_runs_are_seed_major_so_an_interrupted_build_covers_every_variant():
    cnn = next(f for f in all_families() if f.name == "cnn")
    runs = cnn.runs("full")
    n = len(cnn.configs())
    assert [s for _, s in runs[:n]] == [1] * n, "every configuration gets its first seed first"
    assert len(runs) == sum(len(cnn.seeds("full", c)) for c in cnn.configs())
    assert len({(canonical(c), s) for c, s in runs}) == len(runs)
    assert runs[0] == (cnn.baseline, 1) and runs[n] == (cnn.baseline, 2), "the baseline leads each round"


def test_adding_a_seed_keeps_the_keys_of_runs_already_trained():
    from dataclasses import replace

    from experiments.runs import config_key

    class Splits:
        fingerprint = "data"
    fam = next(f for f in all_families() if f.name == "rnn")
    more = replace(fam, recipe={**fam.recipe, "full": {**fam.recipe["full"], "seeds": (1, 2, 3, 4, 5, 6)}})
    assert config_key(fam, fam.baseline, "full", Splits, 1) == config_key(more, fam.baseline, "full", Splits, 1)
    assert config_key(fam, fam.baseline, "full", Splits, 1) != config_key(fam, fam.baseline, "full", Splits, 2)
    changed = replace(fam, recipe={**fam.recipe, "full": {**fam.recipe["full"], "patience": 99}})
    assert config_key(changed, fam.baseline, "full", Splits, 1) != config_key(fam, fam.baseline, "full", Splits, 1)


def test_a_superseded_recipe_names_its_own_runs():
    """While a new recipe is built, the cache test recognises the old recipe's entries by
    the keys that recipe gives them: the same runs, none shared with the new recipe."""
    from experiments.runs import planned_entries

    class Splits:
        fingerprint = "data"
    cnn = next(f for f in all_families() if f.name == "cnn")
    new = planned_entries(cnn, "full", Splits)
    old = planned_entries(cnn, "full", Splits, cnn.superseded["full"]) if cnn.superseded else set()
    same = planned_entries(cnn, "full", Splits, cnn.recipe["full"])
    assert same == new and len(new) == len(cnn.runs("full"))
    if cnn.superseded:
        assert len(old) == len(new) and not (old & new)


def test_warmup_cosine_schedule_and_restored_epoch():
    import numpy as np

    from experiments.runs import best_epoch, learning_rate
    recipe = {"schedule": "warmup_cosine", "learning_rate": 2e-3, "warmup_epochs": 1, "epochs": 4,
              "batch_size": 10}
    lr = learning_rate(recipe, 100)   # 10 steps per epoch, 40 in all
    vals = [float(lr(step)) for step in (0, 5, 10, 25, 40)]
    assert vals[0] == 0 and np.isclose(vals[1], 1e-3) and np.isclose(vals[2], 2e-3)
    assert 0 < vals[3] < 2e-3 and np.isclose(vals[4], 0, atol=1e-9)
    assert learning_rate({"learning_rate": 1e-3}, 100) == 1e-3
    # the lowest val loss is at epoch 1, but early stopping may not restore epochs 1-5
    hist = {"val_loss": [0.5, 0.9, 0.9, 0.9, 0.9, 0.8, 0.7, 0.75]}
    assert best_epoch(hist) == 1 and best_epoch(hist, min_epochs=6) == 7


@pytest.fixture(scope="module")
def nusax():
    from experiments.data import load_nusax
    return load_nusax()


@pytest.mark.parametrize("v", [pytest.param(v, id=v.id, marks=getattr(pytest.mark, f.name))
                               for f in all_families() if f.name in ("rnn", "lstm") for v in f.variants()])
def test_text_variant_builds_with_required_layers(v, nusax):
    model = v.family.build_model(v.config, nusax)
    types = _layer_types(model)
    cell = {"rnn": "SimpleRNN", "lstm": "LSTM"}[v.family.name]
    assert "TextVectorization" in types and "Embedding" in types
    assert types.count(cell) == v.config["layers"]
    assert types.count("Bidirectional") == (v.config["layers"] if v.config["bidirectional"] else 0)
    assert "Dropout" in types and types[-1] == "Dense"
    emb = next(l for l in model.layers if type(l).__name__ == "Embedding")
    assert emb.mask_zero, "padding must be masked"
    assert model.output_shape == (None, 3)


@pytest.mark.rnn
def test_text_vectorization_is_fitted_on_train_only(nusax):
    import re

    from experiments.families import family
    model = family("rnn").build_model(family("rnn").baseline, nusax)
    vec = next(l for l in model.layers if type(l).__name__ == "TextVectorization")
    vocab = vec.get_vocabulary()
    assert vocab[:2] == ["", "[UNK]"], "index 0 = padding, 1 = OOV"

    def words(texts):
        return {w for t in texts for w in re.sub(r"[!\"#$%&()*+,\-./:;<=>?@\[\\\]^_`{|}~']", "", t.lower()).split()}
    train, heldout = words(nusax.x_train), words(nusax.x_val) | words(nusax.x_test)
    assert set(vocab[2:]) == train
    assert heldout - train, "held-out splits should have words unseen in train"
    assert not (set(vocab) & (heldout - train))
