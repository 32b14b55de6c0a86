"""``keras.applications`` models through scratch_layers, forward and backward.

Each model is built with ``weights=None`` on a small input, every weight and
BatchNormalization statistic perturbed (``randomize_weights``), saved, loaded, and checked:

* forward (the fused predict path): scratch equals Keras' float64 twin within 1e-9
  relative to the output scale, and float32 Keras within atol 1e-5 + rtol 1e-5 unless
  float32 Keras is itself further than that from its twin (the rounding-only rule of the
  study verification: then only the twin decides);
* backward: scratch's loss and gradients of every trainable weight equal
  ``tf.GradientTape`` on the twin within atol 1e-9, rtol 1e-7.

The ``applications`` marker holds the ten models CI runs; the rest of what
frugally-deep converts is marked ``slow`` too and runs only when asked (outside CI:
``SCRATCHNET_ALL_APPLICATIONS=1 pytest -m applications -s``, see the README). Each case
prints its worst differences."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

import scratch_layers
from backward_helpers import TWIN_ATOL, TWIN_RTOL, keras_loss_and_grads, max_abs, twin_of
from keras_factories import keras, randomize_weights
from scratch_layers.verify.keras import ATOL, RTOL, twin_tolerance

# (constructor, input size): the smallest size each accepts with weights=None, or 32
CI_MODELS = [("MobileNetV2", 32), ("MobileNetV3Small", 32), ("ResNet50", 32), ("DenseNet121", 32),
             ("EfficientNetB0", 32), ("InceptionV3", 75), ("Xception", 71), ("NASNetMobile", 32),
             ("VGG16", 32), ("ConvNeXtTiny", 32)]
OTHER_MODELS = [("DenseNet169", 32), ("DenseNet201", 32), ("EfficientNetB1", 32), ("EfficientNetB2", 32),
                ("EfficientNetB3", 32), ("EfficientNetB4", 32), ("EfficientNetB5", 32), ("EfficientNetB6", 32),
                ("EfficientNetB7", 32), ("EfficientNetV2B0", 32), ("EfficientNetV2B1", 32),
                ("EfficientNetV2B2", 32), ("EfficientNetV2B3", 32), ("EfficientNetV2S", 32),
                ("EfficientNetV2M", 32), ("EfficientNetV2L", 32), ("ResNet101", 32), ("ResNet152", 32),
                ("ResNet50V2", 32), ("ResNet101V2", 32), ("ResNet152V2", 32), ("MobileNet", 32),
                ("MobileNetV3Large", 32), ("NASNetLarge", 32), ("VGG19", 32)]
# ConvNeXt's exact gelu: TensorFlow's float64 tf.nn.gelu(approximate=False) is off by up
# to 5.0e-9 (6.6e-7 relative) from 0.5 x (1 + erf(x / sqrt 2)) computed with math.erf on
# [-6, 6], so the twin itself is off; scratch's gelu equals math.erf's to 9e-16. Its twin
# checks get 10x the tolerance
TWIN_SLACK = {"ConvNeXtTiny": 10.0}
N_IMAGES = 2
N_CLASSES = 10


PREPROCESSING_INSIDE = ("EfficientNet", "MobileNetV3", "ConvNeXt")


def _unsaturate(k, model, x):
    """Scale the classifier's kernel so the logits have SD 2 on ``x``: random weights
    through 50+ layers give logits in the hundreds, a one-hot softmax and gradients of
    zero, which would make the comparison trivial."""
    head = next(layer for layer in reversed(model.layers) if layer.get_weights())  # Dense, or a 1x1 Conv2D
    features = np.asarray(k.Model(model.input, head.input)(x, training=False))
    kernel, *rest = head.get_weights()
    logits = features.reshape(len(x), -1) @ kernel.reshape(-1, kernel.shape[-1])
    head.set_weights([kernel * (2.0 / max(float(logits.std()), 1e-6))] + rest)


def build_application(name, size, tmp_path):
    """The perturbed, unsaturated model saved at ``path``: ``(model, x, y, path)``."""
    k = keras()
    model = getattr(k.applications, name)(weights=None, input_shape=(size, size, 3), classes=N_CLASSES)
    randomize_weights(model, seed=1)
    rng = np.random.default_rng(0)
    # models with their own preprocessing (Rescaling/Normalization) take pixels in
    # [0, 255]; the others expect preprocessed input, about [-1, 1]
    u = rng.uniform(0, 1, (N_IMAGES, size, size, 3))
    x = (u * 255.0 if name.startswith(PREPROCESSING_INSIDE) else u * 2.0 - 1.0).astype(np.float32)
    y = rng.integers(0, N_CLASSES, N_IMAGES)
    _unsaturate(k, model, x)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return model, x, y, path


def check_application(name, size, tmp_path):
    """Build, perturb, save, load; returns the measured worst differences."""
    model, x, y, path = build_application(name, size, tmp_path)
    sm = scratch_layers.load_model(path)

    # eager calls, not predict: predict traces a tf.function per model, which for a
    # 400-layer graph costs more than the whole comparison on 2 images
    keras32 = np.asarray(model(x, training=False), np.float64)
    twin = twin_of(model)
    del model
    got = sm.predict(x)
    tloss, tgrads = keras_loss_and_grads(twin, x.astype(np.float64), y, float64=True)
    twin_out = np.asarray(twin(x.astype(np.float64), training=False))
    d64, d32 = max_abs(got, twin_out), max_abs(got, keras32)
    assert twin_out.max() < 0.999, f"{name}: saturated softmax {twin_out.max()}, a trivial check"
    slack = TWIN_SLACK.get(name, 1.0)
    assert d64 <= slack * twin_tolerance(twin_out), f"{name}: scratch vs float64 twin {d64:.3g}"
    rounding_only = not np.allclose(keras32, twin_out, atol=ATOL, rtol=RTOL)
    if not rounding_only:
        assert np.allclose(got, keras32, atol=ATOL, rtol=RTOL), f"{name}: scratch vs float32 {d32:.3g}"

    loss, grads = sm.loss_and_gradients(x, y)
    assert len(grads) == len(twin.trainable_weights)
    worst_grad = abs(loss - tloss)
    for v, g, t in zip(twin.trainable_weights, grads, tgrads):
        assert g.shape == tuple(v.shape), (v.path, g.shape, v.shape)
        assert np.allclose(g, t, atol=slack * TWIN_ATOL, rtol=slack * TWIN_RTOL), \
            f"{name} {v.path}: gradient vs float64 twin {max_abs(g, t):.3g}"
        worst_grad = max(worst_grad, max_abs(g, t))
    assert abs(loss - tloss) <= slack * TWIN_ATOL * max(1.0, abs(tloss)), (loss, tloss)
    print(f"{name} ({size}x{size}, {len(sm.graph.nodes)} nodes, {len(grads)} trainable weights): "
          f"forward max|Δ| vs twin {d64:.2e}, vs float32 {d32:.2e}"
          f"{' (float32 Keras off its twin: rounding only)' if rounding_only else ''}; "
          f"gradients max|Δ| vs twin {worst_grad:.2e}")
    return d64, d32, worst_grad


@pytest.mark.applications
@pytest.mark.parametrize("name,size", CI_MODELS, ids=[n for n, _ in CI_MODELS])
def test_application(name, size, tmp_path, request):
    from experiments.backends import record_case
    from scratch_layers.verify.backends import resolve
    try:
        d64, d32, _ = check_application(name, size, tmp_path)
    except AssertionError as exc:  # the conformance matrix counts it as wrong, with the reason
        record_case(request, resolve("scratch_layers"), "applications", name, "wrong", precision="float64",
                    message=str(exc))
        raise
    record_case(request, resolve("scratch_layers"), "applications", name, "passed", max_abs_diff=d32,
                max_abs_diff_float64=d64, precision="float64")


@pytest.mark.applications
@pytest.mark.parametrize("name,size", CI_MODELS, ids=[n for n, _ in CI_MODELS])
def test_application_on_backend(name, size, backend, tmp_path, request):
    """The forward pass of each application on another implementation (``--backend``):
    equal to Keras under its gate, or refused. scratch_layers' own is ``test_application``."""
    from experiments.backends import check_backend_case
    if backend.is_default:
        pytest.skip("scratch_layers is checked by test_application (forward and backward)")
    model, x, _, path = build_application(name, size, tmp_path)
    check_backend_case(request, backend, "applications", name, model, path, x, TWIN_SLACK.get(name, 1.0))


@pytest.mark.applications
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SCRATCHNET_ALL_APPLICATIONS"),
                    reason="outside CI (minutes each): SCRATCHNET_ALL_APPLICATIONS=1 pytest -m applications")
@pytest.mark.parametrize("name,size", OTHER_MODELS, ids=[n for n, _ in OTHER_MODELS])
def test_application_outside_ci(name, size, tmp_path):
    check_application(name, size, tmp_path)
