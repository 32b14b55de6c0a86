"""The roofline of predict (:mod:`experiments.roofline`): each conv, dense and depthwise
step of the study CNN, ResNet50 and MobileNetV2 with its nominal FLOPs, time, GFLOP/s (GB/s
for steps without FLOPs) against the sgemm/dgemm peak measured in the same session, and the
whole forward pass split into GEMM time and the rest.

The benchmarks time ``predict`` with pytest-benchmark (5 rounds) and put the roofline rows
and the split in ``benchmark.extra_info`` and in the report's records (kind ``roofline``);
the tables are printed (``-s`` shows them). Under ``--benchmark-disable`` (``make test``)
they are skipped: the roofline's own code is checked by the fast test at the top. No
timing is asserted."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

import scratch_layers
from experiments import roofline
from experiments.report.records import record
from keras_factories import keras, randomize_weights

DTYPES = ["float32", "float64"]
# roofs as machine_roofs gives them, low enough for the first resample to raise them
FAKE_ROOFS = {"gemm_gflops": {"float32": {"1": 1e-3}, "float64": {"1": 1e-3}},
              "bandwidth_gbs": 1e-3, "gemm_size": 64, "bandwidth_bytes": 2 ** 23}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Conv2D 3x3 valid on 8x8x2 -> 6x6x4, DepthwiseConv2D 3x3 same x2 -> 6x6x8, Dense 3."""
    k = keras()
    model = k.Sequential([k.Input((8, 8, 2)), k.layers.Conv2D(4, 3, name="conv"),
                          k.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw"),
                          k.layers.Flatten(name="flat"), k.layers.Dense(3, name="dense")])
    randomize_weights(model, seed=1)
    path = tmp_path_factory.mktemp("roofline") / "tiny.keras"
    model.save(path)
    return path


def test_roofline_counts_flops_from_shapes_and_sees_the_gemms(tiny_model):
    m = scratch_layers.load_model(tiny_model)
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 2))
    roofs = roofline.roofs_for(FAKE_ROOFS, m.dtype)
    rows = {r["step"]: r for r in roofline.node_roofline(m, x, repeats=1, roofs=roofs)}
    conv, dw, flat, dense = rows["conv"], rows["dw"], rows["flat"], rows["dense"]
    assert (conv["kind"], dw["kind"], flat["kind"], dense["kind"]) == ("conv", "depthwise", "other", "dense")
    assert conv["flops"] == 5 * 2 * (6 * 6) * (3 * 3 * 2) * 4      # 2 Ho Wo kh kw Cin F per image
    assert dw["flops"] == 5 * 2 * (6 * 6) * (3 * 3) * 4 * 2        # 2 Ho Wo kh kw C M
    assert dense["flops"] == 5 * 2 * (6 * 6 * 8) * 3               # 2 in out per row
    assert flat["flops"] == 0
    # the convolution's matmuls go through profiling.gemm: the clock sees them, and they
    # multiply no more than direct convolution (im2col: exactly as much; Winograd: less)
    assert conv["gemm_calls"] >= 1 and conv["gemm_seconds"] > 0
    assert 0 < conv["gemm_flops"] <= conv["flops"]
    assert dense["gemm_flops"] == dense["flops"]
    # bytes: input + output once, the kernel once per chunk (one chunk here)
    assert dw["bytes"] == (5 * (6 * 6 * 4 + 6 * 6 * 8) + 3 * 3 * 4 * 2) * 8
    # the roofs were sampled again after the repeat (and beat the fake ones), on a copy
    assert roofs["peak_gflops"] > 1e-3 and roofs["bandwidth_gbs"] > 1e-3
    assert roofs["gemm_gflops"]["float64"]["1"] == roofs["peak_gflops"]
    assert FAKE_ROOFS["gemm_gflops"]["float64"]["1"] == 1e-3
    assert dense["roof"] == pytest.approx(min(roofs["peak_gflops"], dense["intensity"] * roofs["bandwidth_gbs"]))
    assert all(r["seconds"] > 0 for r in rows.values())

    split = roofline.forward_split(m, x, repeats=1)
    assert split["gemm_calls"] >= 2 and 0 < split["gemm_seconds"] <= split["worker_seconds"] * 1.5
    result = {"model": "tiny", "dtype": "float64", "n_items": 5, "split": split,
              "roofs": roofs, "machine": roofline.machine(),
              "rows": list(rows.values())}
    text = roofline.format_result(result)
    assert "| conv | conv | 0.000 |" in text and "| **all steps** |" in text and "GEMM share" in text


def test_gemm_peak_and_bandwidth_are_measured():
    assert roofline.gemm_peak("float64", threads=1, size=128, repeats=1) > 0
    assert roofline.memory_bandwidth("float32", nbytes=3 * 2 ** 16, repeats=2) > 0


# ---------------------------------------------------------------------------- benchmarks

@pytest.fixture(scope="session")
def roofs():
    """The GEMM peaks and bandwidth, measured once per session (about 12 s)."""
    return roofline.machine_roofs()


_APPS = {}


def _application(name, folder):
    """The keras.applications model saved once per session (building it costs seconds)."""
    if name not in _APPS:
        _APPS[name] = roofline.application_file(roofline.APPLICATIONS[name], folder)
    return _APPS[name]


def _model_and_images(name, dtype, request, tmp_path_factory):
    if name == "cnn":
        from experiments.families import family
        from experiments.plugin import trained_or_skip

        fam = family("cnn")
        tm = trained_or_skip(request.config, fam, fam.baseline, request.getfixturevalue("profile"))
        x = fam.load_data().x_test[:roofline.DEFAULT_IMAGES["cnn"]]
        return scratch_layers.load_model(tm.path, dtype=dtype), x, \
            f"study CNN ({tm.entry.path.name}), CIFAR-10 test images"
    path = _application(name, tmp_path_factory.mktemp("roofline_apps"))
    x = roofline.application_images(roofline.DEFAULT_IMAGES[name])
    size = roofline.APPLICATION_SIZE
    return scratch_layers.load_model(path, dtype=dtype), x, \
        f"{roofline.APPLICATIONS[name]}, {len(x)} random images of {size}x{size}"


@pytest.mark.bench
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", [pytest.param("cnn", marks=[pytest.mark.slow, pytest.mark.cnn]),
                                  pytest.param("resnet50", marks=pytest.mark.applications),
                                  pytest.param("mobilenetv2", marks=pytest.mark.applications)])
def test_roofline(benchmark, name, dtype, request, tmp_path_factory):
    if benchmark.disabled:
        pytest.skip("roofline: timings are off (--benchmark-disable)")
    model, x, label = _model_and_images(name, dtype, request, tmp_path_factory)
    result = roofline.measure(model, x, label, request.getfixturevalue("roofs"))
    benchmark.group = f"roofline: {label}"
    benchmark.extra_info.update(model=name, dtype=dtype, n_items=len(x), roofs=result["roofs"],
                                split=result["split"], rows=result["rows"], machine=result["machine"])
    benchmark.pedantic(lambda: model.predict(x), rounds=5, iterations=1, warmup_rounds=1)
    print("\n" + roofline.format_result(result))
    s = benchmark.stats.stats
    record(request, "roofline", model=name, label=label, dtype=dtype, n_items=len(x),
           median=s.median, min=s.min, rounds=s.rounds, roofs=result["roofs"], split=result["split"],
           rows=result["rows"], machine=result["machine"])
