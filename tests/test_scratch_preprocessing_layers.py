"""scratch_layers vs Keras for the preprocessing layers that compute at inference (issue 28):
Resizing (every interpolation, antialias, crop_to_aspect_ratio, pad_to_aspect_ratio with
fill_value), CenterCrop (crop and smart_resize), the ``Random*`` augmentation layers
(identity with training=False, RandomCrop included), CategoryEncoding, Discretization,
Hashing (FarmHash and SipHash), StringLookup and IntegerLookup (vocabulary from the config
and from the .keras asset, mask and OOV tokens, invert, every output mode).

Image layers: Input -> 1x1 Conv2D -> LAYER -> Flatten -> Dense softmax with random weights
(the convolution makes the loss reach LAYER's input gradient), saved and loaded:
* predict vs Keras float32 (atol 1e-5), and in float32 compute;
* LAYER's own output vs the float64 twin: 1e-9 relative to the output scale where TF
  computes in float64 (nearest, crops), float32 resolution (2e-6) where TF's resize kernels
  compute in float32 even on float64 tensors (bilinear, bicubic, area, lanczos, antialias);
  scratch's own float64 exactness there is checked against an independent dense-matrix
  reference of the same weights;
* gradients vs tf.GradientTape on the twin (atol 1e-9) where TF's gradient is float64;
  at float32 resolution where TF's gradient kernel is float32 (bilinear, bicubic); vs float32
  Keras where the twin has no gradient (ScaleAndTranslateGrad is float32-only); always vs
  central finite differences of scratch's own loss (area: TF has no gradient at all).
The categorical layers have no gradient; their outputs are integers or exact counts, so
they must equal Keras exactly."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from backward_helpers import (F32_TOL, compare_gradients, finite_difference_check,  # noqa: E402
                              floatx64, keras_loss_and_grads, max_abs, scale_diff, twin_of)
from keras_factories import check_model, keras, randomize_weights, save_load  # noqa: E402

from scratch_layers.layers.resizing import axis_operator, span_bound  # noqa: E402

pytestmark = pytest.mark.scratch

N = 3
TWIN_REL = 1e-9
TWIN_REL_FLOAT32_KERNEL = 2e-6


def images(shape, seed=0):
    return np.random.default_rng(seed).normal(0.2, 1.0, (N,) + shape).astype(np.float32)


# id -> (input shape, layer factory, twin: "exact" | "float32" (TF's kernel is float32),
#        gradient reference: "twin" | "twin32" | "keras32" | "fd")
IMAGE_CASES = {
    "resize-nearest-up": ((4, 5, 2), lambda L: L.Resizing(7, 9, interpolation="nearest"), "exact", "twin"),
    "resize-nearest-down-odd": ((9, 7, 2), lambda L: L.Resizing(4, 3, interpolation="nearest"), "exact", "twin"),
    "resize-bilinear-mixed": ((5, 8, 2), lambda L: L.Resizing(7, 3), "float32", "twin32"),
    "resize-bicubic-up": ((4, 5, 2), lambda L: L.Resizing(9, 7, interpolation="bicubic"), "float32", "twin32"),
    "resize-bicubic-down": ((11, 9, 2), lambda L: L.Resizing(4, 5, interpolation="bicubic"), "float32", "twin32"),
    "resize-area-down": ((9, 10, 2), lambda L: L.Resizing(4, 3, interpolation="area"), "float32", "fd"),
    "resize-area-mixed": ((5, 9, 2), lambda L: L.Resizing(7, 4, interpolation="area"), "float32", "fd"),
    "resize-lanczos3-mixed": ((6, 9, 2), lambda L: L.Resizing(9, 4, interpolation="lanczos3"), "float32", "keras32"),
    "resize-lanczos5-down": ((13, 12, 2), lambda L: L.Resizing(5, 6, interpolation="lanczos5"), "float32", "keras32"),
    "resize-bilinear-antialias": ((12, 10, 2), lambda L: L.Resizing(4, 3, antialias=True), "float32", "keras32"),
    "resize-bicubic-antialias": ((11, 9, 2), lambda L: L.Resizing(3, 5, interpolation="bicubic", antialias=True),
                                 "float32", "keras32"),
    "resize-lanczos3-antialias": ((12, 11, 2), lambda L: L.Resizing(5, 4, interpolation="lanczos3", antialias=True),
                                  "float32", "keras32"),
    "resize-nearest-crop-aspect": ((9, 5, 2), lambda L: L.Resizing(4, 6, interpolation="nearest",
                                                                   crop_to_aspect_ratio=True), "exact", "twin"),
    "resize-bilinear-crop-aspect": ((6, 11, 2), lambda L: L.Resizing(5, 3, crop_to_aspect_ratio=True), "float32",
                                    "twin32"),
    "resize-nearest-pad-aspect": ((5, 9, 2), lambda L: L.Resizing(6, 4, interpolation="nearest",
                                                                  pad_to_aspect_ratio=True, fill_value=0.7),
                                  "exact", "twin"),
    "resize-bicubic-pad-aspect": ((9, 4, 2), lambda L: L.Resizing(5, 6, interpolation="bicubic",
                                                                  pad_to_aspect_ratio=True, fill_value=-1.5),
                                  "float32", "twin32"),
    "centercrop-crop": ((9, 8, 2), lambda L: L.CenterCrop(4, 5), "exact", "twin"),
    "centercrop-smaller": ((4, 5, 2), lambda L: L.CenterCrop(6, 7), "float32", "twin32"),
    "centercrop-one-side": ((9, 4, 2), lambda L: L.CenterCrop(5, 6), "float32", "twin32"),
}


def build_image(case):
    k = keras()
    shape, factory, _, _ = IMAGE_CASES[case]
    model = k.Sequential([k.Input(shape), k.layers.Conv2D(shape[-1], 1), factory(k.layers),
                          k.layers.Flatten(), k.layers.Dense(3, activation="softmax")])
    return model, images(shape)


def dense_reference(layer, x):
    """The layer's resize as dense (out, in) matrices, ``A_h x A_w^T`` by einsum: an
    independent evaluation of the same weights, in float64."""
    window, method = layer.plan(x.shape[1:3])
    img = window.take(x, layer.fill(x.dtype))
    if method is None:
        return img
    a_h = axis_operator(method, img.shape[1], layer.target[0], layer.antialias).dense()
    a_w = axis_operator(method, img.shape[2], layer.target[1], layer.antialias).dense()
    if method == "area":
        f32 = np.float32
        s = (f32(img.shape[1]) / f32(layer.target[0])) * (f32(img.shape[2]) / f32(layer.target[1]))
        a_h = a_h * float(f32(1.0 / np.float64(s)))
    return np.einsum("oh,nhwc,pw->nopc", a_h, img, a_w)


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_layer_forward_and_gradients(case, tmp_path, record_property):
    model, x = build_image(case)
    _, _, twin_kind, grad_ref = IMAGE_CASES[case]
    twin_rel = TWIN_REL if twin_kind == "exact" else TWIN_REL_FLOAT32_KERNEL
    sm, worst32 = check_model(model, x, tmp_path, seed=1)
    twin = twin_of(model)
    h = model.layers[0](x)
    h64 = np.asarray(twin.layers[0](x.astype(np.float64)))
    ref32 = np.asarray(model.layers[1](h))
    ref64 = np.asarray(twin.layers[1](h64))
    got = sm.layers[1].forward(h64)
    d64, scale = scale_diff(got, ref64)
    assert d64 <= twin_rel * scale, f"vs float64 twin: {d64:.3g} (scale {scale:.3g})"
    dref, _ = scale_diff(got, dense_reference(sm.layers[1], h64))
    assert dref <= 1e-13 * scale, f"vs the dense float64 reference: {dref:.3g}"
    d32, _ = scale_diff(got, ref32)
    assert np.allclose(got, ref32, atol=1e-5, rtol=1e-5), f"vs float32: {d32:.3g}"
    sm32, _ = save_load(model, tmp_path, name="f32")
    sm32.astype("float32")
    got32 = sm32.predict(x)
    assert got32.dtype == np.float32
    assert np.allclose(got32, np.asarray(model(x)), atol=1e-5, rtol=1e-5)

    y = np.random.default_rng(2).integers(0, 3, N)
    fd = finite_difference_check(sm, x, y)
    assert fd < 1e-6, f"finite differences: {fd:.3g}"
    g64, g32 = gradients(model, sm, x, y, grad_ref)
    print(f"{case}: forward vs twin {d64:.3g}, vs float32 {max(d32, worst32):.3g}; "
          f"grads vs twin {g64:.3g}, vs float32 {g32:.3g}, finite differences (relative) {fd:.3g}")
    record_property("max_abs_diff_float64_twin", d64)
    record_property("max_abs_diff_float32", max(d32, worst32))
    record_property("max_grad_diff_float64_twin", g64)
    record_property("max_grad_diff_float32", g32)


def gradients(model, sm, x, y, ref):
    """Scratch's gradients against what TF can give for this resize (see the module doc)."""
    if ref == "twin":
        return compare_gradients(model, sm, x, y)
    loss, grads = sm.loss_and_gradients(x, y)
    worst64 = worst32 = float("nan")
    if ref in ("twin32", "keras32"):
        _, fgrads = keras_loss_and_grads(model, x, y)
        worst32 = 0.0
        for v, g, f in zip(model.trainable_weights, grads, fgrads):
            assert np.allclose(g, f, atol=F32_TOL, rtol=F32_TOL), (v.path, max_abs(g, f))
            worst32 = max(worst32, max_abs(g, f))
    if ref == "twin32":
        _, tgrads = keras_loss_and_grads(twin_of(model), x.astype(np.float64), y, float64=True)
        worst64 = 0.0
        for v, g, t in zip(model.trainable_weights, grads, tgrads):
            assert np.allclose(g, t, atol=1e-6, rtol=1e-5), (v.path, max_abs(g, t))
            worst64 = max(worst64, max_abs(g, t))
    return worst64, worst32


def test_twin_has_no_float64_gradient_for_lanczos_and_area():
    """Why some cases skip the twin: TF registers ScaleAndTranslateGrad for float32 only and
    no gradient for ResizeArea (if this starts passing, compare those with the twin)."""
    import tensorflow as tf
    x = tf.constant(np.ones((1, 5, 5, 1)))
    for method in ("lanczos3", "area"):
        with pytest.raises(Exception):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.reduce_sum(tf.image.resize(x, (3, 4), method=method))
            g = tape.gradient(y, x)
            if g is None:
                raise LookupError("no gradient")


def test_resize_operators_against_tensorflow_on_many_sizes():
    """Every method and antialias setting on up, down and mixed sizes (1 to 31 cells) against
    tf.image.resize on float32 input: TF's float32 kernel and scratch's float32 compute agree
    to float32 rounding, and scratch's float64 to the twin's float32-accurate result."""
    import tensorflow as tf
    from scratch_layers.layers.resizing import RESIZE_METHODS, resize
    rng = np.random.default_rng(0)
    sizes = [(5, 7, 9, 4), (8, 8, 3, 5), (6, 4, 6, 4), (3, 10, 11, 2), (17, 13, 5, 29), (4, 4, 1, 1),
             (1, 6, 3, 2), (31, 2, 7, 30)]
    worst = 0.0
    for method in RESIZE_METHODS:
        for antialias in (False, True):
            for h, w, oh, ow in sizes:
                x = rng.normal(size=(2, h, w, 3))
                t64 = tf.image.resize(x, (oh, ow), method=method, antialias=antialias).numpy()
                t32 = tf.image.resize(x.astype(np.float32), (oh, ow), method=method, antialias=antialias).numpy()
                s64 = resize(x, (oh, ow), method, antialias)
                s32 = resize(x.astype(np.float32), (oh, ow), method, antialias)
                assert s32.dtype == np.float32
                d64, d32 = max_abs(s64, t64), max_abs(s32, t32)
                scale = max(1.0, float(np.abs(t64).max()))
                assert d64 <= TWIN_REL_FLOAT32_KERNEL * scale, (method, antialias, (h, w, oh, ow), d64)
                assert d32 <= 1e-6 * scale, (method, antialias, (h, w, oh, ow), d32)
                if method == "nearest":
                    assert d64 == 0.0
                for n_in, n_out in ((h, oh), (w, ow)):  # the bound the size checks use
                    assert axis_operator(method, n_in, n_out, antialias).index.shape[1] <= \
                        span_bound(method, n_in, n_out, antialias)
                worst = max(worst, d64)
    print(f"resize vs tf.image.resize: worst float64 {worst:.3g}")


def test_resize_adjoint_identity():
    """backward is the adjoint of forward: <resize(x), g> = <x, resize_backward(g)>."""
    from scratch_layers.layers.resizing import RESIZE_METHODS, resize, resize_backward
    rng = np.random.default_rng(1)
    for method in RESIZE_METHODS:
        for antialias in (False, True):
            x, g = rng.normal(size=(2, 7, 5, 2)), rng.normal(size=(2, 4, 9, 2))
            lhs = np.vdot(resize(x, (4, 9), method, antialias), g)
            rhs = np.vdot(x, resize_backward(g, (7, 5), method, antialias))
            assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs)), (method, antialias)


def test_resizing_integer_images_round_back(tmp_path):
    """uint8 images: Keras rounds the resized values and casts back (saturating)."""
    k = keras()
    inp = k.Input((6, 7, 3), dtype="uint8")
    model = k.Model(inp, k.layers.Resizing(4, 9, interpolation="bicubic")(inp))
    x = np.random.default_rng(3).integers(0, 256, (N, 6, 7, 3)).astype(np.uint8)
    sm, _ = save_load(model, tmp_path)
    want = np.asarray(model(x))
    got = sm.layers[0].forward(x)
    assert got.dtype == want.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- random layers

RANDOM_LAYERS = {
    "RandomBrightness": lambda L: L.RandomBrightness(0.5),
    "RandomColorDegeneration": lambda L: L.RandomColorDegeneration(0.7),
    "RandomColorJitter": lambda L: L.RandomColorJitter(brightness_factor=0.3, contrast_factor=0.4,
                                                        saturation_factor=0.5, hue_factor=0.2),
    "RandomContrast": lambda L: L.RandomContrast(0.5),
    "RandomCrop": lambda L: L.RandomCrop(5, 6),
    "RandomElasticTransform": lambda L: L.RandomElasticTransform(factor=1.0, scale=0.9),
    "RandomErasing": lambda L: L.RandomErasing(factor=1.0),
    "RandomFlip": lambda L: L.RandomFlip(),
    "RandomGaussianBlur": lambda L: L.RandomGaussianBlur(factor=1.0, sigma=0.9),
    "RandomGrayscale": lambda L: L.RandomGrayscale(1.0),
    "RandomHue": lambda L: L.RandomHue(0.5),
    "RandomInvert": lambda L: L.RandomInvert(1.0),
    "RandomPerspective": lambda L: L.RandomPerspective(1.0, 0.8),
    "RandomPosterization": lambda L: L.RandomPosterization(3),
    "RandomRotation": lambda L: L.RandomRotation(0.3),
    "RandomSaturation": lambda L: L.RandomSaturation(0.7),
    "RandomSharpness": lambda L: L.RandomSharpness(0.8),
    "RandomShear": lambda L: L.RandomShear(0.4, 0.3),
    "RandomTranslation": lambda L: L.RandomTranslation(0.3, 0.3),
    "RandomZoom": lambda L: L.RandomZoom(0.4),
}


def test_random_layer_list_is_keras_list():
    assert sorted(RANDOM_LAYERS) == sorted(n for n in dir(keras().layers) if n.startswith("Random"))


@pytest.mark.parametrize("name", RANDOM_LAYERS)
def test_random_layer_is_identity_at_inference(name, tmp_path):
    """Keras with training=False returns the batch unchanged (checked, so the identity
    mapping is a fact about Keras, not an assumption), and so does scratch. The model ends
    in global pooling: RandomCrop's symbolic shape says it crops, its inference does not."""
    k = keras()
    x = np.random.default_rng(4).uniform(0, 255, (N, 9, 10, 3)).astype(np.float32)
    layer = RANDOM_LAYERS[name](k.layers)
    inp = k.Input((9, 10, 3))
    model = k.Model(inp, k.layers.Dense(3)(k.layers.GlobalAveragePooling2D()(k.layers.Conv2D(3, 1)(layer(inp)))))
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    sm, _ = check_model(model, x, tmp_path)
    np.testing.assert_array_equal(sm.layers[0].forward(x), x)
    assert sm.layers[0].class_name == name


# ----------------------------------------------------------------------------- categorical

def compare_outputs(model, sm, x, keras_x=None):
    """Scratch predict (and intermediate outputs' last node) vs Keras' call: equal."""
    import tensorflow as tf
    want = np.asarray(model(tf.constant(keras_x) if keras_x is not None else x))
    got = sm.predict(x)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype.kind in "OSU":
        decoded = np.vectorize(lambda b: b.decode("utf-8") if isinstance(b, bytes) else b, otypes=[object])
        np.testing.assert_array_equal(np.asarray(got), decoded(want))
        return 0.0
    d = max_abs(got, want)
    assert d <= 1e-5 * max(1.0, float(np.abs(want).max())), d
    print(f"{model.layers[1].__class__.__name__}: vs Keras {d:.3g}")
    return d


def categorical_model(k, layer, input_shape, dtype, head=True):
    """Input -> LAYER [-> Flatten -> Dense softmax]."""
    inp = k.Input(input_shape, dtype=dtype)
    h = layer(inp)
    if head:
        h = k.layers.Dense(3, activation="softmax")(k.layers.Flatten()(h))
    model = k.Model(inp, h)
    randomize_weights(model, 1)
    return model


CATEGORY_CASES = {
    "one_hot-rank1": ((), "one_hot"),
    "one_hot-trailing1": ((1,), "one_hot"),
    "one_hot-k3": ((3,), "one_hot"),
    "multi_hot-k4": ((4,), "multi_hot"),
    "count-k5": ((5,), "count"),
    "binary-alias": ((4,), "binary"),
}


@pytest.mark.parametrize("case", CATEGORY_CASES)
def test_category_encoding(case, tmp_path):
    """Ids past num_tokens are dropped (and negative ids give a zero one_hot row), as in TF."""
    k = keras()
    shape, mode = CATEGORY_CASES[case]
    ids = np.random.default_rng(5).integers(0, 8 if mode != "one_hot" else 9, (7,) + shape) - (mode == "one_hot")
    model = categorical_model(k, k.layers.CategoryEncoding(6, output_mode=mode), shape, "int32")
    sm, _ = save_load(model, tmp_path)
    compare_outputs(model, sm, ids.astype(np.int32))
    twin_d = max_abs(sm.predict(ids), twin_of(model)(ids.astype(np.int64)))
    assert twin_d <= TWIN_REL, twin_d
    print(f"CategoryEncoding {case}: vs twin {twin_d:.3g}")
    sm.astype("float32")
    compare_outputs(model, sm, ids.astype(np.int32))


def test_category_encoding_refuses_what_tf_refuses(tmp_path):
    from scratch_layers.errors import InputError
    k = keras()
    model = categorical_model(k, k.layers.CategoryEncoding(4, output_mode="count"), (3,), "int32", head=False)
    sm, _ = save_load(model, tmp_path)
    with pytest.raises(InputError, match="negative"):
        sm.predict(np.array([[1, -1, 2]]))
    with pytest.raises(InputError, match="integer"):
        sm.predict(np.array([[1.5, 0, 2]]))


DISCRETIZATION_CASES = {"int": "int", "one_hot": "one_hot", "multi_hot": "multi_hot", "count": "count"}


@pytest.mark.parametrize("mode", DISCRETIZATION_CASES)
def test_discretization(mode, tmp_path):
    """Boundaries that float32 cannot hold (0.1, 0.7): TF's Bucketize rounds them to float32
    in the float64 twin too; inputs sit exactly on them, either side, and NaN."""
    k = keras()
    bounds = [-1.5, 0.1, 0.7, 2.0]
    layer = k.layers.Discretization(bin_boundaries=bounds, output_mode=mode)
    shape = (1,) if mode == "one_hot" else (4,)
    model = categorical_model(k, layer, shape, "float32", head=mode != "int")
    rng = np.random.default_rng(6)
    x64 = rng.choice(np.array([-2.0, -1.5, 0.1, np.float32(0.1), 0.1000001, 0.7, 0.69999, 2.0, 3.0, 0.0]),
                     (9,) + shape)
    sm, _ = save_load(model, tmp_path)
    compare_outputs(model, sm, x64.astype(np.float32))
    # Discretization casts its input to the *global* floatx when called: the twin runs in
    # float64 only under floatx float64
    with floatx64():
        want = np.asarray(twin_of(model)(x64))
    got = sm.predict(x64)
    assert max_abs(got, want) <= TWIN_REL * max(1.0, float(np.abs(want).max()))
    print(f"Discretization {mode}: vs twin {max_abs(got, want):.3g}")
    if mode == "int":
        assert sm.layers[0].forward(np.array([[np.nan]])).tolist() == [[4]]
        assert np.asarray(layer(np.array([[np.nan]], np.float32))).tolist() == [[4]]


@pytest.mark.parametrize("opts", [{}, {"salt": 133}, {"salt": [7, 2 ** 40 + 3]}, {"mask_value": "zz"},
                                  {"output_mode": "one_hot"}, {"output_mode": "multi_hot", "salt": 5},
                                  {"output_mode": "count", "mask_value": "a"}],
                         ids=["fast", "salt-int", "salt-pair", "mask", "one_hot", "multi_hot-salt", "count-mask"])
def test_hashing_strings(opts, tmp_path):
    """FarmHash (to_hash_bucket_fast) and SipHash (to_hash_bucket_strong) of UTF-8 strings of
    every length class FarmHash distinguishes (0 to 300 bytes)."""
    k = keras()
    rng = np.random.default_rng(7)
    words = ["", "a", "zz", "héllo wörld", "x" * 7, "y" * 12, "z" * 17, "w" * 40, "q" * 65, "p" * 300,
             "the quick brown fox jumps over the lazy dog"]
    shape = (1,) if opts.get("output_mode") == "one_hot" else (3,)
    x = rng.choice(np.array(words, dtype=object), (8,) + shape)
    head = opts.get("output_mode") is not None
    model = categorical_model(k, k.layers.Hashing(11, **opts), shape, "string", head=head)
    sm, _ = save_load(model, tmp_path)
    compare_outputs(model, sm, x, x.astype(str))


def test_hashing_numbers(tmp_path):
    """Integers hash their decimal string; floats are truncated to int64 first; mask_value."""
    k = keras()
    ints = np.array([[0, -5, 123456789012, 7], [3, 3, -1, 10 ** 15]], np.int64)
    m = categorical_model(k, k.layers.Hashing(13, mask_value=3), (4,), "int64", head=False)
    sm, _ = save_load(m, tmp_path)
    compare_outputs(m, sm, ints)
    m = categorical_model(k, k.layers.Hashing(6, salt=9), (4,), "float32", head=False)
    sm, _ = save_load(m, tmp_path, name="f")
    floats = np.array([[0.5, -2.7, 3.0, 1e6]], np.float32)
    compare_outputs(m, sm, floats)


def test_hashing_vs_tensorflow_on_random_bytes():
    import tensorflow as tf
    from scratch_layers.layers.hashing import hash_buckets
    rng = np.random.default_rng(8)
    strs = [bytes(rng.integers(0, 256, n).astype(np.uint8)) for n in list(range(0, 200)) + [255, 256, 511, 1000]]
    nb = 2 ** 62 + 12345
    np.testing.assert_array_equal(hash_buckets(np.array(strs, dtype=object), nb),
                                  tf.strings.to_hash_bucket_fast(tf.constant(strs), nb).numpy())
    for key in [(0, 0), (123, 456), (2 ** 63 + 5, 17)]:
        tf_key = [int(np.int64(np.uint64(v))) for v in key]
        np.testing.assert_array_equal(hash_buckets(np.array(strs, dtype=object), nb, key),
                                      tf.strings.to_hash_bucket_strong(tf.constant(strs), nb, key=tf_key).numpy())


# ----------------------------------------------------------------------------- lookups

VOCAB = ["the", "cat", "sat", "on", "mat", "héllo"]
TEXTS = [["the", "cat", "dog"], ["", "mat", "héllo"], ["zebra", "on", "on"], ["sat", "", "xyzzy"],
         ["[UNK]", "the", "mat"]]

STRING_CASES = {
    "int-adapt": dict(),
    "int-vocab-mask": dict(vocabulary=VOCAB, mask_token=""),
    "int-oov3-mask": dict(num_oov_indices=3, mask_token=""),
    "int-oov2-salt": dict(vocabulary=VOCAB, num_oov_indices=2, salt=77),
    "int-oov0": dict(vocabulary=VOCAB + ["dog", "zebra", "xyzzy", "[UNK]"], num_oov_indices=0, mask_token=""),
    "one_hot": dict(output_mode="one_hot"),
    "multi_hot-mask": dict(output_mode="multi_hot", mask_token="", num_oov_indices=2),
    "count-max-tokens-pad": dict(output_mode="count", max_tokens=12, pad_to_max_tokens=True),
    "tf_idf-adapt": dict(output_mode="tf_idf"),
    "tf_idf-vocab": dict(output_mode="tf_idf", vocabulary=VOCAB, idf_weights=[0.5, 1.5, 2.0, 0.25, 1.0, 3.0]),
}


@pytest.mark.parametrize("case", STRING_CASES)
def test_string_lookup(case, tmp_path):
    """The vocabulary from adapt() (the .keras asset) or from the config."""
    k = keras()
    opts = dict(STRING_CASES[case])
    layer = k.layers.StringLookup(**opts)
    if "vocabulary" not in opts:
        layer.adapt(np.array([["the", "cat", "the", "sat"], ["on", "mat", "the", "héllo"]]))
    shape = (3,) if opts.get("output_mode") != "one_hot" else (1,)
    x = np.array(TEXTS, dtype=object) if shape == (3,) else np.array(TEXTS, dtype=object)[:, 1:2]
    model = categorical_model(k, layer, shape, "string", head=False)
    sm, _ = save_load(model, tmp_path)
    compare_outputs(model, sm, x, x.astype(str))
    # bytes input reads as TF reads it
    xb = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(x)
    compare_outputs(model, sm, xb, x.astype(str))


def test_string_lookup_invert(tmp_path):
    k = keras()
    inv = k.layers.StringLookup(vocabulary=VOCAB, mask_token="", invert=True)
    model = categorical_model(k, inv, (4,), "int64", head=False)
    sm, _ = save_load(model, tmp_path)
    ids = np.array([[0, 1, 2, 7], [8, 9, 3, 100]])
    compare_outputs(model, sm, ids)


INTEGER_CASES = {
    "int-adapt": dict(),
    "int-mask0-floormod3": dict(mask_token=0, num_oov_indices=3),
    "int-farmhash3": dict(num_oov_indices=3, oov_method="farmhash"),
    "int-farmhash-salt": dict(vocabulary=[5, 7, 9, 12], num_oov_indices=4, oov_method="farmhash", salt=[3, 4]),
    "multi_hot": dict(output_mode="multi_hot", num_oov_indices=2),
    "count-mask": dict(output_mode="count", mask_token=0),
    "tf_idf": dict(output_mode="tf_idf"),
    "invert": dict(vocabulary=[5, 7, 9, 12], invert=True, mask_token=0),
}


@pytest.mark.parametrize("case", INTEGER_CASES)
def test_integer_lookup(case, tmp_path):
    k = keras()
    opts = dict(INTEGER_CASES[case])
    layer = k.layers.IntegerLookup(**opts)
    if "vocabulary" not in opts:
        layer.adapt(np.array([[5, 7, 9, 5], [12, 5, 7, 40]]))
    model = categorical_model(k, layer, (4,), "int64", head=False)
    sm, _ = save_load(model, tmp_path)
    x = np.array([[5, 7, 100, 0], [-3, 12, 9, 41], [40, 0, 2 ** 40, -7]])
    if opts.get("invert"):
        x = np.array([[0, 1, 2, 3], [4, 5, 6, 100]])
    compare_outputs(model, sm, x)


def test_lookup_into_embedding_model(tmp_path, record_property):
    """A whole model: StringLookup(mask) -> Embedding(mask_zero) -> LSTM -> Dense, vs Keras
    float32 and the float64 twin (the adapted vocabulary is copied into the twin)."""
    k = keras()
    sl = k.layers.StringLookup(mask_token="", num_oov_indices=2)
    sl.adapt(np.array([["the", "cat", "the", "sat"], ["on", "mat", "the", "héllo"]]))
    inp = k.Input((3,), dtype="string")
    h = k.layers.Embedding(sl.vocabulary_size(), 4, mask_zero=True)(sl(inp))
    h = k.layers.LSTM(5)(h)
    model = k.Model(inp, k.layers.Dense(3, activation="softmax")(h))
    randomize_weights(model, 3)
    sm, _ = save_load(model, tmp_path)
    x = np.array(TEXTS, dtype=object)
    d32 = compare_outputs(model, sm, x, x.astype(str))
    import tensorflow as tf
    want = np.asarray(twin_of(model)(tf.constant(x.astype(str))))
    d64 = max_abs(sm.predict(x), want)
    assert d64 <= TWIN_REL
    record_property("max_abs_diff_float64_twin", d64)
    record_property("max_abs_diff_float32", d32)
    # the Embedding and LSTM train; the lookup runs forward only (it has no gradient)
    y = np.array([0, 1, 2, 1, 0])
    loss, grads = sm.loss_and_gradients(x, y)
    _, tgrads = keras_loss_and_grads(twin_of(model), tf.constant(x.astype(str)), y, float64=True)
    dg = max(max_abs(g, t) for g, t in zip(grads, tgrads))
    assert dg <= 1e-9
    print(f"StringLookup -> Embedding -> LSTM: forward vs twin {d64:.3g}, vs float32 {d32:.3g}, "
          f"grads vs twin {dg:.3g}")
