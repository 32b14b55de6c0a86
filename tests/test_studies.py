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
    assert model.output_shape == (None, 10)


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
