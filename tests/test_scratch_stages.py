"""predict in stages: a plan split where a sample holds half as much as before, later
stages on larger chunks, depth first. Same results as one stage, whatever the workers."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import keras, randomize_weights, save_load  # noqa: E402

import scratch_layers.engine.model as model_mod  # noqa: E402
from scratch_layers.engine import executor  # noqa: E402

pytestmark = pytest.mark.scratch


def test_stages_split_where_a_sample_holds_half_as_much():
    assert executor.stages([100, 80, 50, 40, 20, 10]) == [(0, 2, 100), (2, 4, 50), (4, 5, 20), (5, 6, 10)]
    assert executor.stages([10, 80, 50]) == [(0, 3, 80)]           # the peak comes later: one stage
    assert executor.stages([100, 60, 10], growth=4) == [(0, 2, 100), (2, 3, 10)]


def _residual_cnn(k):
    x = k.Input((48, 48, 3))
    y = k.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    y = k.layers.MaxPooling2D()(y)
    z = k.layers.Conv2D(8, 3, padding="same")(y)
    y = k.layers.ReLU()(k.layers.Add()([y, z]))
    y = k.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(y)
    y = k.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(y)
    y = k.layers.GlobalAveragePooling2D()(y)
    return k.Model(x, k.layers.Dense(10, activation="softmax")(y))


def test_staged_predict_equals_one_stage_and_keras_whatever_the_workers(tmp_path, monkeypatch):
    k = keras()
    m = _residual_cnn(k)
    randomize_weights(m)
    sm, _ = save_load(m, tmp_path)
    monkeypatch.setattr(model_mod, "CHUNK_BUDGET_BYTES", 2 ** 19)  # chunks of a few images
    x = np.random.default_rng(4).uniform(-1, 1, (90, 48, 48, 3))
    sm._chunks = {}
    plan = sm._chunk_plan([x])
    assert len(plan) > 2 and plan[0][2] < model_mod.STAGED_BELOW and plan[-1][2] > plan[0][2]
    staged = {}
    for workers in (1, 2, 3):
        sm.n_workers = workers
        staged[workers] = sm.predict(x)
    monkeypatch.setattr(model_mod, "STAGED_BELOW", 0)
    one_stage = sm.predict(x)
    for workers in (2, 3):
        assert np.array_equal(staged[workers], staged[1]), f"{workers} workers differ from 1"
    assert np.abs(staged[1] - one_stage).max() <= 1e-14
    np.testing.assert_allclose(staged[1], m.predict(x.astype("float32"), verbose=0), atol=1e-5, rtol=1e-5)


def test_merge_states_concatenates_the_batch_axis_only():
    a = ({1: np.ones((2, 3)), 2: np.arange(4.0)}, {1: None, 2: None}, 2)
    b = ({1: np.zeros((1, 3)), 2: np.arange(4.0)}, {1: None, 2: None}, 1)
    values, masks, count = executor.merge_states([a, b])
    assert count == 3 and values[1].shape == (3, 3) and masks == {1: None, 2: None}
    assert values[2].shape == (4,)  # no batch axis (4 != counts): taken once
