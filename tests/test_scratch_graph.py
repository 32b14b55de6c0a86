"""scratch_layers on Keras graph models: residual, multi-branch and concatenating blocks,
two inputs, two outputs, shared layers, nested models called twice, operation nodes,
a small transformer and an encoder-decoder. Every case has random non-default weights
and BatchNormalization statistics, and passes two checks:

* forward: scratch (float64) equals Keras' float64 twin within 1e-9 relative to the
  output scale at every node, and float32 Keras within atol 1e-5 (+ rtol 1e-5);
* backward: loss and gradients equal tf.GradientTape on the twin within atol 1e-9,
  rtol 1e-7 (``compare_gradients``).

Plus the graph's own errors: hostile or broken configs raise ModelFileError or
UnsupportedLayerError with a message that names the problem."""
import json
import os
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

import scratch_layers
from backward_helpers import compare_gradients
from keras_factories import keras, randomize_weights, save_load
from scratch_layers import ModelFileError, NoBackwardError, UnsupportedLayerError
from scratch_layers.verify.keras import ATOL, RTOL, float64_twin, keras_intermediate_outputs, twin_tolerance

pytestmark = pytest.mark.scratch

RNG = np.random.default_rng(7)


def _images(n=6, size=8, channels=3):
    return RNG.uniform(0, 1, (n, size, size, channels)).astype(np.float32)


def _labels(n, k):
    return RNG.integers(0, k, n)


def check_graph(model, x, tmp_path, y=None, fmt="keras", backward=True, seed=0):
    """Randomize, save, load; compare every node with float32 Keras and the float64 twin,
    the outputs with predict, and (``y`` given) the gradients. Returns the scratch model
    and the worst (forward vs twin, forward vs float32) differences."""
    randomize_weights(model, seed)
    sm, _ = save_load(model, tmp_path, fmt)
    twin = float64_twin(model)
    got = sm.intermediate_outputs(x)
    kout = keras_intermediate_outputs(model, x)
    tout = keras_intermediate_outputs(twin, x)
    compared = 0
    worst64 = worst32 = 0.0
    for name, s in got.items():
        if name not in kout:
            continue  # inside a nested model: Keras runs it as one call
        compared += 1
        t, k = tout[name], kout[name]
        assert s.shape == k.shape, (name, s.shape, k.shape)
        d64 = float(np.abs(s - t).max()) if s.size else 0.0
        d32 = float(np.abs(s - k).max()) if s.size else 0.0
        assert d64 <= twin_tolerance(t), f"node {name}: scratch vs float64 twin {d64:.3g}"
        assert np.allclose(s, k, atol=ATOL, rtol=RTOL), f"node {name}: scratch vs float32 Keras {d32:.3g}"
        worst64, worst32 = max(worst64, d64), max(worst32, d32)
    assert compared >= 3, f"only {compared} nodes compared: {list(got)} vs {list(kout)}"
    ref = model.predict(x, verbose=0)
    out = sm.predict(x)
    if isinstance(ref, dict):
        assert set(out) == set(ref)
        pairs = [(out[k], ref[k]) for k in ref]
    elif isinstance(ref, list):
        pairs = list(zip(out, ref))
    else:
        pairs = [(out, ref)]
    for a, b in pairs:
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=RTOL)
    if y is not None and backward:
        compare_gradients(model, sm, x, y)
    print(f"forward: max|Δ| vs twin {worst64:.3g}, vs float32 {worst32:.3g} over {compared} nodes")
    return sm, worst64, worst32


def _bn(k, h):
    return k.layers.BatchNormalization()(h)


# ------------------------------------------------------------------------ the cases

def residual_mlp(k):
    x = inp = k.Input((6,))
    h = k.layers.Dense(6, activation="tanh")(x)
    h = k.layers.Dense(6)(h)
    x = k.layers.Add()([x, h])
    x = k.layers.Activation("relu")(x)
    return k.Model(inp, k.layers.Dense(3, activation="softmax")(x))


def residual_conv_block(k):
    """ResNet's basic block: conv-BN-relu-conv-BN + identity, then relu (the folded
    Conv2D -> BN fusions run next to a skip connection)."""
    x = inp = k.Input((8, 8, 4))
    h = k.layers.Conv2D(4, 3, padding="same", use_bias=False)(x)
    h = k.layers.ReLU()(_bn(k, h))
    h = _bn(k, k.layers.Conv2D(4, 3, padding="same", use_bias=False)(h))
    x = k.layers.ReLU()(k.layers.Add()([x, h]))
    x = k.layers.MaxPooling2D()(k.layers.Conv2D(6, 1, activation="relu")(x))
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inp, k.layers.Dense(3, activation="softmax")(x))


def inception_block(k):
    """Branches of 1x1, 3x3, 5x5 convolutions and pooling, concatenated on channels."""
    x = inp = k.Input((8, 8, 3))
    a = k.layers.Conv2D(2, 1, activation="relu")(x)
    b = k.layers.Conv2D(3, 3, padding="same", activation="relu")(k.layers.Conv2D(2, 1)(x))
    c = k.layers.Conv2D(2, 5, padding="same")(x)
    d = k.layers.Conv2D(2, 1)(k.layers.AveragePooling2D(3, strides=1, padding="same")(x))
    h = k.layers.Concatenate()([a, b, c, d])
    h = k.layers.Average()([k.layers.Dense(4)(h), k.layers.Dense(4)(h)])
    h = k.layers.Maximum()([h, k.layers.Conv2D(4, 1)(x)])
    h = k.layers.Flatten()(h)
    return k.Model(inp, k.layers.Dense(4, activation="softmax")(h))


def two_inputs(k):
    img, vec = k.Input((8, 8, 3), name="image"), k.Input((5,), name="features")
    h = k.layers.GlobalMaxPooling2D()(k.layers.Conv2D(4, 3, activation="relu")(img))
    g = k.layers.Dense(4, activation="sigmoid")(vec)
    h = k.layers.Concatenate()([h, g, k.layers.Multiply()([h, g])])
    return k.Model([img, vec], k.layers.Dense(3, activation="softmax")(h))


def two_outputs(k, as_dict):
    inp = k.Input((6,))
    h = k.layers.Dense(8, activation="relu")(inp)
    cls = k.layers.Dense(3, activation="softmax", name="cls")(h)
    reg = k.layers.Dense(1, name="reg")(h)
    return k.Model(inp, {"cls": cls, "reg": reg} if as_dict else [cls, reg])


def shared_layers(k):
    """A Siamese pair: one Dense and one Conv2D applied to both inputs, the difference
    and the product of the two embeddings feed the head."""
    a, b = k.Input((8, 8, 2), name="left"), k.Input((8, 8, 2), name="right")
    conv = k.layers.Conv2D(3, 3, activation="relu")
    pool = k.layers.GlobalAveragePooling2D()
    dense = k.layers.Dense(4, activation="tanh")
    ea, eb = dense(pool(conv(a))), dense(pool(conv(b)))
    h = k.layers.Concatenate()([k.layers.Subtract()([ea, eb]), k.layers.Multiply()([ea, eb]),
                                k.layers.Dot(axes=1, normalize=True)([ea, eb])])
    return k.Model([a, b], k.layers.Dense(2, activation="softmax")(h))


def nested_called_twice(k, inner_kind):
    """A nested model (Functional or Sequential) used as a layer on two inputs: its
    weights are shared by both calls, and its gradient is the sum over them."""
    if inner_kind == "functional":
        i = k.Input((5,))
        inner = k.Model(i, k.layers.Dense(4, activation="relu")(k.layers.Dense(6)(i)), name="encoder")
    else:
        inner = k.Sequential([k.Input((5,)), k.layers.Dense(6), k.layers.BatchNormalization(),
                              k.layers.Dense(4, activation="relu")], name="encoder")
    a, b = k.Input((5,)), k.Input((5,))
    h = k.layers.Concatenate()([inner(a), inner(b)])
    return k.Model([a, b], k.layers.Dense(3, activation="softmax")(h))


def operation_nodes(k):
    """``a + b``, ``x * 0.5``, keras.ops activations, slicing and reductions in the graph."""
    ops = k.ops
    inp = k.Input((4, 6))
    h = k.layers.Dense(6)(inp)
    h = h * 0.5 + ops.relu(inp) - ops.tanh(h) / 3.0
    h = ops.concatenate([h[:, :, :3], ops.square(h[:, :, 3:])], axis=-1)
    h = ops.mean(h, axis=1) + ops.max(h, axis=1)
    h = ops.reshape(h, (-1, 2, 3))
    h = ops.transpose(h, (0, 2, 1))
    h = k.layers.Flatten()(h)
    return k.Model(inp, k.layers.Dense(3, activation="softmax")(h))


def tiny_transformer(k, vocab=20, length=7, dim=8):
    """Token + positional embeddings (``keras.ops.arange``), one pre-norm transformer
    block with causal self-attention and a feed-forward block, masked average pooling."""
    tokens = k.Input((length,), dtype="int32")
    positions = k.ops.arange(length)
    h = k.layers.Embedding(vocab, dim)(tokens) + k.layers.Embedding(length, dim)(positions)
    a = k.layers.LayerNormalization()(h)
    a = k.layers.MultiHeadAttention(num_heads=2, key_dim=4)(a, a, use_causal_mask=True)
    h = k.layers.Add()([h, a])
    f = k.layers.LayerNormalization()(h)
    # relu, not gelu: TensorFlow's float64 erf is off by ~5e-8 relative, so the twin is too
    f = k.layers.Dense(dim)(k.layers.Dense(16, activation="relu")(f))
    h = k.layers.Add()([h, f])
    h = k.layers.GlobalAveragePooling1D()(h)
    return k.Model(tokens, k.layers.Dense(3, activation="softmax")(h))


def encoder_decoder(k):
    """A small U-Net: strided conv down, Conv2DTranspose and UpSampling2D up, the skip
    concatenated, then a classifier head (so the loss applies)."""
    x = inp = k.Input((8, 8, 3))
    d1 = k.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    d2 = k.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu")(d1)
    u1 = k.layers.Conv2DTranspose(4, 3, strides=2, padding="same")(d2)
    u2 = k.layers.UpSampling2D()(k.layers.Conv2D(2, 1)(d2))
    h = k.layers.Concatenate()([d1, u1, u2])
    h = k.layers.Conv2D(4, 3, padding="same", activation="relu")(h)
    h = k.layers.GlobalAveragePooling2D()(h)
    return k.Model(inp, k.layers.Dense(3, activation="softmax")(h))


# the cases above as (builder, inputs), for any implementation under test (``--backend``)
GRAPH_CASES = {
    "residual_mlp": (residual_mlp, lambda: RNG.normal(0, 1, (9, 6)).astype(np.float32)),
    "residual_conv_block": (residual_conv_block, lambda: _images(6, 8, 4)),
    "inception_block": (inception_block, lambda: _images()),
    "two_inputs": (two_inputs, lambda: [_images(), RNG.normal(0, 1, (6, 5)).astype(np.float32)]),
    "two_outputs_list": (lambda k: two_outputs(k, False), lambda: RNG.normal(0, 1, (9, 6)).astype(np.float32)),
    "two_outputs_dict": (lambda k: two_outputs(k, True), lambda: RNG.normal(0, 1, (9, 6)).astype(np.float32)),
    "shared_layers": (shared_layers, lambda: [_images(6, 8, 2), _images(6, 8, 2)]),
    "nested_functional": (lambda k: nested_called_twice(k, "functional"),
                          lambda: [RNG.normal(0, 1, (8, 5)).astype(np.float32) for _ in range(2)]),
    "nested_sequential": (lambda k: nested_called_twice(k, "sequential"),
                          lambda: [RNG.normal(0, 1, (8, 5)).astype(np.float32) for _ in range(2)]),
    "operation_nodes": (operation_nodes, lambda: RNG.normal(0, 1, (5, 4, 6)).astype(np.float32)),
    "tiny_transformer": (tiny_transformer, lambda: RNG.integers(0, 20, (6, 7)).astype(np.int32)),
    "encoder_decoder": (encoder_decoder, lambda: _images(5)),
}


# ------------------------------------------------------------------------ the tests

@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_graph_case_on_backend(case, backend, tmp_path, request):
    """Each graph case's forward pass on the implementation under test (``pytest --backend
    NAME``; default scratch_layers): equal to Keras under the backend's gate, or refused."""
    from experiments.backends import check_backend_case
    build, inputs = GRAPH_CASES[case]
    model = randomize_weights(build(keras()), 0)
    path = tmp_path / f"{case}.keras"
    model.save(path)
    check_backend_case(request, backend, "graph", case, model, path, inputs())


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_residual_mlp(tmp_path, fmt):
    x = RNG.normal(0, 1, (9, 6)).astype(np.float32)
    check_graph(residual_mlp(keras()), x, tmp_path, _labels(9, 3), fmt)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_residual_conv_block(tmp_path, fmt):
    sm, _, _ = check_graph(residual_conv_block(keras()), _images(6, 8, 4), tmp_path, _labels(6, 3), fmt)
    fused = [s for s in sm._plan if len(s) == 1 and type(s[0]).__name__ == "Conv2D" and len(s.nodes) > 1]
    assert len(fused) == 2, "both Conv2D -> BatchNormalization pairs fold next to the skip connection"


def test_inception_block(tmp_path):
    check_graph(inception_block(keras()), _images(), tmp_path, _labels(6, 4))


def test_two_inputs_as_list_and_dict(tmp_path):
    k = keras()
    x = [_images(), RNG.normal(0, 1, (6, 5)).astype(np.float32)]
    sm, _, _ = check_graph(two_inputs(k), x, tmp_path, _labels(6, 3))
    as_dict = sm.predict({"image": x[0], "features": x[1]})
    np.testing.assert_array_equal(as_dict, sm.predict(x))
    with pytest.raises(scratch_layers.InputError, match="2 inputs.*list of 2 arrays"):
        sm.predict(x[0])
    with pytest.raises(scratch_layers.InputError, match="lacks"):
        sm.predict({"image": x[0]})
    with pytest.raises(scratch_layers.InputError, match="different batch sizes"):
        sm.predict([x[0], x[1][:3]])


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
def test_two_outputs(tmp_path, as_dict):
    k = keras()
    x = RNG.normal(0, 1, (9, 6)).astype(np.float32)
    sm, _, _ = check_graph(two_outputs(k, as_dict), x, tmp_path)
    out = sm.predict(x)
    assert isinstance(out, dict if as_dict else list)
    classes = sm.predict_classes(x)
    assert (set(classes) if as_dict else len(classes)) == ({"cls", "reg"} if as_dict else 2)
    with pytest.raises(NoBackwardError, match="2 outputs"):
        sm.loss_and_gradients(x, _labels(9, 3))


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_shared_layers(tmp_path, fmt):
    x = [_images(6, 8, 2), _images(6, 8, 2)]
    sm, _, _ = check_graph(shared_layers(keras()), x, tmp_path, _labels(6, 2), fmt)
    names = [n.name for n in sm.graph.nodes if n.layer.class_name == "Conv2D"]
    assert len(names) == 2 and names[1] == names[0] + ":1", names
    convs = {id(n.layer) for n in sm.graph.nodes if n.layer.class_name == "Conv2D"}
    assert len(convs) == 1, "a shared layer is one object called twice"


@pytest.mark.parametrize("fmt", ["keras", "h5"])
@pytest.mark.parametrize("inner_kind", ["functional", "sequential"])
def test_nested_model_called_twice(tmp_path, fmt, inner_kind):
    x = [RNG.normal(0, 1, (8, 5)).astype(np.float32) for _ in range(2)]
    sm, _, _ = check_graph(nested_called_twice(keras(), inner_kind), x, tmp_path, _labels(8, 3), fmt)
    outs = sm.intermediate_outputs(x)
    assert "encoder" in outs and "encoder:1" in outs, list(outs)


def test_operation_nodes(tmp_path):
    x = RNG.normal(0, 1, (5, 4, 6)).astype(np.float32)
    check_graph(operation_nodes(keras()), x, tmp_path, _labels(5, 3))


def test_small_transformer_text_classifier(tmp_path):
    ids = RNG.integers(0, 20, (6, 7)).astype(np.int32)
    check_graph(tiny_transformer(keras()), ids, tmp_path, _labels(6, 3))


def test_encoder_decoder(tmp_path):
    check_graph(encoder_decoder(keras()), _images(5), tmp_path, _labels(5, 3))


def test_graph_trains_like_keras(tmp_path):
    """Three Adam steps on a residual block with a shared layer equal Keras' on the
    float64 twin (losses and every weight)."""
    from backward_helpers import floatx64, twin_of
    k = keras()
    model = randomize_weights(shared_layers(k), 3)
    sm, _ = save_load(model, tmp_path)
    twin = twin_of(model)
    x = [_images(6, 8, 2), _images(6, 8, 2)]
    y = _labels(6, 2)
    with floatx64():
        twin.compile(optimizer=k.optimizers.Adam(1e-2), loss=k.losses.SparseCategoricalCrossentropy())
        opt = scratch_layers.Adam(1e-2)
        for _ in range(3):
            twin.reset_metrics()
            kloss = float(twin.train_on_batch([v.astype(np.float64) for v in x], y))
            sloss = sm.train_on_batch(x, y, opt)
            assert abs(kloss - sloss) < 1e-8, (kloss, sloss)
    for a, b in zip(sm.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-8, rtol=1e-8)


def test_save_round_trip_of_a_graph(tmp_path):
    k = keras()
    model = randomize_weights(shared_layers(k), 4)
    sm, _ = save_load(model, tmp_path)
    sm.set_weights([w * 1.5 for w in sm.get_weights()])
    sm.save(tmp_path / "scaled.keras")
    back = k.saving.load_model(tmp_path / "scaled.keras")
    x = [_images(6, 8, 2), _images(6, 8, 2)]
    np.testing.assert_allclose(sm.predict(x), back.predict(x, verbose=0), atol=1e-5)


def test_graph_summary_and_verify_rows(tmp_path):
    from scratch_layers.verify.keras import first_failing, layer_divergence
    k = keras()
    model = randomize_weights(residual_mlp(k))
    sm, _ = save_load(model, tmp_path)
    rows = layer_divergence(model, sm, RNG.normal(0, 1, (4, 6)).astype(np.float32))
    assert [r["layer"] for r in rows] == [n.name for n in sm.graph.nodes]
    assert all(r["twin_ok"] and r["allclose"] for r in rows)
    assert first_failing(rows) is None
    rows[2]["twin_ok"] = False
    assert first_failing(rows)["layer"] == rows[2]["layer"]
    assert "add" in sm.summary()


def test_verify_cli_on_a_two_input_graph(tmp_path, capsys):
    from scratch_layers.__main__ import main
    k = keras()
    model = randomize_weights(shared_layers(k))
    model.save(tmp_path / "siamese.keras")
    assert main(["verify", str(tmp_path / "siamese.keras"), "-n", "4"]) == 0
    out = capsys.readouterr().out
    assert ":1 " in out and "OK: every node" in out  # the shared layers' second calls have rows


# --------------------------------------------------------------- hostile graphs

def _graph_file(tmp_path, edit, name="g"):
    """A saved two-branch model whose config.json goes through ``edit(config)``."""
    k = keras()
    model = residual_mlp(k)
    src = tmp_path / f"{name}-src.keras"
    model.save(src)
    dst = tmp_path / f"{name}.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                cfg = json.loads(data)
                edit(cfg)
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    return dst


def _layer(cfg, cls):
    return next(e for e in cfg["config"]["layers"] if e["class_name"] == cls)


def _history(node_arg):
    return node_arg["config"]["keras_history"]


def test_cycle_is_refused(tmp_path):
    def edit(cfg):
        dense = next(e for e in cfg["config"]["layers"] if e["class_name"] == "Dense")
        relu = _layer(cfg, "Activation")["name"]
        _history(dense["inbound_nodes"][0]["args"][0])[0] = relu  # dense reads the relu after the add
    with pytest.raises(ModelFileError, match="cycle"):
        scratch_layers.load_model(_graph_file(tmp_path, edit))


@pytest.mark.parametrize("what,fragment", [
    ("layer", "unknown layer 'nowhere'"),
    ("node", "call 5 of layer"),
    ("tensor", "output 3 of call 0"),
])
def test_reference_to_unknown_layer_node_or_tensor(tmp_path, what, fragment):
    def edit(cfg):
        hist = _history(_layer(cfg, "Add")["inbound_nodes"][0]["args"][0][1])
        if what == "layer":
            hist[0] = "nowhere"
        elif what == "node":
            hist[1] = 5
        else:
            hist[2] = 3
    with pytest.raises(ModelFileError, match=fragment):
        scratch_layers.load_model(_graph_file(tmp_path, edit, what))


def test_huge_fan_in_is_refused_before_building(tmp_path):
    from scratch_layers.engine import graph
    def edit(cfg):
        args = _layer(cfg, "Add")["inbound_nodes"][0]["args"][0]
        args.extend([args[0]] * (graph.MAX_CALL_INPUTS + 1))
    with pytest.raises(ModelFileError, match="reads 100003 tensors"):
        scratch_layers.load_model(_graph_file(tmp_path, edit))


def test_deep_nesting_is_refused(tmp_path):
    k = keras()
    m = k.Sequential([k.Input((3,)), k.layers.Dense(3)])
    for i in range(12):
        m = k.Sequential([k.Input((3,)), m], name=f"level{i}")
    m.save(tmp_path / "deep.keras")
    with pytest.raises(UnsupportedLayerError, match="nested more than 8"):
        scratch_layers.load_model(tmp_path / "deep.keras")


def test_incompatible_merge_shapes_are_a_broken_file(tmp_path):
    """An Add of a (6,) and a (3,) tensor (a config edited by hand) is refused at load."""
    k = keras()
    inp = k.Input((6,))
    a, b = k.layers.Dense(6)(inp), k.layers.Dense(3)(inp)
    src = tmp_path / "src.keras"
    k.Model(inp, [k.layers.Add()([inp, a]), b]).save(src)
    dst = tmp_path / "bad.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                cfg = json.loads(data)
                dense3 = next(e for e in cfg["config"]["layers"] if e["class_name"] == "Dense"
                              and e["config"]["units"] == 3)
                _history(_layer(cfg, "Add")["inbound_nodes"][0]["args"][0][1])[0] = dense3["name"]
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    with pytest.raises(ModelFileError, match=r"Add layer 'add.*does not fit its inputs.*\(None, 6\), \(None, 3\)"):
        scratch_layers.load_model(dst)


def test_duplicate_layer_names_are_refused(tmp_path):
    def edit(cfg):
        layers = cfg["config"]["layers"]
        layers[2]["name"] = layers[1]["name"]
        layers[2]["config"]["name"] = layers[1]["name"]
    with pytest.raises(ModelFileError, match="two layers are named"):
        scratch_layers.load_model(_graph_file(tmp_path, edit))


def test_unknown_operation_is_refused_by_name(tmp_path):
    def edit(cfg):
        layers = cfg["config"]["layers"]
        add = _layer(cfg, "Add")
        add.update({"module": "keras.src.ops.numpy", "class_name": "Einsum", "registered_name": "Einsum"})
    with pytest.raises(UnsupportedLayerError, match="Einsum"):
        scratch_layers.load_model(_graph_file(tmp_path, edit))


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_functional_nested_in_sequential(tmp_path, fmt):
    """A Functional block (with a skip) inside a Sequential model: the legacy .h5 names its
    weights without the outer prefix, which once failed with 'the file holds 0'."""
    k = keras()
    i = k.Input((8, 8, 3))
    h = k.layers.Conv2D(3, 3, padding="same")(i)
    block = k.Model(i, k.layers.Add()([i, h]), name="block")
    model = k.Sequential([k.Input((8, 8, 3)), k.layers.Conv2D(3, 1), block, k.layers.Flatten(),
                          k.layers.Dense(3, activation="softmax")])
    randomize_weights(model, 5)
    sm, _ = save_load(model, tmp_path, fmt)
    x = _images()
    np.testing.assert_allclose(sm.predict(x), model.predict(x, verbose=0), atol=ATOL, rtol=RTOL)
    compare_gradients(model, sm, x, _labels(6, 3))
