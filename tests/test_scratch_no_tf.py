"""Importing scratch_layers, loading a model and predicting must not import TF/Keras."""
import os
import subprocess
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import keras  # noqa: E402

pytestmark = pytest.mark.scratch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_tensorflow_or_keras_imported(tmp_path):
    k = keras()
    tv = k.layers.TextVectorization(max_tokens=20, output_sequence_length=5)
    tv.adapt(["a b c", "d e a"])
    inp = k.Input((1,), dtype="string")
    h = k.layers.Embedding(20, 3, mask_zero=True)(tv(inp))
    h = k.layers.Bidirectional(k.layers.LSTM(2))(h)
    k.Model(inp, k.layers.Dense(2)(h)).save(tmp_path / "t.keras")
    k.Sequential([k.Input((6, 6, 3)), k.layers.Conv2D(2, 3), k.layers.MaxPooling2D(),
                  k.layers.Flatten(), k.layers.Dense(2)]).save(tmp_path / "c.keras")
    code = textwrap.dedent(f"""
        import sys, numpy as np
        import scratch_layers
        t = scratch_layers.load_model({str(tmp_path / 't.keras')!r})
        print(t.predict(["a b", "zz"]).shape)
        c = scratch_layers.load_model({str(tmp_path / 'c.keras')!r})
        print(c.predict(np.zeros((2, 6, 6, 3))).shape)
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "jax", "torch"))
        assert not bad, bad
        print("CLEAN")
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "CLEAN" in r.stdout
