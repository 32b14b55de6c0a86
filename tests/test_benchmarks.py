"""Forward-pass speed, scratch vs Keras, on each family's baseline over its whole test split.

Three implementations side by side: Keras ``predict`` (float32), scratch in float64
(the exact reference, the default) and scratch in float32 (``dtype="float32"``); for the
CNN a fourth, ONNX Runtime on the model exported with ``keras_model.export(format="onnx")``
(see :mod:`experiments.onnx_export`), the engine Keras models are often deployed on.
The baselines are the models the speed targets name: the CIFAR CNN with 3 conv blocks
(32-64-128, 3x3, same, max pool, Dense 128, Dense 10) on 10,000 images, and the
bidirectional SimpleRNN / LSTM on the 400 NusaX test texts.  Both run in one session
on the same machine; the report shows the ratio.  No timing is asserted.
"""
import numpy as np
import pytest

import scratch_layers
from experiments.plugin import trained_or_skip
from experiments.report.records import record
from experiments.verification import keras_predict
from scratch_layers.verify.keras import ATOL, KERAS_BATCH, RTOL

pytestmark = [pytest.mark.bench, pytest.mark.slow]


def _record(benchmark, request, family, impl, model, n_items, inputs="test split"):
    if benchmark.stats is not None:  # None under --benchmark-disable
        s = benchmark.stats.stats
        record(request, "bench", family=family.name, impl=impl, model=model, inputs=inputs,
               n_items=n_items, mean=s.mean, median=s.median, min=s.min, rounds=s.rounds)


@pytest.fixture(scope="session")
def bench_models(pytestconfig, family, profile):
    tm = trained_or_skip(pytestconfig, family, family.baseline, profile)
    x = family.load_data().x_test
    return tm, tm.load_keras(), scratch_layers.load_model(tm.path), x


@pytest.fixture(scope="session")
def keras_reference(bench_models):
    """Keras' float32 output on the whole test split, what both scratch paths must match."""
    _, keras_model, _, x = bench_models
    return keras_predict(keras_model, x)


@pytest.mark.parametrize("impl", ["keras", "scratch", "scratch_float32"])
def test_forward_speed(benchmark, bench_models, family, impl, request):
    tm, keras_model, scratch_model, x = bench_models
    if impl == "keras":
        keras_model.predict(x[:KERAS_BATCH], batch_size=KERAS_BATCH, verbose=0)  # build the predict function
        fn = lambda: keras_model.predict(x, batch_size=KERAS_BATCH, verbose=0)  # noqa: E731
    else:
        if impl == "scratch_float32":
            scratch_model = scratch_layers.load_model(tm.path, dtype="float32")
        data = list(x) if x.dtype == object else x
        fn = lambda: scratch_model.predict(data)  # noqa: E731
    benchmark.group = f"{family.name}: forward pass over {len(x)} test items"
    out = benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    assert out.shape == (len(x), len(family.load_data().class_names))
    if impl != "keras":  # the timed outputs are Keras' own, to the project tolerance
        ref = request.getfixturevalue("keras_reference")
        assert np.allclose(out, ref, atol=ATOL, rtol=RTOL), \
            f"{impl}: max |p - p_keras| {np.abs(out - ref).max():.3g} on {len(x)} test items"
        print(f"{family.name} {impl}: max |p - p_keras| {np.abs(out - ref).max():.2e} on {len(x)} items")
    _record(benchmark, request, family, impl, tm.entry.path.name, len(x))


@pytest.fixture(scope="session")
def onnx_model(bench_models, tmp_path_factory):
    """The baseline exported to ONNX (augmentation dropped: identity at inference) in ONNX Runtime."""
    pytest.importorskip("onnxruntime")
    from experiments.onnx_export import OrtModel, export
    tm, keras_model, _, x = bench_models
    if x.dtype == object:
        pytest.skip("text family: TextVectorization takes strings, which the ONNX export does not cover")
    return OrtModel(export(keras_model, tmp_path_factory.mktemp("onnx") / "model.onnx"))


def test_forward_speed_onnxruntime(benchmark, bench_models, onnx_model, family, request):
    """ONNX Runtime, timed in the same session as Keras and scratch (same inputs, same check)."""
    tm, _, _, x = bench_models
    onnx_model.predict(x[:KERAS_BATCH])
    benchmark.group = f"{family.name}: forward pass over {len(x)} test items"
    out = benchmark.pedantic(lambda: onnx_model.predict(x), rounds=5, iterations=1, warmup_rounds=1)
    ref = request.getfixturevalue("keras_reference")
    assert np.allclose(out, ref, atol=ATOL, rtol=RTOL), \
        f"onnxruntime: max |p - p_keras| {np.abs(out - ref).max():.3g} on {len(x)} test items"
    print(f"{family.name} onnxruntime: max |p - p_keras| {np.abs(out - ref).max():.2e} on {len(x)} items")
    _record(benchmark, request, family, "onnxruntime", tm.entry.path.name, len(x))


SCATTERED = "token ids, padding scattered inside rows"


@pytest.fixture(scope="session")
def scattered_ids_models(bench_models, tmp_path_factory):
    """The text baseline without its TextVectorization (token ids in), on the test
    split's ids with each row's padding moved to random places inside the row (token
    order kept): masks that are not post-padding, which the recurrent scan must
    handle without falling back to a slow path."""
    import keras
    tm, keras_model, _, x = bench_models
    if x.dtype != object:
        pytest.skip("image family: no token ids")
    vectorize = keras_model.get_layer("vectorize")
    ids = np.asarray(vectorize(np.asarray(x, dtype=object).astype(str))).astype("int32")
    rest = keras_model.layers[keras_model.layers.index(vectorize) + 1:]
    ids_model = keras.Sequential([keras.Input(ids.shape[1:], dtype="int32")] + rest)
    path = tmp_path_factory.mktemp("ids") / "ids_model.keras"
    ids_model.save(path)
    valid = ids != 0
    keys = np.random.default_rng(0).random(ids.shape)
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    scattered_valid = rank < valid.sum(axis=1, keepdims=True)  # same count per row, random places
    scattered = np.zeros_like(ids)
    scattered[scattered_valid] = ids[valid]  # row-major: each row keeps its token order
    return tm, ids_model, path, scattered


@pytest.mark.parametrize("impl", ["keras", "scratch", "scratch_float32"])
def test_forward_speed_scattered_padding(benchmark, scattered_ids_models, family, impl, request):
    tm, ids_model, path, ids = scattered_ids_models
    if impl == "keras":
        ids_model.predict(ids[:KERAS_BATCH], batch_size=KERAS_BATCH, verbose=0)
        fn = lambda: ids_model.predict(ids, batch_size=KERAS_BATCH, verbose=0)  # noqa: E731
    else:
        m = scratch_layers.load_model(path, dtype="float32" if impl == "scratch_float32" else "float64")
        fn = lambda: m.predict(ids)  # noqa: E731
    benchmark.group = f"{family.name}: forward pass, {SCATTERED}"
    out = benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    assert out.shape == (len(ids), len(family.load_data().class_names))
    _record(benchmark, request, family, impl, tm.entry.path.name, len(ids), SCATTERED)
