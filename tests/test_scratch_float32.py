"""``load_model(path, dtype="float32")``: Keras' own precision, within 1e-5 of Keras, float32 all the way."""
import numpy as np
import pytest

from keras_factories import assert_close, keras, randomize_weights, save_load

pytestmark = pytest.mark.scratch


def _cnn(k):
    L = k.layers
    return k.Sequential([k.Input((16, 16, 3)), L.RandomFlip("horizontal"),
                         L.Conv2D(8, 3, padding="same", use_bias=False), L.BatchNormalization(), L.ReLU(),
                         L.MaxPooling2D(), L.Conv2D(8, 5, padding="same", activation="relu"),
                         L.AveragePooling2D(3, strides=2, padding="same"), L.DepthwiseConv2D(3, padding="same"),
                         L.GlobalAveragePooling2D(), L.Dense(6, activation="gelu"), L.Dense(4, activation="softmax")])


def _recurrent(cell, bidirectional):
    def build(k):
        L = k.layers
        rnn = getattr(L, cell)
        stack = [rnn(6, return_sequences=True), rnn(5)]
        if bidirectional:
            stack = [L.Bidirectional(layer) for layer in stack]
        return k.Sequential([k.Input((9,), dtype="int32"), L.Embedding(20, 7, mask_zero=True), *stack,
                             L.Dense(3, activation="softmax")])
    return build


def _ids(n=16):
    ids = np.random.default_rng(1).integers(1, 20, (n, 9)).astype("int32")
    ids[1, 5:] = 0
    ids[2, :3] = 0
    ids[3, [2, 4]] = 0
    return ids


CASES = {
    "cnn-bn-avg-depthwise-gelu": (_cnn, lambda: np.random.default_rng(0).random((12, 16, 16, 3)).astype("float32")),
    "bilstm-stacked": (_recurrent("LSTM", True), _ids),
    "bisimplernn-stacked": (_recurrent("SimpleRNN", True), _ids),
    "gru-stacked": (_recurrent("GRU", False), _ids),
}


@pytest.mark.parametrize("case", list(CASES))
def test_float32_path_matches_keras_and_stays_float32(case, tmp_path, record_property):
    import scratch_layers
    build, make_x = CASES[case]
    k = keras()
    model = randomize_weights(build(k), 5)
    _, path = save_load(model, tmp_path)
    x = make_x()
    ref = model.predict(x, verbose=0)
    m32 = scratch_layers.load_model(path, dtype="float32")
    got = m32.predict(x)
    assert got.dtype == np.float32 and m32.dtype == np.float32
    assert_close(got, ref, record_property, f"{case} float32")
    inter = m32.intermediate_outputs(x)
    assert all(np.asarray(v).dtype in (np.float32, np.int64, np.int32, np.bool_) for v in inter.values()), \
        {n: np.asarray(v).dtype for n, v in inter.items()}
    m64 = scratch_layers.load_model(path)
    assert m64.predict(x).dtype == np.float64, "the default stays the float64 reference"


def test_text_model_float32(tmp_path):
    import scratch_layers
    k = keras()
    L = k.layers
    vec = L.TextVectorization(output_sequence_length=8)
    vec.adapt(["apa kabar dunia", "makanan enak sekali", "tidak suka ini"])
    inp = k.Input(shape=(), dtype="string")
    h = L.Bidirectional(L.LSTM(4))(L.Embedding(vec.vocabulary_size(), 5, mask_zero=True)(vec(inp)))
    model = randomize_weights(k.Model(inp, L.Dense(3, activation="softmax")(h)), 2)
    path = tmp_path / "text.keras"
    model.save(path)
    texts = np.array(["makanan enak", "apa ini kabar dunia tidak", "kata baru sekali"], dtype=object)
    got = scratch_layers.load_model(path, dtype="float32").predict(texts)
    assert got.dtype == np.float32
    assert_close(got, model.predict(texts, verbose=0), None, "text float32")


def test_unknown_dtype_is_refused(tmp_path):
    import scratch_layers
    with pytest.raises(ValueError, match="'float32' or 'float64'"):
        scratch_layers.load_model(tmp_path / "whatever.keras", dtype="float16")
