"""Forward-pass speed, scratch vs Keras, on each family's baseline over its whole test split.

Three implementations side by side: Keras ``predict`` (float32), scratch in float64
(the exact reference, the default) and scratch in float32 (``dtype="float32"``).
The baselines are the models the speed targets name: the CIFAR CNN with 3 conv blocks
(32-64-128, 3x3, same, max pool, Dense 128, Dense 10) on 10,000 images, and the
bidirectional SimpleRNN / LSTM on the 400 NusaX test texts.  Both run in one session
on the same machine; the report shows the ratio.  No timing is asserted.
"""
import pytest

import scratch_layers
from experiments.plugin import trained_or_skip
from experiments.report import record
from experiments.verify import KERAS_BATCH

pytestmark = [pytest.mark.bench, pytest.mark.slow]


@pytest.fixture(scope="session")
def bench_models(pytestconfig, family, profile):
    tm = trained_or_skip(pytestconfig, family, family.baseline, profile)
    x = family.load_data().x_test
    return tm, tm.load_keras(), scratch_layers.load_model(tm.path), x


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
    out = benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == (len(x), len(family.load_data().class_names))
    if benchmark.stats is not None:  # None under --benchmark-disable
        s = benchmark.stats.stats
        record(request, "bench", family=family.name, impl=impl, model=tm.entry.path.name,
               n_items=len(x), mean=s.mean, min=s.min, rounds=s.rounds)
