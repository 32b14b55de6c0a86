"""scratch_layers vs Keras: GroupQueryAttention (forward node by node against float32 Keras
and the float64 twin, gradients against tf.GradientTape on the twin), with random non-default
weights, Keras masks (padding, causal, sliding window), gates, dropout at inference and
1, 2 or 4 key/value heads for 4 query heads."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import keras  # noqa: E402
from test_scratch_recurrent_state import check_forward, check_gradients, head  # noqa: E402

pytestmark = pytest.mark.scratch

V, T, D = 20, 7, 5
CASES = {
    "kv2": dict(num_key_value_heads=2),
    "kv1-multi-query": dict(num_key_value_heads=1),
    "kv4-as-mha": dict(num_key_value_heads=4),
    "kv2-gate": dict(num_key_value_heads=2, use_gate=True),
    "kv2-dropout-nobias": dict(num_key_value_heads=2, dropout=0.3, use_bias=False),
    "kv2-sliding-window": dict(num_key_value_heads=2, sliding_window=2),
}


def ids_batch(all_padding_row, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, V, (6, T))
    ids[1, 4:] = 0
    ids[2, :2] = 0
    ids[3, [1, 3]] = 0
    if all_padding_row:
        ids[4] = 0
    return ids.astype("int32")


def gqa_model(k, case, causal, pooled):
    inp = k.Input((T,), dtype="int32")
    e = k.layers.Embedding(V, D, mask_zero=True)(inp)
    value = k.layers.Dense(D)(e)
    o = k.layers.GroupQueryAttention(head_dim=3, num_query_heads=4, **CASES[case])(
        e, value, use_causal_mask=causal)
    if pooled:
        return k.Model(inp, head(k, [k.layers.GlobalAveragePooling1D()(o)]))
    return k.Model(inp, o)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_gqa_forward(case, causal, tmp_path):
    k = keras()
    check_forward(gqa_model(k, case, causal, False), ids_batch(True), tmp_path)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", sorted(c for c in CASES if "dropout" not in c))
def test_gqa_gradients(case, causal, tmp_path):
    k = keras()
    check_gradients(gqa_model(k, case, causal, True), ids_batch(False), tmp_path)


def test_gqa_key_input_and_cross_attention(tmp_path):
    """Query and key/value of different lengths, with an explicit key tensor."""
    k = keras()
    q_in, kv_in = k.Input((4, D)), k.Input((6, D))
    key = k.layers.Dense(D)(kv_in)
    o = k.layers.GroupQueryAttention(head_dim=2, num_query_heads=6, num_key_value_heads=3)(
        q_in, kv_in, key)
    m = k.Model([q_in, kv_in], o)
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(5, 4, D)).astype("float32"), rng.normal(size=(5, 6, D)).astype("float32")]
    check_forward(m, x, tmp_path)


def test_gqa_refuses_heads_that_do_not_group():
    from scratch_layers.errors import ModelFileError
    from scratch_layers.layers.attention import GroupQueryAttention

    cfg = {"name": "g", "head_dim": 2, "num_query_heads": 4, "num_key_value_heads": 3, "use_bias": False}
    w = [np.zeros((3, 3, 2)), np.zeros((4, 2, 3)), np.zeros((3, 4, 2)), np.zeros((3, 3, 2))]
    with pytest.raises(ModelFileError, match="multiple"):
        GroupQueryAttention(cfg, w)
