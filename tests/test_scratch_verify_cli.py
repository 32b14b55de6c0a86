"""``python -m scratch_layers verify``: per-layer table, exit 0 on a match, 1 on a mismatch, 2 on bad use."""
import numpy as np
import pytest

from keras_factories import keras, randomize_weights

pytestmark = pytest.mark.scratch


def _cnn(tmp_path):
    k = keras()
    L = k.layers
    m = k.Sequential([k.Input((12, 12, 3)), L.Conv2D(4, 3, padding="same"), L.BatchNormalization(),
                      L.ReLU(), L.MaxPooling2D(2), L.Flatten(), L.Dense(5, activation="softmax")])
    randomize_weights(m, 3)
    path = tmp_path / "cnn.keras"
    m.save(path)
    return str(path)


def _ids_lstm(tmp_path):
    k = keras()
    L = k.layers
    m = k.Sequential([k.Input((9,), dtype="int32"), L.Embedding(30, 6, mask_zero=True),
                      L.Bidirectional(L.LSTM(5)), L.Dense(3, activation="softmax")])
    randomize_weights(m, 4)
    path = tmp_path / "ids.keras"
    m.save(path)
    return str(path)


@pytest.mark.parametrize("build", [_cnn, _ids_lstm])
def test_verify_passes_with_generated_inputs(build, tmp_path, capsys):
    from scratch_layers.__main__ import main
    assert main(["verify", build(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "max|Δ| float64 twin" in out and "OK: every node equals Keras" in out
    assert "FAIL" not in out


def test_generated_ids_stay_in_the_embedding_range_and_are_padded(tmp_path):
    import scratch_layers
    from scratch_layers.verify.keras import generated_inputs
    m = scratch_layers.load_model(_ids_lstm(tmp_path))
    ids = generated_inputs(m, 64)
    assert ids.shape == (64, 9) and ids.min() >= 0 and ids.max() < 30
    assert (ids == 0).any() and (ids[:, 0] != 0).all(), "post-padding, never an empty row"


def test_verify_fails_with_exit_1_when_scratch_differs(tmp_path, capsys, monkeypatch):
    from scratch_layers.__main__ import main
    from scratch_layers.layers.core import Dense
    original = Dense.forward
    monkeypatch.setattr(Dense, "forward", lambda self, x, mask=None: original(self, x, mask) + 1e-7)
    assert main(["verify", _cnn(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL: 1 node(s) differ" in out and "dense" in out
    assert "the first that diverges is 'dense" in out


def test_verify_reads_an_npy_input(tmp_path, capsys):
    from scratch_layers.__main__ import main
    x = np.random.default_rng(0).random((5, 12, 12, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["verify", _cnn(tmp_path), "--input", str(tmp_path / "x.npy")]) == 0
    assert "5 inputs (from" in capsys.readouterr().out


def test_verify_bad_use_exits_2_with_a_message(tmp_path, capsys):
    from scratch_layers.__main__ import main
    assert main(["verify", str(tmp_path / "missing.keras")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0 and "float64 twin" in capsys.readouterr().out
