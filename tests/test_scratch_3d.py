"""scratch_layers vs Keras for the 3-D layers: Conv3D, Conv3DTranspose, MaxPooling3D,
AveragePooling3D, GlobalAverage/MaxPooling3D, UpSampling3D, ZeroPadding3D, Cropping3D.

Each case builds Input -> pointwise Conv3D -> LAYER -> Flatten -> Dense softmax with random
non-default weights (the pointwise convolution in front makes the loss reach LAYER's
input gradient), saves it as .keras and legacy .h5 and loads both with scratch_layers:
* predict vs Keras float32 (atol 1e-5), both formats, and in scratch's float32 mode;
* LAYER's own output vs Keras float32 (1e-5) and vs the float64 twin (1e-9 relative to
  the output's scale);
* loss and gradients vs tf.GradientTape on the twin (atol 1e-9, rtol 1e-7) and on the
  float32 model.

TensorFlow has no float64 kernel for MaxPool3D and AvgPool3D, so a model holding
MaxPooling3D or AveragePooling3D has no float64 twin. For those, float64 forward is
checked against an obvious loop reference written here (1e-12), the gradients against
float32 Keras (1e-5, in both of scratch's dtypes) and against central differences of
scratch's own float64 loss; TF's MaxPool3DGrad tie rule (every cell within 1e-5 of the
maximum gets the gradient) is checked on near-ties against TF itself.

Plus: a loop reference and the adjoint identity for Conv3DTranspose with dilation (TF's CPU
kernel refuses it), Conv3D as one GEMM, and hostile configs refused before allocating.
"""
import json
import os
import sys
import zipfile

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from backward_helpers import (check_layer_forward, compare_gradients, gradients_without_twin,  # noqa: E402
                              scale_diff, twin_of)
from keras_factories import check_model, keras, refusal_peak  # noqa: E402

import scratch_layers  # noqa: E402
from scratch_layers import ModelFileError, UnsupportedLayerError  # noqa: E402
from scratch_layers.layers import conv3d as c3  # noqa: E402
from scratch_layers.layers.bounds import MAX_SAMPLE_ELEMENTS  # noqa: E402
from scratch_layers.profiling import gemm_clock  # noqa: E402

pytestmark = pytest.mark.scratch

N = 3
TWIN_REL = 1e-9


def data(shape, seed=0):
    return np.random.default_rng(seed).normal(0.2, 1.0, (N,) + shape).astype(np.float32)


# id -> (input shape without batch, layer factory); "pool3d" ids have no float64 twin
CASES = {
    # Conv3D
    "conv3d-k3-same": ((4, 5, 6, 2), lambda L: L.Conv3D(3, 3, padding="same")),
    "conv3d-k3-s2-same-odd-relu": ((5, 5, 7, 2), lambda L: L.Conv3D(3, 3, strides=2, padding="same",
                                                                   activation="relu")),
    "conv3d-k2-s2-valid": ((4, 5, 4, 3), lambda L: L.Conv3D(2, 2, strides=2)),
    "conv3d-k(2,3,1)-s(1,2,3)-same-tanh-nobias": ((4, 5, 7, 2), lambda L: L.Conv3D(
        3, (2, 3, 1), strides=(1, 2, 3), padding="same", activation="tanh", use_bias=False)),
    "conv3d-k2-dil(2,1,3)-same": ((5, 4, 7, 2), lambda L: L.Conv3D(2, 2, dilation_rate=(2, 1, 3),
                                                                 padding="same")),
    "conv3d-k3-dil2-valid-sigmoid": ((6, 5, 6, 2), lambda L: L.Conv3D(2, 3, dilation_rate=2,
                                                                    activation="sigmoid")),
    "conv3d-k1-pointwise": ((3, 4, 3, 3), lambda L: L.Conv3D(4, 1)),
    # grouped Conv3D (Keras runs it through XLA on CPU; the twin too)
    "conv3d-g2-k3-same": ((4, 5, 6, 4), lambda L: L.Conv3D(4, 3, padding="same", groups=2)),
    "conv3d-g3-k(2,3,1)-s(1,2,3)-same-tanh-nobias": ((4, 5, 7, 6), lambda L: L.Conv3D(
        6, (2, 3, 1), strides=(1, 2, 3), padding="same", activation="tanh", use_bias=False, groups=3)),
    "conv3d-g2-k2-s2-valid-relu": ((4, 5, 4, 4), lambda L: L.Conv3D(6, 2, strides=2, groups=2,
                                                                    activation="relu")),
    "conv3d-g2-k2-dil(2,1,3)-same": ((5, 4, 7, 4), lambda L: L.Conv3D(4, 2, dilation_rate=(2, 1, 3),
                                                                     padding="same", groups=2)),
    "conv3d-g4-k1-pointwise": ((3, 4, 3, 4), lambda L: L.Conv3D(8, 1, groups=4)),
    "conv3d-g4-depthwise-k3-valid": ((4, 5, 4, 4), lambda L: L.Conv3D(4, 3, groups=4)),
    # Conv3DTranspose
    "t3d-k3-s2-same": ((3, 4, 3, 2), lambda L: L.Conv3DTranspose(3, 3, strides=2, padding="same")),
    "t3d-k2-s2-valid": ((3, 2, 3, 2), lambda L: L.Conv3DTranspose(2, 2, strides=2)),
    "t3d-k3-s1-same-relu": ((3, 4, 3, 2), lambda L: L.Conv3DTranspose(2, 3, padding="same",
                                                                     activation="relu")),
    "t3d-k(2,3,2)-s(1,2,3)-valid-op(0,1,2)": ((3, 2, 3, 2), lambda L: L.Conv3DTranspose(
        2, (2, 3, 2), strides=(1, 2, 3), output_padding=(0, 1, 2))),
    "t3d-k4-s2-same-op1-tanh-nobias": ((2, 3, 2, 2), lambda L: L.Conv3DTranspose(
        2, 4, strides=2, padding="same", output_padding=1, activation="tanh", use_bias=False)),
    "t3d-k2-s3-valid-kernel<stride": ((2, 3, 2, 2), lambda L: L.Conv3DTranspose(2, 2, strides=3)),
    # pooling
    "pool3d-max-2": ((4, 5, 6, 2), lambda L: L.MaxPooling3D(2)),
    "pool3d-max-(2,3,2)-s1-same": ((4, 5, 6, 2), lambda L: L.MaxPooling3D((2, 3, 2), strides=1,
                                                                         padding="same")),
    "pool3d-max-3-s2-same": ((5, 5, 7, 2), lambda L: L.MaxPooling3D(3, strides=2, padding="same")),
    "pool3d-avg-2": ((4, 5, 6, 2), lambda L: L.AveragePooling3D(2)),
    "pool3d-avg-3-s2-same": ((5, 5, 7, 2), lambda L: L.AveragePooling3D(3, strides=2, padding="same")),
    "pool3d-avg-(1,2,3)-s(1,1,2)": ((4, 5, 6, 2), lambda L: L.AveragePooling3D((1, 2, 3),
                                                                               strides=(1, 1, 2))),
    "gap3d": ((3, 4, 3, 2), lambda L: L.GlobalAveragePooling3D()),
    "gap3d-keepdims": ((3, 4, 3, 2), lambda L: L.GlobalAveragePooling3D(keepdims=True)),
    "gmp3d": ((3, 4, 3, 2), lambda L: L.GlobalMaxPooling3D()),
    # reshaping
    "up3d-2": ((2, 3, 2, 2), lambda L: L.UpSampling3D(2)),
    "up3d-(1,2,3)": ((2, 3, 2, 2), lambda L: L.UpSampling3D((1, 2, 3))),
    "zeropad3d-1": ((2, 3, 2, 2), lambda L: L.ZeroPadding3D(1)),
    "zeropad3d-((1,0),(0,2),(2,1))": ((2, 3, 2, 2), lambda L: L.ZeroPadding3D(((1, 0), (0, 2), (2, 1)))),
    "crop3d-default": ((4, 5, 4, 2), lambda L: L.Cropping3D()),
    "crop3d-((1,0),(0,2),(1,1))": ((4, 5, 4, 2), lambda L: L.Cropping3D(((1, 0), (0, 2), (1, 1)))),
}


def build(case):
    k = keras()
    shape, factory = CASES[case]
    model = k.Sequential([k.Input(shape), k.layers.Conv3D(shape[-1], 1), factory(k.layers),
                          k.layers.Flatten(), k.layers.Dense(3, activation="softmax")])
    return model, data(shape)


def has_twin(case):
    return not case.startswith("pool3d")


# ----------------------------------------------------------------------------- references

def pool3d_loops(x, pool, strides, padding, mode):
    """An obvious float64 reference: per output cell, the max/mean of the window's real
    cells (TF 'same': ceil(size/stride) outputs, the extra pad after)."""
    n, *sizes, c = x.shape
    outs, befores = [], []
    for size, k, s in zip(sizes, pool, strides):
        if padding == "same":
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            outs.append(out)
            befores.append(total // 2)
        else:
            outs.append((size - k) // s + 1)
            befores.append(0)
    y = np.empty((n, *outs, c))
    for i in range(outs[0]):
        for j in range(outs[1]):
            for m in range(outs[2]):
                box = []
                for o, s, k, b, size in zip((i, j, m), strides, pool, befores, sizes):
                    lo = o * s - b
                    box.append(slice(max(lo, 0), min(lo + k, size)))
                win = x[:, box[0], box[1], box[2], :].reshape(n, -1, c)
                y[:, i, j, m] = win.max(axis=1) if mode == "max" else win.mean(axis=1)
    return y


def pool3d_layer_options(layer):
    cfg = layer.get_config()
    strides = cfg["strides"] or cfg["pool_size"]
    return tuple(cfg["pool_size"]), tuple(strides), cfg["padding"], \
        "max" if "Max" in type(layer).__name__ else "avg"


def conv_transpose3d_loops(x, kernel, strides, outs, pads, dilation):
    """y[n, i*s + a*d - p, f] += sum_c x[n, i, c] K[a, f, c], one input cell and kernel
    offset at a time, cells outside the output dropped."""
    n, *sizes, c = x.shape
    y = np.zeros((n, *outs, kernel.shape[3]))
    for i in np.ndindex(*sizes):
        for a in np.ndindex(*kernel.shape[:3]):
            o = [ii * s + aa * d - p[0] for ii, aa, s, d, p in zip(i, a, strides, dilation, pads)]
            if all(0 <= v < size for v, size in zip(o, outs)):
                y[:, o[0], o[1], o[2]] += x[:, i[0], i[1], i[2]] @ kernel[a].T
    return y


# ----------------------------------------------------------------------------- the cases

@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients(case, tmp_path, record_property):
    model, x = build(case)
    sm, worst32 = check_model(model, x, tmp_path, fmt="keras", seed=1)
    sm_h5, d = check_model(model, x, tmp_path, fmt="h5", randomize=False)
    worst32 = max(worst32, d)

    # the layer itself, on the output of the pointwise convolution
    h = np.asarray(model.layers[0](x))
    h64 = h.astype(np.float64)
    ref32 = np.asarray(model.layers[1](h))
    if has_twin(case):
        twin = twin_of(model)
        h64 = np.asarray(twin.layers[0](x.astype(np.float64)))
        ref64 = np.asarray(twin.layers[1](h64))
        tol = TWIN_REL
    else:  # no float64 kernel in TF: the loop reference, on the same float64 input
        ref64 = pool3d_loops(h64, *pool3d_layer_options(model.layers[1]))
        tol = 1e-12
    for m in (sm, sm_h5):
        assert [l.class_name for l in m.layers] == [l.__class__.__name__ for l in model.layers]
    d64, d32 = check_layer_forward((sm, sm_h5), 1, h, h64, ref64, ref32, tol)
    worst32 = max(worst32, d32)
    # float32 compute
    sm_h5.astype("float32")
    got32 = sm_h5.predict(x)
    assert got32.dtype == np.float32
    assert np.allclose(got32, np.asarray(model(x)), atol=1e-5, rtol=1e-5)
    y = np.random.default_rng(2).integers(0, 3, N)
    if has_twin(case):
        twin_pred = twin.predict(x.astype(np.float64), verbose=0)
        dpred, scale = scale_diff(sm.predict(x), twin_pred)
        assert dpred <= TWIN_REL * scale
        d64 = max(d64, dpred)
        g64, g32 = compare_gradients(model, sm, x, y)
    else:
        g64, g32 = gradients_without_twin(model, sm, sm_h5, x, y)
    print(f"{case}: forward vs twin/reference {d64:.3g}, vs float32 {worst32:.3g}; "
          f"grads vs twin/finite differences {g64:.3g}, vs float32 {g32:.3g}")
    record_property("max_abs_diff_float64_twin", d64)
    record_property("max_abs_diff_float32", worst32)
    record_property("max_grad_diff_float64_twin", g64)
    record_property("max_grad_diff_float32", g32)


# ----------------------------------------------------------------------------- max pool 3-D ties

def test_max_pool3d_gradient_follows_tf_tie_rule():
    """TF's MaxPool3DGrad gives a window's gradient to every cell within 1e-5 of its maximum
    (not to the first one, as the 2-D MaxPoolGrad): near-ties at 3e-6 and a clear gap at 3e-5
    planted in float32 input, gradients equal to tf.GradientTape's (float32)."""
    import tensorflow as tf
    from scratch_layers.layers.pooling3d import MaxPooling3D
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (2, 4, 4, 6, 3)).astype(np.float32)
    x[0, 1, 1, 1, 0] = x[0, 0, 0, 0, 0] + 3e-6 if x[0, 0, 0, 0, 0] > 0 else x[0, 0, 0, 0, 0]
    x[0, :2, :2, :2, 1] = 2.5
    x[0, 1, 0, 1, 1] = 2.5 + 3e-6
    x[1, :2, 2:4, :2, 2] = 3.0
    x[1, 0, 3, 1, 2] = 3.0 + 3e-5
    dy = rng.normal(0, 1, (2, 2, 2, 3, 3)).astype(np.float32)
    for padding in ("valid", "same"):
        layer = MaxPooling3D({"name": "p", "pool_size": [2, 2, 2], "padding": padding}, [])
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            yt = tf.nn.max_pool3d(xt, 2, 2, padding.upper())
        ref = tape.gradient(yt, xt, output_gradients=tf.constant(dy)).numpy()
        y = layer.forward_train(x, None, None)
        np.testing.assert_array_equal(y, yt.numpy())
        dx, _ = layer.backward(dy)
        assert dx.dtype == np.float32
        np.testing.assert_allclose(dx, ref, atol=1e-6, rtol=1e-6)
        assert np.count_nonzero(ref[0, :2, :2, :2, 1]) == 8 and np.count_nonzero(ref[1, :2, 2:4, :2, 2]) == 1


# ----------------------------------------------------------------------------- transposed, dilation

@pytest.mark.parametrize("x_shape,k_shape,strides,padding,output_padding,dilation", [
    ((2, 3, 2, 3, 2), (2, 3, 2, 4, 2), (1, 1, 1), "valid", None, (2, 1, 3)),
    ((2, 3, 3, 2, 2), (3, 2, 2, 3, 2), (1, 1, 1), "same", None, (1, 2, 2)),
    ((2, 2, 3, 2, 3), (3, 2, 3, 2, 3), (2, 3, 1), "same", (1, 2, 0), (1, 1, 1)),
    ((1, 2, 2, 3, 2), (2, 2, 3, 2, 2), (3, 2, 2), "valid", (2, 1, 0), (1, 1, 1)),
], ids=["valid-dil", "same-dil", "same-op", "valid-op"])
def test_conv_transpose3d_against_loops_and_adjoint(x_shape, k_shape, strides, padding,
                                                    output_padding, dilation):
    """conv_transpose3d equals the loop definition and is the adjoint of conv3d on the same
    geometry: <conv3d(z, K), x> = <z, conv_transpose3d(x, K)> (dilation covered here: TF's
    CPU kernel refuses it, so the twin cannot)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, x_shape)
    kernel = rng.normal(0, 1, k_shape)
    y = c3.conv_transpose3d(x, kernel, strides, padding, output_padding, dilation)
    outs, pads = c3.conv_transpose3d_geometry(x.shape, k_shape[:3], strides, padding, output_padding,
                                              dilation)
    assert y.shape == (x_shape[0],) + outs + (k_shape[3],)
    np.testing.assert_allclose(y, conv_transpose3d_loops(x, kernel, strides, outs, pads, dilation),
                               rtol=1e-13, atol=1e-13)
    z = rng.normal(0, 1, y.shape)
    # the forward convolution of z (output sizes -> input sizes) with the same pads
    patches = c3.im2col3d(z, k_shape[:3], strides, dilation, pads, x_shape[1:4])
    conv = patches.reshape(-1, int(np.prod(k_shape[:4]))) @ kernel.reshape(-1, k_shape[4])
    np.testing.assert_allclose(np.vdot(conv.reshape(x.shape), x), np.vdot(z, y), rtol=1e-12)


def test_conv3d_is_im2col_and_one_gemm():
    """Conv3D's forward is one strided patch copy and ONE GEMM per call (no loop over depth
    slices); it equals the loop definition."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (2, 5, 4, 6, 3))
    kernel = rng.normal(0, 1, (3, 2, 3, 3, 4))
    with gemm_clock() as clock:
        y = c3.conv3d(x, kernel, (2, 1, 2), "same", (1, 1, 1))
    assert clock.calls == 1
    outs, pads = c3.conv3d_geometry(x.shape, kernel.shape[:3], (2, 1, 2), "same", (1, 1, 1))
    xp = c3.pad3d(x, pads)
    ref = np.zeros((2,) + outs + (4,))
    for i, j, m in np.ndindex(*outs):
        win = xp[:, 2 * i:2 * i + 3, j:j + 2, 2 * m:2 * m + 3]
        ref[:, i, j, m] = np.einsum("nabcx,abcxf->nf", win, kernel)
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------- refusals

def test_grouped_conv3d_is_one_batched_gemm():
    """Grouped Conv3D's forward is one strided patch copy and ONE GEMM batched over the
    groups; it equals the loop definition (filter f reads the channels of group
    f // (F/G)), and its backward equals the gradients of that definition (the adjoint
    identity for dx, and dK, db from the kept patches, vs explicit sums)."""
    rng = np.random.default_rng(3)
    g, cg, fg = 3, 2, 2
    x = rng.normal(0, 1, (2, 5, 4, 6, g * cg))
    kernel = rng.normal(0, 1, (3, 2, 3, cg, g * fg))
    with gemm_clock() as clock:
        y = c3.conv3d(x, kernel, (2, 1, 2), "same", (1, 1, 1), groups=g)
    assert clock.calls == 1
    outs, pads = c3.conv3d_geometry(x.shape, kernel.shape[:3], (2, 1, 2), "same", (1, 1, 1))
    xp = c3.pad3d(x, pads)
    ref = np.zeros((2,) + outs + (g * fg,))
    for i, j, m in np.ndindex(*outs):
        win = xp[:, 2 * i:2 * i + 3, j:j + 2, 2 * m:2 * m + 3]
        for f in range(g * fg):
            grp = f // fg
            ref[:, i, j, m, f] = np.einsum("nabcx,abcx->n", win[..., grp * cg:(grp + 1) * cg],
                                           kernel[..., f])
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-13)
    layer = c3.Conv3D({"name": "c", "filters": g * fg, "kernel_size": [3, 2, 3], "strides": [2, 1, 2],
                       "padding": "same", "groups": g}, [kernel, rng.normal(0, 1, g * fg)])
    layer.forward_train(x, None, None)
    dy = rng.normal(0, 1, y.shape)
    dx, (dk, db) = layer.backward(dy)
    # <dx, v> = <dy, conv(v)> for any v (the convolution is linear in x)
    v = rng.normal(0, 1, x.shape)
    np.testing.assert_allclose(np.vdot(dx, v), np.vdot(dy, c3.conv3d(v, kernel, (2, 1, 2), "same",
                                                                      (1, 1, 1), groups=g)), rtol=1e-12)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 1, 2, 3)), rtol=1e-12)
    ref_dk = np.zeros_like(kernel)
    for i, j, m in np.ndindex(*outs):
        win = xp[:, 2 * i:2 * i + 3, j:j + 2, 2 * m:2 * m + 3]
        for f in range(g * fg):
            grp = f // fg
            ref_dk[..., f] += np.einsum("nabcx,n->abcx", win[..., grp * cg:(grp + 1) * cg], dy[:, i, j, m, f])
    np.testing.assert_allclose(dk, ref_dk, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [0, -2, 3, 2.0, "2", True])
def test_conv3d_bad_groups_is_a_model_file_error(groups):
    """groups must be a positive integer dividing filters (4 here); anything else in a file
    is hostile or corrupt."""
    with pytest.raises(ModelFileError, match="groups"):
        c3.Conv3D({"name": "c", "filters": 4, "kernel_size": [2, 2, 2], "groups": groups},
                  [np.zeros((2, 2, 2, 2, 4)), np.zeros(4)])


def test_grouped_conv3d_input_channels_checked():
    layer = c3.Conv3D({"name": "c", "filters": 4, "kernel_size": [1, 1, 1], "groups": 2},
                      [np.zeros((1, 1, 1, 3, 4)), np.zeros(4)])
    layer.forward(np.zeros((1, 2, 2, 2, 6)))
    with pytest.raises(scratch_layers.InputError, match="6"):
        layer.forward(np.zeros((1, 2, 2, 2, 3)))


FUSED = {
    "bn-relu": (lambda L: L.Conv3D(5, 3, padding="same", use_bias=False, name="conv"),
                lambda L: [L.BatchNormalization(name="bn"), L.ReLU(name="re_lu")], ["conv", "bn", "re_lu"]),
    "g2-bias-bn-relu6": (lambda L: L.Conv3D(4, (2, 3, 2), strides=(1, 2, 1), padding="same",
                                            groups=2, name="conv"),
                         lambda L: [L.BatchNormalization(name="bn"), L.ReLU(6.0, name="re_lu")],
                         ["conv", "bn", "re_lu"]),
    "relu6-activation": (lambda L: L.Conv3D(4, 2, name="conv"),
                         lambda L: [L.Activation("relu6", name="act")], ["conv", "act"]),
    # a BatchNormalization over the W axis (size 4 = filters) is no channel affine: not absorbed
    "bn-axis3-not-absorbed": (lambda L: L.Conv3D(4, 1, name="conv"),
                              lambda L: [L.BatchNormalization(axis=3, name="bn")], ["conv"]),
    "relu-activation-conv-not-linear": (lambda L: L.Conv3D(4, 2, activation="tanh", name="conv"),
                                        lambda L: [L.ReLU(name="re_lu")], ["conv"]),
}


@pytest.mark.parametrize("case", FUSED)
def test_conv3d_absorbs_batchnorm_and_relu(case, tmp_path, record_property):
    """A linear Conv3D absorbs a following BatchNormalization (channel axis) and ReLU in
    predict's plan, as Conv2D does: the fused predict equals the unfused
    intermediate_outputs to rounding (float64) and Keras float32 within 1e-5; a
    BatchNormalization on another axis, or a Conv3D with a nonlinear activation, is not
    absorbed."""
    k = keras()
    L = k.layers
    conv, following, fused_names = FUSED[case]
    model = k.Sequential([k.Input((4, 5, 4, 4)), conv(L)] + following(L) + [L.Flatten()])
    # inputs scaled so that the clip at 6 and at 0 both bind
    x = np.random.default_rng(2).normal(0, 4, (N, 4, 5, 4, 4)).astype(np.float32)
    sm, worst32 = check_model(model, x, tmp_path, record_property)
    steps = [step for step in sm._plan if "conv" in [n.name for n in step.nodes]]
    assert len(steps) == 1
    assert [n.name for n in steps[0].nodes] == fused_names
    unfused = list(sm.intermediate_outputs(x).values())[-1]
    got = sm.predict(x)
    np.testing.assert_allclose(got, unfused, rtol=1e-13, atol=1e-13)
    d, scale = scale_diff(got, twin_of(model).predict(x.astype(np.float64), verbose=0))
    assert d <= TWIN_REL * scale, d
    sm32 = scratch_layers.load_model(tmp_path / "m.keras", dtype="float32")
    got32 = sm32.predict(x)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, np.asarray(model(x)), rtol=1e-5, atol=1e-5)
    print(f"{case}: fused vs unfused {np.abs(got - unfused).max():.3g}, vs twin {d:.3g} (scale "
          f"{scale:.3g}), vs float32 {worst32:.3g}")


def test_unsupported_options_are_refused(tmp_path):
    with pytest.raises(UnsupportedLayerError, match="data_format"):
        c3.Conv3D({"name": "c", "filters": 2, "kernel_size": [2, 2, 2], "data_format": "channels_first"},
                  [np.zeros((2, 2, 2, 3, 2)), np.zeros(2)])


def hostile_file(tmp_path, layer, shape, edit):
    """A real model Input(shape) -> ``layer``, its layer's config edited by ``edit``."""
    k = keras()
    path = str(tmp_path / "ok.keras")
    k.Sequential([k.Input(shape), layer]).save(path)
    hostile = str(tmp_path / "hostile.keras")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(hostile, "w") as dst:
        for item in src.infolist():
            blob = src.read(item.filename)
            if item.filename == "config.json":
                cfg = json.loads(blob)
                edit(cfg["config"]["layers"][1]["config"])
                blob = json.dumps(cfg).encode()
            dst.writestr(item, blob)
    return hostile


def refused_at_load(path):
    """load_model(path) raises ModelFileError naming the cap; returns the peak traced bytes."""
    return refusal_peak(lambda: scratch_layers.load_model(path), "MAX_SAMPLE_ELEMENTS")


HOSTILE = {
    "upsampling3d": (lambda L: L.UpSampling3D(2), lambda c: c.update(size=[1000, 1000, 1000])),
    "zeropadding3d": (lambda L: L.ZeroPadding3D(1),
                      lambda c: c.update(padding=[[10 ** 5, 0], [10 ** 5, 0], [0, 0]])),
    "conv3dtranspose-strides": (lambda L: L.Conv3DTranspose(2, 2, strides=2),
                                lambda c: c.update(strides=[10 ** 4, 10 ** 4, 10 ** 4])),
    "conv3d-same-dilation": (lambda L: L.Conv3D(2, 2, padding="same"),
                             lambda c: c.update(dilation_rate=[10 ** 4, 10 ** 4, 10 ** 4])),
    "maxpooling3d-same": (lambda L: L.MaxPooling3D(2, padding="same"),
                          lambda c: c.update(pool_size=[10 ** 4, 10 ** 4, 10 ** 4])),
}


@pytest.mark.parametrize("case", HOSTILE)
@pytest.mark.parametrize("shape", [(2, 2, 2, 1), (None, None, None, 1)], ids=["fixed", "unknown"])
def test_hostile_sizes_refused_before_allocating(case, shape, tmp_path):
    """A config whose output (or padded input) would exceed MAX_SAMPLE_ELEMENTS values per
    sample (10**9 and more here) is a ModelFileError at load time, with a peak far below
    the array it asks for; also when the model's input sizes are unknown (then the layer's
    config alone, or the load-time probe's 1x1x1 volume, shows it)."""
    factory, edit = HOSTILE[case]
    peak = refused_at_load(hostile_file(tmp_path, factory(keras().layers), shape, edit))
    assert peak < 64 * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MiB"


def test_registry_has_the_3d_layers():
    for name in ("Conv3D", "Conv3DTranspose", "MaxPooling3D", "AveragePooling3D",
                 "GlobalAveragePooling3D", "GlobalMaxPooling3D", "UpSampling3D", "ZeroPadding3D",
                 "Cropping3D"):
        assert name in scratch_layers.REGISTRY
