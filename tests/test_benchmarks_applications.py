"""Forward-pass speed on graph models: ResNet50 and MobileNetV2 (``weights=None``,
perturbed weights), 64 images of 96x96, scratch float64 and float32 and ONNX Runtime
against Keras ``predict`` in one pytest run (ratios of medians; recorded for the
report's speed table, kind ``"bench"`` with ``application: true``).  No timing is
asserted; every output is checked against Keras'.

ONNX Runtime runs each model exported once per module with
``keras_model.export(format="onnx")`` (tf2onnx, :func:`experiments.onnx_export.export_model`:
these graphs hold no augmentation layer, so they are exported as they are), on the CPU
provider with default session options: ``intra_op_num_threads=0``, ONNX Runtime's own
pool of one thread per physical core (2 on the 2-core development machine), nodes run
sequentially.  A model whose export fails is skipped with the exporter's message.

Also the memory of ResNet50's predict: the peak of NumPy's allocations (tracemalloc)
above the input, held under a bound and flat in the batch size, as the study CNN's is."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

import scratch_layers
from experiments.report.records import record
from keras_factories import keras, randomize_weights
from scratch_layers.verify.keras import ATOL, KERAS_BATCH, RTOL
from test_scratch_applications import _unsaturate
from test_scratch_errors import _peak_extra

N_IMAGES, SIZE = 64, 96
MODELS = ["ResNet50", "MobileNetV2"]
INPUTS = f"{N_IMAGES} random images of {SIZE}x{SIZE}"
IMPLS = ["keras", "scratch", "scratch_float32", "onnxruntime"]
# ResNet50 predict's peak above the input (float64, two workers): 42.2 MiB measured on
# 2026-12-06 for 32 images, 39.1 for 128 (21.8 before predict ran in stages: each stage
# holds its own chunk, at most 8x the first); the test allows 25% more and fails with a
# chunk or a tensor held twice as long, or a part that grows with the batch
RESNET50_PEAK_BOUND_MIB = 53


@pytest.fixture(scope="module")
def images():
    """Uniform in [-1, 1]: the preprocessed range both models expect (pixels in [0, 255]
    with random weights gave a one-hot softmax, which any output would match)."""
    return np.random.default_rng(0).uniform(-1, 1, (N_IMAGES, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def application_files(tmp_path_factory, images):
    """Each model with perturbed weights and its classifier scaled so the logits have SD 2
    on the images (``_unsaturate``): the outputs are probabilities, not one-hot, so the
    output checks below compare something."""
    k = keras()
    folder = tmp_path_factory.mktemp("apps")
    paths = {}
    for name in MODELS:
        model = getattr(k.applications, name)(weights=None, input_shape=(SIZE, SIZE, 3), classes=10)
        randomize_weights(model, seed=2)
        _unsaturate(k, model, images[:16])
        paths[name] = folder / f"{name}.keras"
        model.save(paths[name])
    return paths


@pytest.fixture(scope="module")
def keras_models(application_files):
    """Each model loaded in Keras once (loading and tracing a 170-layer graph costs more
    than one timed predict); ``references`` holds its predict on ``images``."""
    return {name: keras().saving.load_model(path) for name, path in application_files.items()}


@pytest.fixture(scope="module")
def references(keras_models, images):
    return {name: m.predict(images, batch_size=KERAS_BATCH, verbose=0) for name, m in keras_models.items()}


@pytest.fixture(scope="module")
def onnx_models(application_files, tmp_path_factory):
    """``get(name)``: the saved model exported to ONNX (once per module, on first use) in
    an ONNX Runtime session; skips the test with the exporter's message if it fails."""
    pytest.importorskip("onnxruntime")
    from experiments.onnx_export import OrtModel, export_model
    folder = tmp_path_factory.mktemp("onnx")
    done = {}

    def get(name):
        if name not in done:
            try:  # a fresh load: the Keras model being timed is not traced again
                model = keras().saving.load_model(application_files[name])
                done[name] = OrtModel(export_model(model, folder / f"{name}.onnx"))
            except Exception as exc:  # noqa: BLE001 -- tf2onnx raises many kinds
                done[name] = f"ONNX export of {name} failed: {type(exc).__name__}: {exc}"
        if isinstance(done[name], str):
            pytest.skip(done[name])
        return done[name]
    return get


def _record(benchmark, request, name, impl):
    if benchmark.stats is not None:  # None under --benchmark-disable
        s = benchmark.stats.stats
        record(request, "bench", family=name, application=True, impl=impl, model=name, inputs=INPUTS,
               n_items=N_IMAGES, mean=s.mean, median=s.median, min=s.min, rounds=s.rounds)


@pytest.mark.bench
@pytest.mark.applications
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", MODELS)
def test_application_forward_speed(benchmark, application_files, keras_models, references, images,
                                   name, impl, request):
    ref = references[name]
    if impl == "keras":
        fn = lambda: keras_models[name].predict(images, batch_size=KERAS_BATCH, verbose=0)  # noqa: E731
    elif impl == "onnxruntime":
        ort_model = request.getfixturevalue("onnx_models")(name)
        fn = lambda: ort_model.predict(images)  # noqa: E731
    else:
        sm = scratch_layers.load_model(application_files[name],
                                       dtype="float32" if impl == "scratch_float32" else "float64")
        fn = lambda: sm.predict(images)  # noqa: E731
    benchmark.group = f"{name}: forward pass over {N_IMAGES} images of {SIZE}x{SIZE}"
    benchmark.extra_info.update(model=name, impl=impl, n_items=N_IMAGES)
    out = benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    assert ref.max() < 0.999, f"{name}: saturated softmax {ref.max()}, a trivial check"
    diff = float(np.abs(out - ref).max())
    print(f"{name} {impl}: max |p - p_keras| {diff:.2e} on {N_IMAGES} images")
    assert np.allclose(out, ref, atol=ATOL, rtol=RTOL), f"{impl}: max |p - p_keras| {diff:.3g}"
    _record(benchmark, request, name, impl)


@pytest.mark.applications
def test_resnet50_predict_memory_is_bounded_and_flat(application_files, images):
    """The executor frees every tensor after its last reader, and predict works in
    chunks: the peak stays under the bound and does not grow with the batch."""
    sm = scratch_layers.load_model(application_files["ResNet50"])
    sm.n_workers = 2
    small = np.concatenate([images[:16]] * 2)
    large = np.concatenate([images] * 2)
    sm.predict(small[:2])
    peaks = {len(x): _peak_extra(lambda x=x: sm.predict(x)) for x in (small, large)}
    outputs_growth = (len(large) - len(small)) * 10 * 8
    print(f"ResNet50 predict peak above the input: " +
          ", ".join(f"{n} images {p / 2 ** 20:.1f} MiB" for n, p in peaks.items()))
    assert peaks[len(large)] < RESNET50_PEAK_BOUND_MIB * 2 ** 20, peaks
    assert peaks[len(large)] - peaks[len(small)] < outputs_growth + 8 * 2 ** 20, peaks
