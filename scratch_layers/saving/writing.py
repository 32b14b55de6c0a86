"""``Model.save``: write a loaded model back with its current weights, readable by Keras.

The architecture is never re-serialized: the file the model was loaded from provides
everything but the weights. A ``.keras`` archive is rewritten member by member (streamed,
with the same caps as loading), its ``model.weights.h5`` replaced by a copy whose datasets
(the same paths Keras wrote, recorded at load time in ``layer.weight_paths``) hold the
new values in their stored dtype. A legacy ``.h5`` file is copied and its datasets
overwritten the same way. The new file is written next to ``path`` and moved into place.
"""
import os
import shutil
import tempfile
import zipfile

import h5py
import numpy as np

from ..errors import ModelFileError
from . import safety


def _write_weights(h5, model):
    for layer in model.layers:
        paths = getattr(layer, "weight_paths", [])
        if len(paths) != len(layer.weights):
            raise ModelFileError(f"{layer.class_name} layer '{layer.name}': its weights cannot be "
                                 "mapped back to the file it was loaded from")
        for name, value in zip(paths, layer.weights):
            ds = h5[name]
            if ds.shape != value.shape:
                raise ModelFileError(f"{layer.class_name} layer '{layer.name}': dataset {name} has "
                                     f"shape {ds.shape}, the weight {value.shape}")
            ds[...] = np.asarray(value, dtype=ds.dtype)


def _source(model, path):
    src = model.source
    if not src:
        raise ModelFileError("Model.save needs the file the model was loaded from (its config "
                             "is copied from there); this model was not loaded with load_model")
    if not os.path.isfile(src["path"]):
        raise ModelFileError(f"Model.save: the source file {src['path']} is gone; it provides the "
                             "architecture, so keep it until the model is saved")
    want = ".keras" if src["format"] == "keras" else ".h5"
    if not os.fspath(path).endswith(want):
        raise ValueError(f"Model.save: this model was loaded from a {want} file and is saved in "
                         f"the same format; give a path ending in {want}, got {path!r}")
    return src


def save_model(model, path):
    src = _source(model, path)
    path = os.path.abspath(os.fspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=os.path.dirname(path))
    os.close(fd)
    try:
        if src["format"] == "keras":
            _save_keras(model, src["path"], tmp)
        else:
            shutil.copyfile(src["path"], tmp)
            with h5py.File(tmp, "r+") as h5:
                _write_weights(h5["model_weights"], model)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _save_keras(model, source, out_path):
    with zipfile.ZipFile(source) as zf, zipfile.ZipFile(out_path, "w", zipfile.ZIP_STORED) as out:
        for info in zf.infolist():
            if info.filename == "model.weights.h5":
                with safety.extract_member(zf, info.filename, safety.WEIGHTS_MAX_BYTES, source) as src, \
                        tempfile.TemporaryDirectory() as d:
                    weights = os.path.join(d, "model.weights.h5")
                    with open(weights, "wb") as fh:
                        shutil.copyfileobj(src, fh)
                    with h5py.File(weights, "r+") as h5:
                        _write_weights(h5, model)
                    out.write(weights, "model.weights.h5")
            else:
                with out.open(zipfile.ZipInfo(info.filename, info.date_time), "w") as dst:
                    safety._stream(zf, info.filename, safety.WEIGHTS_MAX_BYTES, source, dst.write)
