"""Activations, PReLU, Normalization, RepeatVector, LayerNormalization, UnitNormalization,
ConvNeXt's LayerScale and ReLU's options: forward (both file formats) against Keras float32
(1e-5) and the float64 twin (1e-9 relative to the output's scale), backward against
tf.GradientTape on the twin (atol 1e-9, rtol 1e-7) and on float32 Keras; plus a hostile
TextVectorization output_sequence_length."""
import os
import sys
import tracemalloc

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from backward_helpers import (compare_gradients, finite_difference_check,  # noqa: E402
                              keras_loss_and_grads, twin_of)
from keras_factories import check_model, keras, randomize_weights, save_load  # noqa: E402

import scratch_layers  # noqa: E402
from scratch_layers import activations  # noqa: E402
from scratch_layers.errors import ModelFileError  # noqa: E402

pytestmark = pytest.mark.scratch

N = 5
TWIN_REL = 1e-9


def inputs(shape, scale=3.0, seed=0):
    """Wide inputs (std 3) so that every piece of a piecewise activation is visited."""
    return np.random.default_rng(seed).normal(0.3, scale, (N,) + shape).astype(np.float32)


def labels(classes=3, seed=0):
    return np.random.default_rng(seed).integers(0, classes, N)


def head(k, classes=3):
    return [k.layers.Flatten(), k.layers.Dense(classes, activation="softmax")]


def check_forward(model, x, tmp_path, seed=0, twin=True, randomize=True):
    """Both file formats vs float32 Keras (check_model), then the .keras load vs the float64
    twin. Returns the .keras scratch model and the worst diffs (float32, twin relative)."""
    if randomize:
        randomize_weights(model, seed)
    os.makedirs(tmp_path / "h5", exist_ok=True)
    check_model(model, x, tmp_path / "h5", fmt="h5", randomize=False)
    sm, worst32 = check_model(model, x, tmp_path, fmt="keras", randomize=False)
    rel = 0.0
    if twin:
        ref = twin_of(model).predict(x.astype(np.float64), verbose=0)
        got = sm.predict(x)
        rel = float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))
        assert rel <= TWIN_REL, f"scratch vs float64 twin: {rel:.3g} relative"
    print(f"forward: vs float32 {worst32:.3g}, vs twin {rel:.3g} (relative)")
    return sm, worst32, rel


def check_case(model, x, tmp_path, record_property, twin=True, randomize=True):
    """Forward (check_forward) and gradients (compare_gradients) of a model ending in a
    softmax classifier."""
    sm, f32, rel = check_forward(model, x, tmp_path, twin=twin, randomize=randomize)
    d64, d32 = compare_gradients(model, sm, x, labels(model.output_shape[-1]))
    for key, val in (("forward_f32", f32), ("forward_twin_rel", rel), ("grad_twin", d64),
                     ("grad_f32", d32)):
        record_property(key, val)
    return sm


# ----------------------------------------------------------------------------- activations

ACTIVATIONS = ["hard_sigmoid", "hard_silu", "hard_swish", "swish", "silu", "mish", "relu6", "celu",
               "log_sigmoid", "hard_tanh", "tanh_shrink", "soft_shrink", "hard_shrink",
               "squareplus", "sparse_plus", "sparse_sigmoid"]


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_dense_activation(act, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((5,)), k.layers.Dense(6, activation=act), k.layers.Dense(3, activation="softmax")])
    check_case(m, inputs((5,)), tmp_path, record_property)


@pytest.mark.parametrize("act", ["hard_swish", "mish", "relu6", "hard_sigmoid"])
def test_activation_layer_after_conv(act, tmp_path, record_property):
    """As an ``Activation`` layer and as Conv2D's activation."""
    k = keras()
    m = k.Sequential([k.Input((5, 4, 2)), k.layers.Conv2D(3, 2, activation=act),
                      k.layers.Activation(act)] + head(k))
    check_case(m, inputs((5, 4, 2)), tmp_path, record_property)


@pytest.mark.parametrize("where", ["dense", "activation-layer"])
def test_gelu_exact(where, tmp_path, record_property):
    """``activation="gelu"`` is Keras' exact gelu (``keras.activations.gelu(x, approximate=False)``).
    TF's float64 erfc is off by ~5e-8 relative near x = -sqrt(2), so the twin is not the
    reference: float32 Keras for forward and gradients, central differences for the gradient."""
    k = keras()
    if where == "dense":
        body = [k.layers.Dense(6, activation="gelu")]
    else:
        body = [k.layers.Dense(6), k.layers.Activation("gelu")]
    m = k.Sequential([k.Input((5,))] + body + [k.layers.Dense(3, activation="softmax")])
    assert m.layers[0 if where == "dense" else 1].get_config()["activation"] == "gelu"
    x, y = inputs((5,)), labels()
    sm, _, _ = check_forward(m, x, tmp_path, twin=False)
    _, grads = sm.loss_and_gradients(x, y)
    _, kgrads = keras_loss_and_grads(m, x, y)
    for g, kg in zip(grads, kgrads):
        np.testing.assert_allclose(g, kg, atol=1e-5, rtol=1e-5)
    assert finite_difference_check(sm, x, y) < 1e-6


def test_gelu_exact_forward_matches_math_erf():
    import math
    x = np.linspace(-7, 7, 2001)
    ref = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    assert np.abs(activations.gelu(x) - ref).max() < 1e-15


def _tf_value_and_grad(fn, x, dy):
    import tensorflow as tf
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = fn(xt)
    return np.asarray(y), np.asarray(tape.gradient(y, xt, output_gradients=tf.constant(dy)))


ELEMENTWISE = ["relu", "relu6", "leaky_relu", "sigmoid", "tanh", "elu", "selu", "softplus", "softsign",
               "silu", "exponential", "hard_sigmoid", "hard_silu", "mish", "celu", "log_sigmoid", "glu",
               "hard_tanh", "tanh_shrink", "soft_shrink", "hard_shrink", "squareplus", "sparse_plus",
               "sparse_sigmoid", "softmax", "log_softmax"]


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activation_derivative_vs_tensorflow_float64(name):
    """Each activation and its derivative (scratch_layers.activations.GRADIENTS) against
    Keras' own function and tf.GradientTape in float64, on points that visit every piece
    (breakpoints avoided: there the one-sided derivative is a convention)."""
    k = keras()
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 4.0, (7, 8))
    for edge in (0.0, 0.5, 1.0, 3.0, 6.0):
        x[np.abs(np.abs(x) - edge) < 1e-3] += 0.01
    dy = rng.normal(0.0, 1.0, (7, 4 if name == "glu" else 8))
    kfn = getattr(k.activations, name)
    ref_y, ref_dx = _tf_value_and_grad(kfn, x, dy)
    fn = activations.get(name)
    y = fn(x)
    np.testing.assert_allclose(y, ref_y, rtol=1e-14, atol=1e-15)
    dx = activations.backward(fn, x, y, dy)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-13, atol=1e-15)


def test_gelu_tanh_approximation_vs_tensorflow_float64():
    """``gelu(x, approximate=True)`` (tf.nn.gelu's tanh form; no serialized activation asks for
    it) and its derivative."""
    import tensorflow as tf
    rng = np.random.default_rng(2)
    x, dy = rng.normal(0, 3, (6, 9)), rng.normal(0, 1, (6, 9))
    ref_y, ref_dx = _tf_value_and_grad(lambda t: tf.nn.gelu(t, approximate=True), x, dy)
    y = activations.gelu(x, approximate=True)
    np.testing.assert_allclose(y, ref_y, rtol=1e-14, atol=1e-15)
    # where tanh saturates, 1 + t cancels in both computations: compare absolutely there
    np.testing.assert_allclose(activations.backward(activations.gelu_tanh, x, y, dy), ref_dx,
                               rtol=1e-13, atol=1e-14)


# ----------------------------------------------------------------------------- activation layers

RELU_OPTIONS = {
    "max_value": dict(max_value=1.5),
    "max_value-6": dict(max_value=6.0),
    "negative_slope": dict(negative_slope=0.2),
    "threshold": dict(threshold=0.7),
    "slope-threshold": dict(negative_slope=0.3, threshold=0.5),
    "all": dict(max_value=2.0, negative_slope=0.1, threshold=0.4),
    "max6-slope": dict(max_value=6.0, negative_slope=0.25),
}


@pytest.mark.parametrize("case", RELU_OPTIONS)
def test_relu_options(case, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((5,)), k.layers.Dense(8), k.layers.ReLU(**RELU_OPTIONS[case]),
                      k.layers.Dense(3, activation="softmax")])
    check_case(m, inputs((5,)), tmp_path, record_property)


@pytest.mark.parametrize("layer", ["LeakyReLU", "ELU"])
def test_leaky_relu_and_elu(layer, tmp_path, record_property):
    k = keras()
    act = k.layers.LeakyReLU(negative_slope=0.15) if layer == "LeakyReLU" else k.layers.ELU(alpha=0.6)
    m = k.Sequential([k.Input((5,)), k.layers.Dense(8), act, k.layers.Dense(3, activation="softmax")])
    check_case(m, inputs((5,)), tmp_path, record_property)


@pytest.mark.parametrize("shared_axes", [None, [1, 2], [3]])
def test_prelu(shared_axes, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((4, 3, 2)), k.layers.Conv2D(3, 2, padding="same"),
                      k.layers.PReLU(shared_axes=shared_axes)] + head(k))
    check_case(m, inputs((4, 3, 2)), tmp_path, record_property)


# ----------------------------------------------------------------------------- normalization

@pytest.mark.parametrize("case", ["last", "axis1", "all-features", "scale-off", "center-off", "rms",
                                  "eps"])
def test_layer_normalization(case, tmp_path, record_property):
    k = keras()
    kw = {"last": {}, "axis1": dict(axis=1), "all-features": dict(axis=[1, 2]),
          "scale-off": dict(scale=False), "center-off": dict(center=False),
          "rms": dict(rms_scaling=True), "eps": dict(epsilon=0.5)}[case]
    if case == "rms":
        import warnings
        warnings.filterwarnings("ignore", "You passed `rms_scaling=True`")
    m = k.Sequential([k.Input((4, 5)), k.layers.Dense(6), k.layers.LayerNormalization(**kw)] + head(k))
    check_case(m, inputs((4, 5)), tmp_path, record_property)


@pytest.mark.parametrize("axis", [-1, [1, 2]])
def test_unit_normalization(axis, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((3, 4)), k.layers.Dense(5), k.layers.UnitNormalization(axis=axis)] + head(k))
    check_case(m, inputs((3, 4)), tmp_path, record_property)


@pytest.mark.parametrize("case", ["config-mean", "config-scalar", "config-invert"])
def test_normalization_from_config(case, tmp_path, record_property):
    """mean/variance given to the constructor live in the config (ConvNeXt's PreStem)."""
    k = keras()
    kw = {"config-mean": dict(mean=[0.5, -1.0, 2.0], variance=[4.0, 0.25, 9.0]),
          "config-scalar": dict(axis=None, mean=0.7, variance=2.5),
          "config-invert": dict(mean=[0.5, -1.0, 2.0], variance=[4.0, 0.0, 9.0], invert=True)}[case]
    m = k.Sequential([k.Input((4, 3)), k.layers.Normalization(**kw), k.layers.Dense(4, activation="tanh")]
                     + head(k))
    check_case(m, inputs((4, 3)), tmp_path, record_property)


@pytest.mark.parametrize("axis", [-1, None, [1, 2]])
def test_normalization_adapted(axis, tmp_path, record_property):
    """Adapted statistics are the file's weights mean, variance, count (count is int64)."""
    k = keras()
    norm = k.layers.Normalization(axis=axis)
    x = inputs((4, 3))
    norm.adapt(x * 2.0 + 1.0)
    m = k.Sequential([k.Input((4, 3)), norm, k.layers.Dense(4, activation="tanh")] + head(k))
    for i, layer in enumerate(m.layers[1:]):
        randomize_weights(layer, i)
    mean, var, count = norm.get_weights()
    norm.set_weights([mean + 0.1, var * 1.7 + 0.05, count])
    norm.finalize_state()  # Keras caches the statistics; loading a file does this too
    check_case(m, x, tmp_path, record_property, randomize=False)


def test_normalization_adapted_loads_unpatched(tmp_path):
    k = keras()
    norm = k.layers.Normalization()
    norm.adapt(inputs((3,)))
    m = k.Sequential([k.Input((3,)), norm, k.layers.Dense(2, activation="softmax")])
    save_load(m, tmp_path)


# ----------------------------------------------------------------------------- shape layers, LayerScale

def test_repeat_vector_and_reshape(tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((4,)), k.layers.Dense(3, activation="tanh"), k.layers.RepeatVector(4),
                      k.layers.Reshape((-1, 2)), k.layers.Permute((2, 1)), k.layers.Dense(2)] + head(k))
    check_case(m, inputs((4,)), tmp_path, record_property)


def test_layer_scale(tmp_path, record_property):
    """ConvNeXt's LayerScale, saved as class_name 'LayerScale' (module
    keras.src.applications.convnext)."""
    from keras.src.applications.convnext import LayerScale
    k = keras()
    m = k.Sequential([k.Input((3, 4, 2)), k.layers.Conv2D(5, 2, padding="same"),
                      LayerScale(1e-6, 5), k.layers.Dense(3)] + head(k))
    cfg = m.get_config()["layers"][2]
    assert cfg["class_name"] == "LayerScale" and cfg["module"] == "keras.src.applications.convnext"
    check_case(m, inputs((3, 4, 2)), tmp_path, record_property)


# ----------------------------------------------------------------------------- hostile TextVectorization

def test_text_vectorization_huge_output_sequence_length(tmp_path):
    """output_sequence_length 10**9 would allocate 8 GB per text: refused at load time with
    ModelFileError naming the option and the cap, before anything large is allocated."""
    import json
    import zipfile
    k = keras()
    tv = k.layers.TextVectorization(output_sequence_length=4)
    tv.adapt(np.array(["a b c", "b c d"], dtype=object))
    inp = k.Input((), dtype="string")
    m = k.Model(inp, k.layers.Embedding(tv.vocabulary_size(), 2)(tv(inp)))
    path = str(tmp_path / "tv.keras")
    m.save(path)
    hostile = str(tmp_path / "hostile.keras")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(hostile, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                cfg = json.loads(data)
                for layer in cfg["config"]["layers"]:
                    if layer["class_name"] == "TextVectorization":
                        layer["config"]["output_sequence_length"] = 10 ** 9
                data = json.dumps(cfg).encode()
            dst.writestr(item, data)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=r"output_sequence_length=1000000000 .*MAX_OUTPUT_SEQUENCE_LENGTH"):
            scratch_layers.load_model(hostile)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MiB"
    assert scratch_layers.load_model(path).predict(["a b z"]).shape == (1, 4, 2)


def test_new_layers_in_float32(tmp_path):
    """Loaded with dtype="float32", the new layers compute in float32 (their config-derived
    arrays are cast too) and equal Keras float32, forward and gradients."""
    from keras.src.applications.convnext import LayerScale
    k = keras()
    m = k.Sequential([k.Input((4, 3)), k.layers.Normalization(mean=[0.5, -1.0, 2.0], variance=[4.0, 0.3, 9.0]),
                      k.layers.Dense(5), k.layers.PReLU(), k.layers.LayerNormalization(),
                      LayerScale(0.1, 5), k.layers.UnitNormalization(), k.layers.Flatten(),
                      k.layers.RepeatVector(2), k.layers.Dense(4, activation="hard_swish")] + head(k))
    randomize_weights(m, 3)
    m.save(str(tmp_path / "m.keras"))
    sm = scratch_layers.load_model(str(tmp_path / "m.keras"), dtype="float32")
    x, y = inputs((4, 3)), labels()
    got = sm.predict(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, m.predict(x, verbose=0), atol=1e-5, rtol=1e-5)
    _, grads = sm.loss_and_gradients(x, y)
    _, kgrads = keras_loss_and_grads(m, x, y)
    for g, kg in zip(grads, kgrads):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, kg, atol=1e-5, rtol=1e-5)
