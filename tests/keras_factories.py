"""Shared helpers for the scratch_layers tests: build small Keras models with random
non-default weights, save them, load them with scratch_layers and compare."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

ATOL = 1e-5
RTOL = 1e-5


def keras():
    import keras as k
    return k


def randomize_weights(model, seed=0):
    """Give every variable a random, non-default value (kernels ~ N(0, 1/fan_in),
    biases/BN shifts ~ U(-0.5, 0.5), BN scales/variances ~ U(0.5, 1.5))."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        path = v.path
        shape = tuple(v.shape)
        if v.dtype not in ("float16", "float32", "float64"):
            continue  # e.g. an adapted Normalization's count
        if "variance" in path or "gamma" in path:
            val = rng.uniform(0.5, 1.5, shape)
        elif "moving_mean" in path or "beta" in path or "bias" in path:
            val = rng.uniform(-0.5, 0.5, shape)
        elif "embeddings" in path:
            val = rng.normal(0, 0.5, shape)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[:-1]))
            val = rng.normal(0, 1.0 / np.sqrt(fan_in), shape)
        else:
            val = rng.normal(0, 0.5, shape)
        v.assign(val.astype(np.float32))
    return model


def save_load(model, tmp_path, fmt="keras", name="m"):
    import scratch_layers
    path = os.path.join(str(tmp_path), f"{name}.{fmt}")
    model.save(path)
    return scratch_layers.load_model(path), path


def assert_close(scratch_out, keras_out, record_property=None, what="", atol=ATOL, rtol=RTOL):
    scratch_out = np.asarray(scratch_out)
    keras_out = np.asarray(keras_out)
    assert scratch_out.shape == keras_out.shape, (
        f"{what}: shape scratch {scratch_out.shape} != keras {keras_out.shape}")
    diff = float(np.max(np.abs(scratch_out - keras_out.astype(np.float64)))) if scratch_out.size else 0.0
    if record_property is not None:
        record_property("max_abs_diff", diff)
    print(f"{what} max|diff|={diff:.3g}")
    assert np.allclose(scratch_out, keras_out, atol=atol, rtol=rtol), (
        f"{what}: scratch != keras, max |diff| = {diff:.3g}")
    return diff


def check_model(model, x, tmp_path, record_property=None, fmt="keras", batch_sizes=(None,), seed=0,
                randomize=True):
    """Randomize, save, load with scratch, compare predict on x (for every batch_size)
    and on a single sample. Returns (scratch_model, worst diff)."""
    if randomize:
        randomize_weights(model, seed)
    sm, _ = save_load(model, tmp_path, fmt)
    ref = model.predict(x, verbose=0, batch_size=256)
    worst = 0.0
    for bs in batch_sizes:
        got = sm.predict(x, batch_size=bs)
        worst = max(worst, assert_close(got, ref, None, f"batch_size={bs}"))
    one = sm.predict(x[:1])
    worst = max(worst, assert_close(one, ref[:1], None, "single sample"))
    if record_property is not None:
        record_property("max_abs_diff", worst)
    return sm, worst


TINY_TEXTS = ["the cat sat", "a dog ran far away", "the dog", "cat cat cat sat on mat", "zebra", "a cat"]


def tiny_text_model(k, cell, n_texts, sequence_length, seed):
    """Raw strings -> TextVectorization -> Embedding(mask_zero) -> Bidirectional(cell(3))
    -> Dense 3 softmax, adapted on the first ``n_texts`` of TINY_TEXTS, random weights.
    Returns (model, texts)."""
    texts = np.array(TINY_TEXTS[:n_texts], dtype=object)
    tv = k.layers.TextVectorization(output_sequence_length=sequence_length)
    tv.adapt(texts)
    inp = k.Input((), dtype="string")
    h = k.layers.Embedding(tv.vocabulary_size(), 4, mask_zero=True)(tv(inp))
    h = k.layers.Bidirectional(getattr(k.layers, cell)(3))(h)
    m = k.Model(inp, k.layers.Dense(3, activation="softmax")(h))
    randomize_weights(m, seed)
    return m, texts


def refusal_peak(call, match, error=None):
    """Run ``call()``, which must raise ``error`` (ModelFileError unless given) matching
    ``match``; returns the peak bytes tracemalloc saw meanwhile (a size check that refuses
    before allocating keeps it small)."""
    import tracemalloc

    import pytest
    from scratch_layers import ModelFileError
    tracemalloc.start()
    try:
        with pytest.raises(error or ModelFileError, match=match):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
