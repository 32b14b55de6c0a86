"""scratch_layers vs Keras: convolution, pooling, dense, activations, normalisation
and the inference no-op layers (small random models, non-default weights)."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import assert_close, check_model, keras  # noqa: E402
from scratch_reference import conv2d_ref, pool2d_backward_ref, pool2d_ref  # noqa: E402

pytestmark = pytest.mark.scratch

RNG = np.random.default_rng(1234)


def images(n, h, w, c, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, w, c)).astype("float32")


# ---------------------------------------------------------------- Conv2D
CONV_CASES = [
    # id, (H, W, C), conv kwargs
    ("k3-same-odd", (7, 9, 3), dict(filters=4, kernel_size=3, padding="same")),
    ("k3-valid", (8, 8, 2), dict(filters=3, kernel_size=3, padding="valid")),
    ("k2-even-same", (7, 6, 3), dict(filters=4, kernel_size=2, padding="same")),
    ("k4-even-same-s2", (9, 7, 2), dict(filters=3, kernel_size=4, strides=2, padding="same")),
    ("k3-same-s2-odd", (7, 9, 3), dict(filters=4, kernel_size=3, strides=2, padding="same")),
    ("k3-same-s2-even", (8, 8, 3), dict(filters=4, kernel_size=3, strides=2, padding="same")),
    ("k1x3-s2x1-same", (7, 8, 3), dict(filters=2, kernel_size=(1, 3), strides=(2, 1), padding="same")),
    ("k3-valid-s3", (10, 11, 2), dict(filters=3, kernel_size=3, strides=3, padding="valid")),
    ("k5-s2-valid", (11, 12, 2), dict(filters=2, kernel_size=5, strides=2, padding="valid")),
    ("k3-dil2-same", (9, 8, 2), dict(filters=3, kernel_size=3, dilation_rate=2, padding="same")),
    ("k2-dil3-valid", (9, 10, 2), dict(filters=3, kernel_size=2, dilation_rate=3, padding="valid")),
    ("k3-dil-2x1-same", (8, 7, 2), dict(filters=2, kernel_size=3, dilation_rate=(2, 1), padding="same")),
    ("k1-pointwise", (5, 5, 4), dict(filters=3, kernel_size=1)),
    ("no-bias-relu", (6, 6, 3), dict(filters=4, kernel_size=3, padding="same", use_bias=False, activation="relu")),
    ("tanh", (6, 6, 3), dict(filters=4, kernel_size=3, activation="tanh")),
    ("kernel-larger-than-input-same", (2, 3, 2), dict(filters=2, kernel_size=5, padding="same")),
]


@pytest.mark.parametrize("shape,kw", [c[1:] for c in CONV_CASES], ids=[c[0] for c in CONV_CASES])
def test_conv2d(shape, kw, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input(shape), k.layers.Conv2D(**kw)])
    check_model(m, images(9, *shape), tmp_path, record_property, batch_sizes=(None, 4))


@pytest.mark.parametrize("kw", [
    dict(filters=3, kernel_size=3, padding="same"),
    dict(filters=2, kernel_size=4, padding="causal", dilation_rate=2),
    dict(filters=2, kernel_size=2, strides=2, padding="valid", activation="relu", use_bias=False),
], ids=["same", "causal-dil2", "s2-valid-nobias"])
def test_conv1d(kw, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((11, 3)), k.layers.Conv1D(**kw)])
    check_model(m, images(5, 11, 3, 1)[..., 0], tmp_path, record_property)


@pytest.mark.parametrize("kw", [dict(kernel_size=3, padding="same", depth_multiplier=2),
                                dict(kernel_size=2, strides=2, padding="valid")],
                         ids=["same-mult2", "s2-valid"])
def test_depthwise_conv2d(kw, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((7, 8, 3)), k.layers.DepthwiseConv2D(**kw)])
    check_model(m, images(4, 7, 8, 3), tmp_path, record_property)


# ---------------------------------------------------------------- pooling
POOL_CASES = [
    ("p2-valid", dict(pool_size=2)),
    ("p2-same-odd", dict(pool_size=2, padding="same")),
    ("p3-s2-same", dict(pool_size=3, strides=2, padding="same")),
    ("p3-s1-same", dict(pool_size=3, strides=1, padding="same")),
    ("p3-s2-valid", dict(pool_size=3, strides=2)),
    ("p2x3-s1x2-same", dict(pool_size=(2, 3), strides=(1, 2), padding="same")),
]


@pytest.mark.parametrize("kind", ["MaxPooling2D", "AveragePooling2D"])
@pytest.mark.parametrize("kw", [c[1] for c in POOL_CASES], ids=[c[0] for c in POOL_CASES])
def test_pool2d(kind, kw, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((7, 9, 2)), getattr(k.layers, kind)(**kw)])
    check_model(m, images(6, 7, 9, 2), tmp_path, record_property, randomize=False)


@pytest.mark.parametrize("kind", ["MaxPooling1D", "AveragePooling1D"])
@pytest.mark.parametrize("kw", [dict(pool_size=2), dict(pool_size=3, strides=2, padding="same")],
                         ids=["p2", "p3-s2-same"])
def test_pool1d(kind, kw, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((9, 3)), getattr(k.layers, kind)(**kw)])
    check_model(m, images(4, 9, 3, 1)[..., 0], tmp_path, record_property, randomize=False)


@pytest.mark.parametrize("kind", ["GlobalAveragePooling2D", "GlobalMaxPooling2D"])
@pytest.mark.parametrize("keepdims", [False, True], ids=["flat", "keepdims"])
def test_global_pool2d(kind, keepdims, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((5, 7, 3)), getattr(k.layers, kind)(keepdims=keepdims)])
    check_model(m, images(4, 5, 7, 3), tmp_path, record_property, randomize=False)


# ---------------------------------------------------------------- dense / activations
ACTS = ["linear", "relu", "sigmoid", "tanh", "softmax", "elu", "selu", "softplus", "softsign",
        "gelu", "swish", "silu", "leaky_relu", "relu6", "hard_sigmoid", "hard_silu",
        "exponential", "log_softmax", "mish", "celu", "hard_tanh", "tanh_shrink",
        "log_sigmoid", "squareplus", "sparse_plus", "soft_shrink", "hard_shrink",
        "sparse_sigmoid", "sparsemax"]


@pytest.mark.parametrize("act", ACTS)
def test_dense_activation(act, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((6,)), k.layers.Dense(7, activation=act)])
    x = (np.random.default_rng(3).normal(size=(16, 6)) * 2).astype("float32")
    check_model(m, x, tmp_path, record_property)


@pytest.mark.parametrize("act", ["relu", "gelu", "sigmoid", "softmax", "elu"])
def test_activation_layer(act, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((5,)), k.layers.Dense(6), k.layers.Activation(act)])
    check_model(m, np.random.default_rng(4).normal(size=(8, 5)).astype("float32"), tmp_path, record_property)


@pytest.mark.parametrize("layer", [
    lambda k: k.layers.ReLU(),
    lambda k: k.layers.ReLU(max_value=0.5),
    lambda k: k.layers.ReLU(negative_slope=0.1, threshold=0.2),
    lambda k: k.layers.ReLU(max_value=1.0, negative_slope=0.3, threshold=0.1),
    lambda k: k.layers.LeakyReLU(),
    lambda k: k.layers.LeakyReLU(negative_slope=0.05),
    lambda k: k.layers.ELU(alpha=0.7),
    lambda k: k.layers.Softmax(),
], ids=["relu", "relu-max", "relu-slope-thr", "relu-all", "leaky-default", "leaky-0.05", "elu-0.7",
        "softmax"])
def test_activation_layers_with_options(layer, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((5,)), k.layers.Dense(8), layer(k)])
    check_model(m, np.random.default_rng(5).normal(size=(8, 5)).astype("float32"), tmp_path, record_property)


def test_dense_no_bias_rank3(tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((4, 5)), k.layers.Dense(3, use_bias=False, activation="tanh")])
    check_model(m, images(6, 4, 5, 1)[..., 0], tmp_path, record_property)


# ---------------------------------------------------------------- normalisation
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False), (False, False)],
                         ids=["center-scale", "scale-only", "center-only", "neither"])
def test_batchnorm(center, scale, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((5, 6, 3)), k.layers.Conv2D(4, 3, padding="same"),
                      k.layers.BatchNormalization(center=center, scale=scale, epsilon=0.01),
                      k.layers.Flatten(), k.layers.Dense(5),
                      k.layers.BatchNormalization(center=center, scale=scale)])
    check_model(m, images(8, 5, 6, 3), tmp_path, record_property)


def test_layer_normalization(tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((7,)), k.layers.Dense(6), k.layers.LayerNormalization(epsilon=1e-4)])
    check_model(m, images(5, 7, 1, 1)[..., 0, 0], tmp_path, record_property)


# ---------------------------------------------------------------- misc layers
NOOPS = ["Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
         "ActivityRegularization", "RandomFlip", "RandomTranslation", "RandomRotation",
         "RandomZoom", "RandomContrast", "RandomBrightness"]
NOOP_ARGS = {"Dropout": (0.5,), "SpatialDropout2D": (0.5,), "GaussianNoise": (1.0,),
             "GaussianDropout": (0.5,), "AlphaDropout": (0.5,), "RandomTranslation": (0.2, 0.2),
             "RandomRotation": (0.2,), "RandomZoom": (0.2,), "RandomContrast": (0.5,),
             "RandomBrightness": (0.3,)}


@pytest.mark.parametrize("name", NOOPS)
def test_inference_noop_layers(name, tmp_path, record_property):
    k = keras()
    layer = getattr(k.layers, name)(*NOOP_ARGS.get(name, ()))
    m = k.Sequential([k.Input((6, 6, 3)), layer, k.layers.Conv2D(2, 3), k.layers.Flatten()])
    x = np.random.default_rng(6).uniform(0, 1, size=(4, 6, 6, 3)).astype("float32")
    check_model(m, x, tmp_path, record_property)


def test_rescaling_reshape_zeropad_permute(tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((12,)), k.layers.Rescaling(1 / 255.0, offset=-0.5),
                      k.layers.Reshape((2, 3, 2)), k.layers.ZeroPadding2D(((1, 0), (2, 1))),
                      k.layers.Conv2D(3, 2), k.layers.Permute((2, 1, 3)), k.layers.Flatten()])
    x = np.random.default_rng(7).uniform(0, 255, size=(5, 12)).astype("float32")
    check_model(m, x, tmp_path, record_property)


def cifar_cnn(k, pool="max", bn=False, head="flatten", filters=(32, 64, 128)):
    Pool = k.layers.MaxPooling2D if pool == "max" else k.layers.AveragePooling2D
    layers = [k.Input((32, 32, 3)), k.layers.RandomFlip("horizontal"), k.layers.RandomTranslation(0.1, 0.1)]
    for f in filters:
        layers.append(k.layers.Conv2D(f, 3, padding="same", activation="relu"))
        if bn:
            layers.append(k.layers.BatchNormalization())
        layers.append(Pool(2))
    layers.append(k.layers.Flatten() if head == "flatten" else k.layers.GlobalAveragePooling2D())
    layers += [k.layers.Dropout(0.3), k.layers.Dense(128, activation="relu"), k.layers.Dropout(0.3),
               k.layers.Dense(10, activation="softmax")]
    return k.Sequential(layers)


@pytest.mark.parametrize("pool,bn,head", [("max", False, "flatten"), ("avg", True, "gap")],
                         ids=["max-flatten", "avg-bn-gap"])
def test_cifar_study_cnn_large_batch(pool, bn, head, tmp_path, record_property):
    """The study architecture on a batch larger than the automatic chunk size."""
    k = keras()
    m = cifar_cnn(k, pool, bn, head, filters=(16, 32, 32))
    x = np.random.default_rng(8).uniform(0, 1, size=(300, 32, 32, 3)).astype("float32")
    sm, _ = check_model(m, x, tmp_path, record_property, batch_sizes=(None, 1000, 64))
    assert sm._chunk_size(x) < 300, "test should exercise chunking"
    assert (sm.predict_classes(x[:20]) == np.argmax(m.predict(x[:20], verbose=0), -1)).all()


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_legacy_h5_and_keras_formats(fmt, tmp_path, record_property):
    k = keras()
    m = cifar_cnn(k, "max", True, "flatten", filters=(4, 8))
    x = np.random.default_rng(9).uniform(0, 1, size=(6, 32, 32, 3)).astype("float32")
    check_model(m, x, tmp_path, record_property, fmt=fmt)


def test_functional_chain_and_intermediate_outputs(tmp_path, record_property):
    import scratch_layers
    k = keras()
    inp = k.Input((8, 8, 3))
    h = k.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    h = k.layers.MaxPooling2D(name="p1")(h)
    h = k.layers.Flatten(name="f")(h)
    h = k.layers.Dense(6, activation="relu", name="d1")(h)
    out = k.layers.Dense(3, activation="softmax", name="d2")(h)
    m = k.Model(inp, out)
    x = images(5, 8, 8, 3)
    sm, _ = check_model(m, x, tmp_path, record_property)
    inter = sm.intermediate_outputs(x)
    assert list(inter) == ["c1", "p1", "f", "d1", "d2"]
    kout = {l.name: k.Model(inp, l.output).predict(x, verbose=0) for l in m.layers[1:]}
    name, diff = scratch_layers.first_divergence(inter, kout, 1e-5, 1e-5)
    assert name is None and diff < 1e-5
    kout["d1"] = kout["d1"] + 1.0  # a corrupted layer is found
    assert scratch_layers.first_divergence(inter, kout)[0] == "d1"
    assert [l.name for l in sm.layers] == ["c1", "p1", "f", "d1", "d2"]
    y = x.astype(np.float64)
    for layer in sm.layers:  # each layer is callable on its own
        y = layer.forward(y)
    assert_close(y, kout["d2"], record_property, "layer-by-layer")


# ---------------------------------------------------------------- reference loops
REF_CASES = [
    ((5, 6, 2), (3, 3), (1, 1), "same", (1, 1)),
    ((5, 6, 2), (2, 2), (1, 1), "same", (1, 1)),
    ((7, 6, 2), (4, 3), (2, 2), "same", (1, 1)),
    ((7, 8, 1), (3, 3), (2, 3), "valid", (1, 1)),
    ((7, 8, 2), (3, 2), (1, 1), "same", (2, 3)),
    ((6, 6, 2), (2, 3), (1, 1), "valid", (2, 1)),
]


@pytest.mark.parametrize("shape,ksize,strides,padding,dil", REF_CASES,
                         ids=[f"{c[1]}-{c[2]}-{c[3]}-d{c[4]}" for c in REF_CASES])
def test_conv2d_matches_loop_reference(shape, ksize, strides, padding, dil):
    from scratch_layers.layers.conv import conv2d
    rng = np.random.default_rng(10)
    x = rng.normal(size=(2,) + shape)
    kern = rng.normal(size=ksize + (shape[2], 3))
    np.testing.assert_allclose(conv2d(x, kern, strides, padding, dil),
                               conv2d_ref(x, kern, strides, padding, dil), atol=1e-12)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("pool,strides,padding", [((2, 2), (2, 2), "same"), ((3, 3), (2, 2), "same"),
                                                  ((3, 2), (1, 2), "same"), ((2, 3), (2, 1), "valid")],
                         ids=["2-s2-same", "3-s2-same", "3x2-s1x2-same", "2x3-s2x1-valid"])
def test_pool2d_matches_loop_reference(mode, pool, strides, padding):
    from scratch_layers.layers.pooling import pool2d
    x = np.random.default_rng(11).normal(size=(2, 7, 5, 3))
    np.testing.assert_allclose(pool2d(x, pool, strides, padding, mode),
                               pool2d_ref(x, pool, strides, padding, mode), atol=1e-12)


POOL_BACKWARD_CASES = [((2, 2), (2, 2), "valid"), ((2, 2), (2, 2), "same"), ((3, 2), (3, 2), "valid"),
                       ((3, 3), (2, 2), "same"), ((2, 3), (2, 1), "valid")]


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("pool,strides,padding", POOL_BACKWARD_CASES,
                         ids=["tiled-2", "tiled-2-same-padded", "tiled-3x2-cropped",
                              "3-s2-same-overlapping", "2x3-s2x1-valid"])
def test_pool2d_backward_matches_loop_reference(mode, pool, strides, padding):
    """Both paths of pool2d_backward (windows that tile the input, cropped or not, and the
    general accumulation) equal the loop reference exactly, ties included: the integer
    input has many equal cells, and max pooling must pick each window's first maximum."""
    from scratch_layers.layers.pooling import pool2d, pool2d_backward
    rng = np.random.default_rng(12)
    x = rng.integers(0, 3, size=(3, 7, 8, 2)).astype(np.float64)
    y = pool2d(x, pool, strides, padding, mode)
    dy = rng.normal(size=y.shape)
    # overlapping average windows add their shares in another order: equal to rounding
    np.testing.assert_allclose(pool2d_backward(x, y, dy, pool, strides, padding, mode),
                               pool2d_backward_ref(x, dy, pool, strides, padding, mode),
                               rtol=1e-15, atol=1e-15 if mode == "avg" else 0)


@pytest.mark.parametrize("conv_kw,pool_kw", [
    (dict(activation="relu"), dict(padding="same")),
    (dict(activation="linear", use_bias=False), dict(pool_size=3, strides=2)),
    (dict(activation="tanh"), dict()),
], ids=["relu-poolsame-odd", "linear-nobias-p3s2", "tanh-not-fused"])
def test_conv_maxpool_fusion(conv_kw, pool_kw, tmp_path, record_property):
    """predict() pools before bias/relu (exact); intermediate_outputs() does not fuse."""
    k = keras()
    m = k.Sequential([k.Input((9, 7, 3)), k.layers.Conv2D(4, 3, padding="same", **conv_kw),
                      k.layers.MaxPooling2D(**pool_kw), k.layers.Flatten()])
    x = images(6, 9, 7, 3)
    sm, _ = check_model(m, x, tmp_path, record_property)
    inter = sm.intermediate_outputs(x)
    np.testing.assert_allclose(list(inter.values())[-1], sm.predict(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("bias,relu,pool", [(False, "plain", "max"), (True, "plain", "avg"),
                                            (False, "clipped", "max"), (True, "threshold", "max")],
                         ids=["nobias-relu-max", "bias-relu-avg", "nobias-relu1.5-max",
                              "bias-threshold-max"])
def test_conv_batchnorm_relu_folding(bias, relu, pool, tmp_path, record_property):
    """predict() folds Conv2D -> BatchNormalization [-> ReLU, plain or clipped] into one conv:
    equal to Keras, and to the unfused layer-by-layer path to float64 rounding; a ReLU
    with a threshold is not folded. Only a plain ReLU then pools before its bias and relu
    (the fused Conv2D -> MaxPooling2D pair)."""
    k = keras()
    L = k.layers
    layers = [k.Input((10, 8, 3)), L.Conv2D(5, 3, padding="same", use_bias=bias), L.BatchNormalization()]
    layers += [{"plain": L.ReLU(), "clipped": L.ReLU(max_value=1.5),
                "threshold": L.ReLU(threshold=0.2)}[relu]]
    layers += [L.MaxPooling2D() if pool == "max" else L.AveragePooling2D(2), L.Flatten()]
    x = images(7, 10, 8, 3)
    sm, _ = check_model(k.Sequential(layers), x, tmp_path, record_property)
    convs = [getattr(step[0], "conv", step[0]) for step in sm._plan]  # a fused pair holds its conv
    folded = [c for c in convs if type(c).__name__ == "Conv2D"]
    assert folded and folded[0] is not sm.layers[0], "conv and batch norm are folded"
    assert len(sm._plan) == (4 if relu == "threshold" else 3) - (relu == "plain" and pool == "max")
    inter = list(sm.intermediate_outputs(x).values())[-1]
    np.testing.assert_allclose(sm.predict(x), inter, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("pool", ["none", "max"])
def test_zero_padding_absorbed_by_the_following_conv(pool, tmp_path, record_property):
    """ZeroPadding2D -> a 'valid' Conv2D (ResNet50's stem: asymmetric pads, stride 2) runs as
    one step that pads inside its patches: equal to Keras and to the unfused path; a
    'same' conv after the padding keeps its own step."""
    k = keras()
    L = k.layers
    layers = [k.Input((11, 9, 3)), L.ZeroPadding2D(((1, 2), (3, 0))),
              L.Conv2D(4, 3, strides=2, padding="valid", activation="relu")]
    layers += [L.MaxPooling2D()] if pool == "max" else []
    layers += [L.ZeroPadding2D(1), L.Conv2D(3, 3, padding="same"), L.Flatten()]
    x = images(5, 11, 9, 3)
    sm, _ = check_model(k.Sequential(layers), x, tmp_path, record_property)
    assert [step[0].class_name for step in sm._plan] == \
        ["Conv2D+MaxPooling2D" if pool == "max" else "Conv2D", "ZeroPadding2D", "Conv2D", "Flatten"]
    inter = list(sm.intermediate_outputs(x).values())[-1]
    np.testing.assert_allclose(sm.predict(x), inter, rtol=1e-13, atol=1e-13)


def test_predict_independent_of_workers_and_chunks(tmp_path):
    k = keras()
    m = cifar_cnn(k, "max", False, "flatten", filters=(4, 8))
    from keras_factories import randomize_weights, save_load
    randomize_weights(m)
    sm, _ = save_load(m, tmp_path)
    x = np.random.default_rng(12).uniform(0, 1, size=(50, 32, 32, 3))
    sm.n_workers = 1
    a = sm.predict(x, batch_size=7)
    sm.n_workers = 3
    b = sm.predict(x, batch_size=7)
    c = sm.predict(x)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-14)


def test_blockwise_conv_in_predict_equals_the_whole_chunk(tmp_path, monkeypatch):
    """predict convolves a chunk in blocks of images (the fused Conv2D -> MaxPooling2D
    step, blocks bounded by CONV_BLOCK_BYTES); blocks of 1, 3 (ragged last block) and
    all 10 images give the same output, and the chunk is sized by the activations held
    whole (here the input), not by conv1's output and im2col."""
    import scratch_layers.engine.fusions as fusions_mod
    import scratch_layers.engine.model as model_mod
    from keras_factories import randomize_weights, save_load
    k = keras()
    m = randomize_weights(cifar_cnn(k, "max", False, "flatten", filters=(4, 8)))
    sm, _ = save_load(m, tmp_path)
    x = np.random.default_rng(13).uniform(0, 1, size=(10, 32, 32, 3))
    per_image = 32 * 32 * 3 * 3 * 3 * 8  # conv1's im2col bytes for one float64 image
    outs = []
    for images in (1, 3, 10):
        monkeypatch.setattr(fusions_mod, "CONV_BLOCK_BYTES", images * per_image)
        outs.append(sm.predict(x))
    np.testing.assert_allclose(outs[0], outs[2], rtol=0, atol=1e-14)
    np.testing.assert_allclose(outs[1], outs[2], rtol=0, atol=1e-14)
    np.testing.assert_allclose(outs[2], m.predict(x.astype("float32"), verbose=0), atol=1e-5, rtol=1e-5)
    assert len(sm._plan[2].nodes) == 2, "Conv2D(relu) -> MaxPooling2D is one fused step"
    largest_kept = 32 * 32 * 3 * 8  # the input, bytes per image (not conv1's output + im2col)
    assert sm._chunk_size(np.zeros((1, 32, 32, 3))) == model_mod.CHUNK_BUDGET_BYTES // largest_kept
    # the same when the fused step is the model's first: its input still counts
    first, _ = save_load(k.Sequential([k.Input((32, 32, 3)), k.layers.Conv2D(4, 3, activation="relu"),
                                       k.layers.MaxPooling2D(), k.layers.Flatten(), k.layers.Dense(2)]),
                         tmp_path, name="first")
    assert len(first._plan[0].nodes) == 2
    assert first._chunk_size(np.zeros((1, 32, 32, 3))) == model_mod.CHUNK_BUDGET_BYTES // largest_kept


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_nested_sequential_blocks_are_inlined(fmt, tmp_path, record_property):
    k = keras()
    aug = k.Sequential([k.layers.RandomFlip("horizontal"), k.layers.RandomTranslation(0.1, 0.1)], name="aug")
    block = k.Sequential([k.Input((8, 8, 3)), k.layers.Conv2D(4, 3, padding="same", activation="relu"),
                          k.layers.BatchNormalization(), k.layers.MaxPooling2D()], name="block")
    inp = k.Input((8, 8, 3))
    h = k.layers.Flatten()(block(aug(inp)))
    m = k.Model(inp, k.layers.Dense(3, activation="softmax")(h))
    sm, _ = check_model(m, images(5, 8, 8, 3), tmp_path, record_property, fmt=fmt)
    assert [l.class_name for l in sm.layers] == ["RandomFlip", "RandomTranslation", "Conv2D",
                                                 "BatchNormalization", "MaxPooling2D", "Flatten", "Dense"]
