"""scratch_layers training: several Adam steps with Model.train_on_batch equal Keras'
train_on_batch on the float64 twin (compiled with Adam and SparseCategoricalCrossentropy):
the losses and every weight (moving statistics included) within 1e-8. Also get/set_weights
alignment, save -> keras.models.load_model, and predict after training."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from backward_helpers import floatx64, max_abs, twin_of  # noqa: E402
from keras_factories import keras, randomize_weights, save_load, tiny_text_model  # noqa: E402

import scratch_layers  # noqa: E402

pytestmark = pytest.mark.scratch

LR = 2.0 ** -9   # exactly representable, so Keras' float32 learning-rate variable is exact
TOL = 1e-8
STEPS = 4


def keras_train(keras_model, batches):
    """Keras' train_on_batch on the float64 twin; the loss of each batch (metrics reset
    before each step: Keras otherwise returns the running mean) and the final weights."""
    k = keras()
    twin = twin_of(keras_model)
    with floatx64():
        twin.compile(optimizer=k.optimizers.Adam(learning_rate=LR),
                     loss=k.losses.SparseCategoricalCrossentropy())
        losses = []
        for x, y in batches:
            twin.reset_metrics()
            losses.append(float(twin.train_on_batch(x, y)))
    return losses, twin.get_weights(), twin


def scratch_train(scratch_model, batches):
    opt = scratch_layers.Adam(learning_rate=LR)
    return [scratch_model.train_on_batch(x, y, opt) for x, y in batches]


def compare_training(keras_model, scratch_model, batches, record_property):
    as64 = [(x.astype(np.float64) if x.dtype == np.float32 else x, y) for x, y in batches]
    klosses, kweights, twin = keras_train(keras_model, as64)
    slosses = scratch_train(scratch_model, batches)
    sweights = scratch_model.get_weights()
    assert len(sweights) == len(kweights)
    loss_diff = max(abs(a - b) for a, b in zip(slosses, klosses))
    weight_diff = max(max_abs(a, b) for a, b in zip(sweights, kweights))
    record_property("max_loss_diff", loss_diff)
    record_property("max_weight_diff", weight_diff)
    print(f"losses {slosses}\nmax|loss diff| {loss_diff:.3g}, max|weight diff| {weight_diff:.3g}")
    assert loss_diff <= TOL, (slosses, klosses)
    for i, (a, b) in enumerate(zip(sweights, kweights)):
        assert a.shape == b.shape
        assert max_abs(a, b) <= TOL, f"weight {i} ({keras_model.weights[i].path}): {max_abs(a, b):.3g}"
    assert len(set(slosses)) == len(slosses)  # the steps did change the model
    return twin


def image_batches(shape, n=6, classes=3):
    rng = np.random.default_rng(1)
    return [(rng.normal(0.2, 1.0, (n,) + shape).astype(np.float32), rng.integers(0, classes, n))
            for _ in range(STEPS)]


def test_cnn_with_batchnorm(tmp_path, record_property):
    """The study CNN's block: BN in training mode (batch statistics, moving averages
    with momentum), max pooling, Dense, Dropout(0)."""
    k = keras()
    m = k.Sequential([k.Input((8, 7, 3)), k.layers.Conv2D(4, 3, padding="same", use_bias=False),
                      k.layers.BatchNormalization(), k.layers.ReLU(), k.layers.MaxPooling2D(2),
                      k.layers.Conv2D(3, 2, strides=2, padding="same", activation="relu"),
                      k.layers.BatchNormalization(momentum=0.9), k.layers.Flatten(),
                      k.layers.Dense(5, activation="relu"), k.layers.Dropout(0.0),
                      k.layers.Dense(3, activation="softmax")])
    randomize_weights(m, 0)
    sm, _ = save_load(m, tmp_path)
    twin = compare_training(m, sm, image_batches((8, 7, 3)), record_property)
    x = image_batches((8, 7, 3))[0][0]
    # predict after training (fused Conv+BN fast path on the new weights) == the twin
    assert max_abs(sm.predict(x), twin.predict(x.astype(np.float64), verbose=0)) < 1e-9


def id_batches(n=7, T=9, V=19, classes=3):
    rng = np.random.default_rng(2)
    out = []
    for _ in range(STEPS):
        ids = rng.integers(1, V, (n, T))
        lengths = rng.integers(1, T + 1, n)
        ids[np.arange(T)[None, :] >= lengths[:, None]] = 0   # post-padding
        ids[0, :2] = 0                                         # pre-padding
        ids[1, [3, 4]] = 0                                     # interior padding
        out.append((ids.astype("int32"), rng.integers(0, classes, n)))
    return out


@pytest.mark.parametrize("cell", ["LSTM", "SimpleRNN", "GRU"])
def test_masked_bidirectional(cell, tmp_path, record_property):
    """Embedding(mask_zero) -> Bidirectional (masked pre/post/interior padding) -> Dense:
    the text baselines' shape (the Embedding gets a dense gradient; Keras' Adam also
    decays the moments of rows absent from the batch)."""
    k = keras()
    rnn = getattr(k.layers, cell)
    m = k.Sequential([k.Input((9,), dtype="int32"), k.layers.Embedding(19, 6, mask_zero=True),
                      k.layers.Bidirectional(rnn(5, return_sequences=True), merge_mode="sum"),
                      k.layers.Bidirectional(rnn(4)), k.layers.Dropout(0.0),
                      k.layers.Dense(3, activation="softmax")])
    randomize_weights(m, 1)
    sm, _ = save_load(m, tmp_path)
    compare_training(m, sm, id_batches(), record_property)


def test_weights_alignment_and_roundtrip(tmp_path):
    k = keras()
    m = k.Sequential([k.Input((5, 5, 2)), k.layers.Conv2D(3, 2), k.layers.BatchNormalization(),
                      k.layers.Flatten(), k.layers.Dense(3, activation="softmax")])
    randomize_weights(m, 0)
    sm, _ = save_load(m, tmp_path)
    ws = sm.get_weights()
    assert [w.shape for w in ws] == [w.shape for w in m.get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(ws, m.get_weights()))
    assert sm.trainable_flags == [v.trainable for v in m.weights]
    x = image_batches((5, 5, 2))[0][0]
    sm.set_weights([w * 1.5 for w in ws])
    m.set_weights([w * 1.5 for w in m.get_weights()])
    assert np.allclose(sm.predict(x), m.predict(x, verbose=0), atol=1e-5)
    with pytest.raises(scratch_layers.InputError, match="weight arrays"):
        sm.set_weights(ws[:-1])
    with pytest.raises(scratch_layers.InputError, match="shape"):
        sm.set_weights([w[..., :1] if w.ndim == 4 else w for w in ws])


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_save_after_training_loads_in_keras(fmt, tmp_path):
    k = keras()
    m = k.Sequential([k.Input((9,), dtype="int32"), k.layers.Embedding(19, 6, mask_zero=True),
                      k.layers.Bidirectional(k.layers.LSTM(4)), k.layers.BatchNormalization(),
                      k.layers.Dense(3, activation="softmax")])
    randomize_weights(m, 2)
    sm, _ = save_load(m, tmp_path, fmt=fmt)
    opt = scratch_layers.Adam(learning_rate=0.01)
    for x, y in id_batches():
        sm.train_on_batch(x, y, opt)
    out = os.path.join(str(tmp_path), f"trained.{fmt}")
    sm.save(out)
    back = k.models.load_model(out)
    x = id_batches()[0][0]
    assert all(max_abs(a, b) < 1e-6 for a, b in zip(back.get_weights(), sm.get_weights()))
    assert max_abs(back.predict(x, verbose=0), sm.predict(x)) < 1e-5
    assert max_abs(scratch_layers.load_model(out).predict(x), sm.predict(x)) < 1e-6
    with pytest.raises(ValueError, match="ending in"):
        sm.save(os.path.join(str(tmp_path), "wrong.npz"))


def test_text_model_with_string_input(tmp_path, record_property):
    m, texts = tiny_text_model(keras(), "SimpleRNN", 6, 5, seed=3)
    sm, _ = save_load(m, tmp_path)
    y = np.array([0, 1, 2, 1, 0, 2])
    compare_training(m, sm, [(texts, y)] * STEPS, record_property)
