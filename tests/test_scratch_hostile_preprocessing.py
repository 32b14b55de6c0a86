"""Hostile configs of the preprocessing layers (issue 28) are refused at load time with
ModelFileError, before anything large is allocated: a Resizing to 10**9 pixels, a
CategoryEncoding of 10**9 tokens, a Hashing of 10**9 bins with an encoded output, a lookup
padded to 10**9 tokens, a vocabulary of more than MAX_VOCABULARY_TOKENS tokens (in the asset
or in the config), and malformed options. Each file is a real Keras save with its config
edited, as an attacker would."""
import json
import os
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import keras  # noqa: E402

import scratch_layers  # noqa: E402
from scratch_layers import ModelFileError, UnsupportedLayerError  # noqa: E402
from scratch_layers.layers import bounds, text  # noqa: E402

pytestmark = pytest.mark.scratch

# a hostile load may use this much memory at most (the refusals allocate nothing large)
PEAK_MIB = 32


def _save(model, path):
    model.save(path)
    return path


def _edited(src, dst, layer_index, **fields):
    """Copy of the .keras file ``src`` whose layer ``layer_index`` has ``fields`` in its config
    (a value None deletes the key)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "config.json":
                cfg = json.loads(data)
                layer_cfg = cfg["config"]["layers"][layer_index]["config"]
                for k, v in fields.items():
                    if v is None:
                        layer_cfg.pop(k, None)
                    else:
                        layer_cfg[k] = v
                data = json.dumps(cfg).encode()
            zout.writestr(name, data)
    return dst


def _refused(path, match, cls=ModelFileError):
    """load_model raises ``cls`` matching ``match``, peaking under PEAK_MIB."""
    tracemalloc.start()
    try:
        with pytest.raises(cls, match=match) as info:
            scratch_layers.load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK_MIB * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MiB while refusing"
    return str(info.value)


@pytest.fixture(scope="module")
def resizing_file(tmp_path_factory):
    k = keras()
    m = k.Sequential([k.Input((6, 5, 3)), k.layers.Resizing(4, 4)])
    return _save(m, str(tmp_path_factory.mktemp("rs") / "resize.keras"))


@pytest.mark.parametrize("height,width", [(10 ** 9, 1), (31623, 31623), (2 ** 20, 2 ** 9)])
def test_resizing_to_a_billion_pixels(resizing_file, tmp_path, height, width):
    msg = _refused(_edited(resizing_file, str(tmp_path / "h.keras"), 1, height=height, width=width),
                   "Resizing layer .* would hold")
    assert "MAX_SAMPLE_ELEMENTS" in msg


def test_resizing_under_the_cap_but_over_with_channels_fails_at_load(resizing_file, tmp_path):
    """height x width under the cap, x 3 channels over it: the load-time probe (the input
    shape is fixed) refuses it, before the resize allocates."""
    side = int((bounds.MAX_SAMPLE_ELEMENTS // 2) ** 0.5)
    _refused(_edited(resizing_file, str(tmp_path / "c.keras"), 1, height=side, width=side),
             "would hold")


@pytest.mark.parametrize("fields,match", [
    (dict(height=0), "height=0 is not a positive integer"),
    (dict(width=-3), "width=-3"),
    (dict(height="4"), "height=4 is not a positive integer"),
    (dict(crop_to_aspect_ratio=True, pad_to_aspect_ratio=True), "both set"),
])
def test_resizing_malformed(resizing_file, tmp_path, fields, match):
    _refused(_edited(resizing_file, str(tmp_path / "m.keras"), 1, **fields), match)


@pytest.mark.parametrize("fields,cls,match", [
    (dict(interpolation="gaussian"), UnsupportedLayerError, "interpolation='gaussian'"),
    (dict(fill_mode="reflect"), UnsupportedLayerError, "fill_mode='reflect'"),
    (dict(data_format="channels_first"), UnsupportedLayerError, "data_format"),
])
def test_resizing_unsupported(resizing_file, tmp_path, fields, cls, match):
    _refused(_edited(resizing_file, str(tmp_path / "u.keras"), 1, **fields), match, cls)


def test_center_crop_to_a_billion_pixels(tmp_path):
    k = keras()
    src = _save(k.Sequential([k.Input((6, 5, 3)), k.layers.CenterCrop(4, 4)]), str(tmp_path / "cc.keras"))
    _refused(_edited(src, str(tmp_path / "h.keras"), 1, height=10 ** 5, width=10 ** 4), "would hold")


@pytest.fixture(scope="module")
def category_file(tmp_path_factory):
    k = keras()
    inp = k.Input((3,), dtype="int32")
    m = k.Model(inp, k.layers.CategoryEncoding(5, output_mode="multi_hot")(inp))
    return _save(m, str(tmp_path_factory.mktemp("ce") / "ce.keras"))


@pytest.mark.parametrize("mode", ["one_hot", "multi_hot", "count"])
def test_category_encoding_with_a_billion_tokens(category_file, tmp_path, mode):
    _refused(_edited(category_file, str(tmp_path / "t.keras"), 1, num_tokens=10 ** 9, output_mode=mode),
             "CategoryEncoding layer .* would hold 1,000,000,000 values")


@pytest.mark.parametrize("value", [0, -1, "5", 2.5, None])
def test_category_encoding_malformed_num_tokens(category_file, tmp_path, value):
    _refused(_edited(category_file, str(tmp_path / "t.keras"), 1, num_tokens=value), "num_tokens")


@pytest.fixture(scope="module")
def hashing_file(tmp_path_factory):
    k = keras()
    inp = k.Input((2,), dtype="string")
    m = k.Model(inp, k.layers.Hashing(8)(inp))
    return _save(m, str(tmp_path_factory.mktemp("hs") / "hash.keras"))


@pytest.mark.parametrize("mode", ["one_hot", "multi_hot", "count"])
def test_hashing_with_a_billion_bins_encoded(hashing_file, tmp_path, mode):
    _refused(_edited(hashing_file, str(tmp_path / "b.keras"), 1, num_bins=10 ** 9, output_mode=mode),
             "Hashing layer .* would hold 1,000,000,000 values")


def test_hashing_with_a_billion_bins_as_ints_is_harmless(hashing_file, tmp_path):
    """output_mode="int" allocates nothing per bin: it loads and runs."""
    m = scratch_layers.load_model(_edited(hashing_file, str(tmp_path / "i.keras"), 1, num_bins=10 ** 9))
    out = m.predict(np.array([["a", "b"]], dtype=object))
    assert out.shape == (1, 2) and (0 <= out).all() and (out < 10 ** 9).all()


@pytest.mark.parametrize("salt", ["x", [1, 2, 3], [1.5, 2], True])
def test_hashing_malformed_salt(hashing_file, tmp_path, salt):
    _refused(_edited(hashing_file, str(tmp_path / "s.keras"), 1, salt=salt), "salt")


@pytest.fixture(scope="module")
def lookup_file(tmp_path_factory):
    k = keras()
    sl = k.layers.StringLookup(output_mode="int")
    sl.adapt(np.array([["a", "b", "c"]]))
    inp = k.Input((2,), dtype="string")
    return _save(k.Model(inp, sl(inp)), str(tmp_path_factory.mktemp("sl") / "sl.keras"))


def _with_asset(src, dst, data):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, data if name.endswith("vocabulary.txt") else zin.read(name))
    return dst


def test_vocabulary_asset_over_the_token_cap(lookup_file, tmp_path):
    """MAX_VOCABULARY_TOKENS + 1 one-character lines (8 MB): refused before the list of
    tokens is built."""
    n = text.MAX_VOCABULARY_TOKENS + 1
    data = b"x\n" * n
    src = _with_asset(lookup_file, str(tmp_path / "v.keras"), data)
    with pytest.raises(ModelFileError, match="over the cap"):
        scratch_layers.load_model(src)


@pytest.mark.parametrize("separator", [b"\r", b"\xe2\x80\xa8", b"\x0c"])
def test_vocabulary_asset_cap_counts_every_line_break(lookup_file, tmp_path, monkeypatch, separator):
    """Keras splits with str.splitlines: every break it splits on is counted."""
    monkeypatch.setattr(text, "MAX_VOCABULARY_TOKENS", 100)
    src = _with_asset(lookup_file, str(tmp_path / "v.keras"), separator.join([b"t%d" % i for i in range(200)]))
    with pytest.raises(ModelFileError, match="over the cap"):
        scratch_layers.load_model(src)


def test_vocabulary_in_config_over_the_token_cap(lookup_file, tmp_path, monkeypatch):
    monkeypatch.setattr(text, "MAX_VOCABULARY_TOKENS", 100)
    src = _edited(lookup_file, str(tmp_path / "c.keras"), 1, vocabulary=[f"t{i}" for i in range(101)])
    _refused(src, "over the cap of 100")


def test_lookup_padded_to_a_billion_tokens(lookup_file, tmp_path):
    src = _edited(lookup_file, str(tmp_path / "p.keras"), 1, output_mode="multi_hot",
                  max_tokens=10 ** 9, pad_to_max_tokens=True, vocabulary_size=None)
    _refused(src, "would hold 1,000,000,000 values")


@pytest.mark.parametrize("fields,match", [
    (dict(vocabulary=["a", "b", "a"]), "repeats a token"),
    (dict(vocabulary=["a", 3]), "not a string"),
    (dict(vocabulary=["a", "b"], vocabulary_size=9), "vocabulary_size=9"),
    (dict(num_oov_indices=-1), "num_oov_indices=-1"),
    (dict(invert=True, output_mode="count"), "invert=True"),
    (dict(vocabulary=["a", "b"], max_tokens=2), "max_tokens=2"),
])
def test_lookup_malformed(lookup_file, tmp_path, fields, match):
    fields.setdefault("vocabulary_size", None)
    _refused(_edited(lookup_file, str(tmp_path / "m.keras"), 1, **fields), match)


def test_lookup_without_vocabulary(lookup_file, tmp_path):
    with zipfile.ZipFile(lookup_file) as zin, zipfile.ZipFile(tmp_path / "n.keras", "w") as zout:
        for name in zin.namelist():
            if not name.endswith("vocabulary.txt"):
                zout.writestr(name, zin.read(name))
    _refused(str(tmp_path / "n.keras"), "no vocabulary")


def test_vocabulary_file_path_is_refused(lookup_file, tmp_path):
    """A vocabulary *path* names a file on the saving machine: never opened."""
    _refused(_edited(lookup_file, str(tmp_path / "p.keras"), 1, vocabulary="/etc/passwd"),
             "file path", UnsupportedLayerError)


def test_discretization_malformed(tmp_path):
    k = keras()
    inp = k.Input((2,))
    src = _save(k.Model(inp, k.layers.Discretization([0.0, 1.0])(inp)), str(tmp_path / "d.keras"))
    _refused(_edited(src, str(tmp_path / "u.keras"), 1, bin_boundaries=[1.0, 0.0]), "not a sorted")
    _refused(_edited(src, str(tmp_path / "n.keras"), 1, bin_boundaries=None), "never adapted")
    _refused(_edited(src, str(tmp_path / "s.keras"), 1, bin_boundaries=["a"]), "not numbers")


@pytest.mark.parametrize("input_shape,fields,what", [
    ((6, 5, 1), dict(height=1, width=2 ** 27, pad_to_aspect_ratio=True), "padded image"),
    ((4, 1000, 1), dict(height=2 ** 20, width=2 ** 7), "row pass"),
    ((1000, 4, 1), dict(height=2 ** 7, width=2 ** 20), "row pass of the gradient"),
])
def test_resizing_work_arrays_over_the_cap(tmp_path, input_shape, fields, what):
    """An output under the cap whose intermediate arrays are not: refused by the load-time
    probe (the input shape is fixed) before they are allocated."""
    k = keras()
    src = _save(k.Sequential([k.Input(input_shape), k.layers.Resizing(4, 4)]), str(tmp_path / "r.keras"))
    _refused(_edited(src, str(tmp_path / "w.keras"), 1, **fields), f"its {what} would hold")
