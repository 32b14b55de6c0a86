"""Hostile and broken model files: every one must give a documented error (with a
message that says what is wrong) before any large allocation, never a raw Python
exception, an out-of-memory kill or a silently wrong result. All files are built
here from a small real Keras model (zipfile / h5py / json), no binary fixtures."""
import json
import os
import struct
import sys
import tracemalloc
import zipfile

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import keras  # noqa: E402

import scratch_layers  # noqa: E402
from scratch_layers import ModelFileError, ScratchError, UnsupportedLayerError  # noqa: E402
from scratch_layers.saving import safety  # noqa: E402

pytestmark = pytest.mark.scratch


@pytest.fixture(scope="module")
def dense_file(tmp_path_factory):
    k = keras()
    m = k.Sequential([k.Input((10,)), k.layers.Dense(7, name="dense"), k.layers.Dense(2, name="head")])
    path = tmp_path_factory.mktemp("dense") / "dense.keras"
    m.save(path)
    return str(path)


@pytest.fixture(scope="module")
def conv_file(tmp_path_factory):
    k = keras()
    m = k.Sequential([k.Input((8, 8, 3)), k.layers.Conv2D(2, 3, name="c1"), k.layers.Conv2D(4, 3, name="c2"),
                      k.layers.MaxPooling2D(2), k.layers.Flatten(), k.layers.Dense(3)])
    path = tmp_path_factory.mktemp("conv") / "conv.keras"
    m.save(path)
    return str(path)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    k = keras()
    tv = k.layers.TextVectorization(vocabulary=["a", "b"], output_sequence_length=3)
    inp = k.Input((1,), dtype="string")
    path = tmp_path_factory.mktemp("text") / "text.keras"
    k.Model(inp, tv(inp)).save(path)
    return str(path)


# ------------------------------------------------------------------ helpers
def _rewrite(src, dst, edits=None, extra=None, compression=zipfile.ZIP_STORED):
    """Copy a .keras zip, passing member bytes through ``edits[name](bytes) -> bytes``
    and adding ``extra`` members (name -> bytes or a callable writing to a stream)."""
    edits, extra = edits or {}, extra or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            zout.writestr(name, edits[name](data) if name in edits else data)
        for name, data in extra.items():
            if callable(data):
                with zout.open(name, "w", force_zip64=True) as fh:
                    data(fh)
            else:
                zout.writestr(name, data)
    return dst


def _edit_config(fn):
    def edit(data):
        cfg = json.loads(data)
        fn(cfg)
        return json.dumps(cfg).encode()
    return edit


def _edit_h5(tmp_path, fn):
    """An edit of model.weights.h5 through h5py on a temporary copy."""
    def edit(data):
        p = tmp_path / "w.h5"
        p.write_bytes(data)
        with h5py.File(p, "r+") as f:
            fn(f)
        return p.read_bytes()
    return edit


def _patch_entry(path, name, **fields):
    """Overwrite fields of both zip headers (local and central) of member ``name``:
    method, flags, file_size. Lets a test write what zipfile refuses to write."""
    data = bytearray(open(path, "rb").read())
    offsets = {"local": {"flags": 6, "method": 8, "file_size": 22},
               "central": {"flags": 8, "method": 10, "file_size": 24}}
    for sig, kind, name_len_at, name_at in ((b"PK\x03\x04", "local", 26, 30),
                                            (b"PK\x01\x02", "central", 28, 46)):
        i = data.find(sig)
        while i >= 0:
            n = struct.unpack_from("<H", data, i + name_len_at)[0]
            if bytes(data[i + name_at:i + name_at + n]) == name.encode():
                for field, value in fields.items():
                    fmt = "<I" if field == "file_size" else "<H"
                    at = i + offsets[kind][field]
                    if field == "flags":
                        value |= struct.unpack_from("<H", data, at)[0]
                    struct.pack_into(fmt, data, at, value)
            i = data.find(sig, i + 4)
    open(path, "wb").write(bytes(data))


def _zeros(n_mib):
    def write(fh):
        block = b"\0" * 2 ** 20
        for _ in range(n_mib):
            fh.write(block)
    return write


def _load_error(path, cls=ModelFileError):
    with pytest.raises(cls) as ei:
        scratch_layers.load_model(path)
    return str(ei.value)


# ------------------------------------------------------------------ 1. zip bombs
def test_unused_asset_is_never_inflated(dense_file, tmp_path):
    """A 64 MiB asset that no layer uses (64 KiB compressed) is not even read."""
    dst = _rewrite(dense_file, tmp_path / "b.keras", extra={"assets/junk.bin": _zeros(64)},
                   compression=zipfile.ZIP_DEFLATED)
    assert os.path.getsize(dst) < 2 ** 20
    tracemalloc.start()
    try:
        scratch_layers.load_model(dst)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MiB while loading"


def test_config_bomb_refused_before_inflating(dense_file, tmp_path):
    pad = lambda data: data[:-1] + b" " * (8 * 2 ** 20) + b"}"  # noqa: E731 - valid JSON, 8 MiB
    dst = _rewrite(dense_file, tmp_path / "c.keras", {"config.json": pad},
                   compression=zipfile.ZIP_DEFLATED)
    msg = _load_error(dst)
    assert "config.json" in msg and "zip bomb" in msg and "100x" in msg


def test_vocabulary_bomb(text_file, tmp_path):
    vocab = "assets/layers/text_vectorization/vocabulary.txt"
    k = keras()
    tv = k.layers.TextVectorization(max_tokens=5, output_sequence_length=3)
    tv.adapt(["a b"])
    inp = k.Input((1,), dtype="string")
    src = tmp_path / "adapted.keras"
    k.Model(inp, tv(inp)).save(src)
    with zipfile.ZipFile(src) as zf:
        assert vocab in zf.namelist()
    dst = _rewrite(src, tmp_path / "v.keras", {vocab: lambda d: d + b"a\n" * (4 * 2 ** 20)},
                   compression=zipfile.ZIP_DEFLATED)
    msg = _load_error(dst)
    assert "vocabulary.txt" in msg and "zip bomb" in msg


def test_member_over_cap(dense_file, tmp_path, monkeypatch):
    """The absolute cap holds even for an uncompressed member."""
    monkeypatch.setattr(safety, "CONFIG_MAX_BYTES", 1024)
    msg = _load_error(dense_file)
    assert "cap of 1024 bytes" in msg and "config.json" in msg


def test_lying_zip_header(dense_file, tmp_path):
    """A header that declares fewer bytes than the member holds is caught."""
    dst = _rewrite(dense_file, tmp_path / "l.keras", compression=zipfile.ZIP_DEFLATED)
    _patch_entry(dst, "model.weights.h5", file_size=100)
    msg = _load_error(dst)
    assert "corrupt" in msg or "lies" in msg


# ------------------------------------------------------------------ 2. weights vs config
def test_weight_shape_does_not_match_config(dense_file, tmp_path):
    dst = _rewrite(dense_file, tmp_path / "u.keras", {"config.json": _edit_config(
        lambda c: c["config"]["layers"][1]["config"].update(units=3))})
    msg = _load_error(dst)
    assert "layer 'dense' (Dense)" in msg and "shape (10, 7)" in msg and "(?, 3)" in msg


def test_wrong_conv_kernel_is_a_file_error(conv_file, tmp_path):
    """A kernel for 5 input channels after a layer with 2 is the file's fault (not the
    user's input) and the message shows the model's shapes, not a one-sample probe."""
    def swap(f):
        del f["layers/conv2d_1/vars/0"]
        f["layers/conv2d_1/vars/0"] = np.zeros((3, 3, 5, 4), np.float32)
    dst = _rewrite(conv_file, tmp_path / "k.keras", {"model.weights.h5": _edit_h5(tmp_path, swap)})
    msg = _load_error(dst)
    assert "Conv2D layer 'c2'" in msg and "do not fit its input" in msg
    assert "(None, 6, 6, 2)" in msg


def test_huge_declared_weight_is_refused_before_reading(dense_file, tmp_path):
    """A (10, 10**9) float32 kernel (40 GB) declared in a file of a few KB."""
    def huge(f):
        for i, shape in ((0, (10, 10 ** 9)), (1, (10 ** 9,))):
            del f[f"layers/dense/vars/{i}"]
            f.create_dataset(f"layers/dense/vars/{i}", shape=shape, dtype="float32",
                             chunks=(1,) * (len(shape) - 1) + (2 ** 16,))
    dst = _rewrite(dense_file, tmp_path / "h.keras", {
        "model.weights.h5": _edit_h5(tmp_path, huge),
        "config.json": _edit_config(lambda c: c["config"]["layers"][1]["config"].update(units=10 ** 9))})
    assert os.path.getsize(dst) < 100_000
    tracemalloc.start()
    try:
        msg = _load_error(dst)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "declares 40000000000 bytes" in msg and "layer 'dense'" in msg
    assert peak < 16 * 2 ** 20


def test_compressed_weight_within_ratio_loads(dense_file, tmp_path):
    """gzip-compressed datasets (not what Keras writes, but legal HDF5) still load."""
    def gzip(f):
        for i in (0, 1):
            data = f[f"layers/dense/vars/{i}"][()]
            del f[f"layers/dense/vars/{i}"]
            f.create_dataset(f"layers/dense/vars/{i}", data=data, compression="gzip")
    dst = _rewrite(dense_file, tmp_path / "g.keras", {"model.weights.h5": _edit_h5(tmp_path, gzip)})
    x = np.ones((2, 10))
    np.testing.assert_allclose(scratch_layers.load_model(dst).predict(x),
                               scratch_layers.load_model(dense_file).predict(x))


@pytest.mark.parametrize("kind,fragment", [
    ("string", "dtype"), ("external_link", "ExternalLink"), ("soft_link", "SoftLink")])
def test_weight_dataset_kinds_refused(dense_file, tmp_path, kind, fragment):
    def edit(f):
        del f["layers/dense/vars/1"]
        if kind == "string":
            f["layers/dense/vars/1"] = np.array([b"x"] * 7)
        elif kind == "external_link":
            f["layers/dense/vars/1"] = h5py.ExternalLink("/etc/other.h5", "/bias")
        else:
            f["layers/dense/vars/1"] = h5py.SoftLink("/layers/dense/vars/0")
    dst = _rewrite(dense_file, tmp_path / "d.keras", {"model.weights.h5": _edit_h5(tmp_path, edit)})
    assert fragment in _load_error(dst)


# ------------------------------------------------------------------ 3. raw exceptions
def test_deeply_nested_json(dense_file, tmp_path):
    deep = lambda d: b"[" * 100_000 + b"]" * 100_000  # noqa: E731 - RecursionError in json
    msg = _load_error(_rewrite(dense_file, tmp_path / "j.keras", {"config.json": deep}))
    assert "config.json is not valid JSON" in msg and "RecursionError" in msg


def test_nested_config_over_depth_limit(dense_file, tmp_path):
    def nest(c):
        v = []
        for _ in range(200):
            v = [v]
        c["config"]["layers"][1]["config"]["junk"] = v
    msg = _load_error(_rewrite(dense_file, tmp_path / "n.keras", {"config.json": _edit_config(nest)}))
    assert "nested more than 100 levels" in msg


@pytest.mark.parametrize("edit,fragment", [
    (lambda c: c["config"]["layers"].insert(1, 5), "layers[1] is not a layer entry"),
    (lambda c: c["config"]["layers"][0].update(config=[1]), "layers[0] is not a layer entry"),
    (lambda c: c["config"]["layers"][1]["config"].pop("units"),
     "layer 'dense' (Dense): config is missing 'units'"),
    (lambda c: c["config"]["layers"][1]["config"].update(units="many"),
     "layer 'dense' (Dense): malformed config"),
    (lambda c: c["config"]["layers"][1]["config"].update(use_bias=[]),
     "weight arrays"),
    (lambda c: c["config"].update(layers=None), "no 'layers' list"),
    (lambda c: c.update(config=7), "malformed config"),
], ids=["int-entry", "list-config", "missing-units", "str-units", "bad-use-bias", "no-layers",
        "int-model-config"])
def test_malformed_config(dense_file, tmp_path, edit, fragment):
    msg = _load_error(_rewrite(dense_file, tmp_path / "m.keras", {"config.json": _edit_config(edit)}))
    assert fragment in msg


@pytest.mark.parametrize("option,value", [("strides", [0, 1]), ("dilation_rate", -1),
                                          ("kernel_size", [0, 3])])
def test_zero_strides_refused_at_load(conv_file, tmp_path, option, value):
    dst = _rewrite(conv_file, tmp_path / "s.keras", {"config.json": _edit_config(
        lambda c: c["config"]["layers"][1]["config"].update({option: value}))})
    assert f"{option}={value!r} must be" in _load_error(dst)


def test_pool_size_zero_refused_at_load(conv_file, tmp_path):
    dst = _rewrite(conv_file, tmp_path / "p.keras", {"config.json": _edit_config(
        lambda c: c["config"]["layers"][3]["config"].update(pool_size=[0, 0], strides=None))})
    assert "MaxPooling2D layer" in _load_error(dst) and "pool_size" in _load_error(dst)


def test_unknown_zip_compression_is_a_file_error(dense_file, tmp_path):
    dst = _rewrite(dense_file, tmp_path / "z.keras")
    _patch_entry(dst, "config.json", method=99)
    msg = _load_error(dst)  # ModelFileError, not NotImplementedError/UnsupportedLayerError
    assert "unknown zip compression method 99" in msg


def test_encrypted_member(dense_file, tmp_path):
    dst = _rewrite(dense_file, tmp_path / "e.keras")
    _patch_entry(dst, "model.weights.h5", flags=0x1)
    assert "encrypted" in _load_error(dst)


def test_file_errors_are_never_unsupported_layer_errors():
    assert not issubclass(UnsupportedLayerError, NotImplementedError)
    assert not issubclass(ModelFileError, UnsupportedLayerError)
    assert issubclass(ModelFileError, ScratchError)


def test_legacy_h5_config_attribute_cap(tmp_path, monkeypatch):
    k = keras()
    k.Sequential([k.Input((4,)), k.layers.Dense(3)]).save(tmp_path / "m.h5")
    monkeypatch.setattr(safety, "CONFIG_MAX_BYTES", 100)
    assert "attribute 'model_config' holds" in _load_error(tmp_path / "m.h5")


def test_legacy_h5_weight_shape_checked(tmp_path):
    k = keras()
    k.Sequential([k.Input((4,)), k.layers.Dense(3, name="d")]).save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"]["layers"][1]["config"]["units"] = 5
        f.attrs["model_config"] = json.dumps(cfg)
    msg = _load_error(tmp_path / "m.h5")
    assert "layer 'd' (Dense)" in msg and "(?, 5)" in msg
