"""The implementation under test as a plugin (``pytest --backend NAME``,
``scratch_layers/verify/backends.py``): wrong, refusing and registered backends, and the
shipped ones (the course-style NumPy backend, ONNX Runtime) on the smoke-profile models.

The smoke-profile CNN and LSTM baselines are trained once into a temporary cache (seconds);
the wrong and refusing backends run through pytest itself in a subprocess, on the study
verification of the smoke CNN and on one graph case.
"""
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from scratch_layers.verify.backends import BackendError, Refused, resolve

ROOT = Path(__file__).resolve().parent.parent
CNN_RUN = "cnn-3-32_64_128-3_3_3-max-s1"   # the smoke profile's CNN baseline run

# A backend that is scratch_layers plus 1e-3 on every output (and every node), and one
# that refuses every model: written as modules of a temporary directory on PYTHONPATH.
PLUGINS = {
    "off_by_1e3.py": '''
        import scratch_layers

        class OffBy:
            def __init__(self, model):
                self.model = model
            def predict(self, x):
                return self.model.predict(x) + 1e-3
            def intermediate_outputs(self, x):
                return {k: v + 1e-3 for k, v in self.model.intermediate_outputs(x).items()}

        def load(path):
            return OffBy(scratch_layers.load_model(path))
        ''',
    "refuse_all.py": '''
        class Declined(Exception):
            pass

        def load(path):
            raise Declined("this backend runs nothing yet")

        load.refuses = (Declined,)
        ''',
    # scratch_layers with every gradient off by 1e-3 (its loss and outputs exact)
    "grads_off_1e3.py": '''
        import scratch_layers

        class GradsOff:
            def __init__(self, model):
                self.model = model
            def predict(self, x):
                return self.model.predict(x)
            def loss_and_gradients(self, x, y):
                loss, grads = self.model.loss_and_gradients(x, y)
                return loss, [g + 1e-3 for g in grads]

        def load(path):
            return GradsOff(scratch_layers.load_model(path))
        ''',
}


@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory):
    """The smoke CNN and LSTM baselines, trained once into a temporary model cache."""
    from experiments.families import family
    from experiments.runs import CACHE_ENV, get_trained

    root = tmp_path_factory.mktemp("smoke-models")
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(root)
    try:
        models = {name: get_trained(family(name), family(name).baseline, "smoke", 1) for name in ("cnn", "lstm")}
    finally:
        if old is None:
            os.environ.pop(CACHE_ENV)
        else:
            os.environ[CACHE_ENV] = old
    return root, models


@pytest.fixture(scope="module")
def plugin_run(smoke_cache, tmp_path_factory):
    """pytest in a subprocess with ``--backend off_by_1e3:load --backend refuse_all:load`` on
    the smoke CNN's study verification and one graph case: {test id: (outcome, message)}."""
    from experiments.runs import CACHE_ENV
    plugins = tmp_path_factory.mktemp("plugins")
    for name, code in PLUGINS.items():
        (plugins / name).write_text(textwrap.dedent(code))
    junit = plugins / "junit.xml"
    env = {**os.environ, CACHE_ENV: str(smoke_cache[0]), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(plugins), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "tests/test_verify_models.py", "tests/test_scratch_graph.py",
           "-k", f"(test_scratch_matches_keras and {CNN_RUN}) or (test_graph_case_on_backend and residual_mlp)",
           "--profile", "smoke", "--no-train", "--benchmark-disable", "-p", "no:cacheprovider", "-q",
           "--backend", "off_by_1e3:load", "--backend", "refuse_all:load", f"--junitxml={junit}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert junit.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        results[case.get("name")] = (outcome.tag if outcome is not None else "passed",
                                     "" if outcome is None else (outcome.get("message") or "") + (outcome.text or ""))
    return proc, results


def _only(results, *parts):
    hits = [v for k, v in results.items() if all(p in k for p in parts)]
    assert len(hits) == 1, (parts, list(results))
    return hits[0]


def test_backend_off_by_1e3_fails_naming_the_model_and_node(plugin_run):
    proc, results = plugin_run
    assert proc.returncode == 1, proc.stdout[-2000:]
    outcome, message = _only(results, "test_scratch_matches_keras", CNN_RUN, "off_by_1e3")
    assert outcome == "failure"
    assert f"{CNN_RUN}: off_by_1e3:load != Keras" in message
    # the first node of the CNN (a smoke model trained after others in one process is
    # saved as 'random_flip_<k>' by Keras' auto-naming)
    assert re.search(r"first diverging layer: 'random_flip(_\d+)?'", message), message
    assert "max |diff| 0.001" in message
    outcome, message = _only(results, "residual_mlp", "off_by_1e3")
    assert outcome == "failure" and re.search(r"first diverging node 'dense(_\d+)?' \(max \|diff\| 0\.001", message), \
        message   # the first node of the residual MLP


def test_refusing_backend_is_reported_as_refused_and_passes(plugin_run):
    _, results = plugin_run
    for parts in [("test_scratch_matches_keras", CNN_RUN), ("residual_mlp",)]:
        outcome, message = _only(results, *parts, "refuse_all")
        assert outcome == "skipped", (outcome, message)
        assert "refused by backend 'refuse_all:load': Declined: this backend runs nothing yet" in message


def test_backend_registered_by_an_installed_package_is_found_by_name(tmp_path, monkeypatch):
    """A distribution on sys.path (a ``*.dist-info`` with ``entry_points.txt``, as pip writes
    it) registers ``dummy`` in the group ``scratchnet.backends``."""
    (tmp_path / "dummy_backend.py").write_text(textwrap.dedent('''
        import numpy as np

        class Zeros:
            def predict(self, x):
                return np.zeros((len(x), 3))

        def load(path):
            return Zeros()
        '''))
    info = tmp_path / "dummy_backend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dummy-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[scratchnet.backends]\ndummy = dummy_backend:load\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    backend = resolve("dummy")
    assert backend.name == "dummy"
    assert backend.load("any.keras").predict([1, 2]).shape == (2, 3)


@pytest.mark.parametrize("name,fragment", [
    ("no_such_backend", "unknown backend 'no_such_backend'.*scratchnet.backends.*module:callable"),
    ("no_such_module_xyz:load", "module 'no_such_module_xyz' does not import"),
    ("json:no_such_function", "module 'json' has no attribute 'no_such_function'"),
    ("json", "unknown backend 'json'"),
])
def test_bad_backend_names_say_what_is_missing(name, fragment):
    with pytest.raises(BackendError, match=fragment):
        resolve(name)


def test_load_without_predict_is_a_clear_error():
    with pytest.raises(BackendError, match=r"returned str, which has no predict\(x\) method"):
        resolve("json:dumps").load("model.keras")


def test_bad_backend_stops_pytest_before_collection():
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_backends.py", "--co", "-q",
                           "-p", "no:cacheprovider", "--backend", "nowhere_module:load"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stdout[-2000:]   # pytest's usage error
    assert "--backend: backend 'nowhere_module:load': module 'nowhere_module' does not import" in proc.stderr


def _verify(trained, backend_name, n=None):
    """The study comparison (experiments.verification) of one backend on a trained model."""
    from experiments.verification import compare, keras_predict
    from scratch_layers.verify.keras import as_float64, float64_twin
    splits = trained.family.load_data()
    x, y = splits.x_test[:n], splits.y_test[:n]
    backend = resolve(backend_name)
    model = backend.load(trained.path)
    got = np.asarray(model.predict(x))
    keras_model = trained.load_keras()
    kp = keras_predict(keras_model, x)
    v = compare(kp, got, y, len(splits.class_names))
    v.precision = backend.precision_of(got)
    v.max_abs_diff_float64 = float(np.abs(keras_predict(float64_twin(keras_model), as_float64(x)) - got).max())
    return v


def test_course_backend_passes_on_the_smoke_cnn(smoke_cache):
    v = _verify(smoke_cache[1]["cnn"], "course", n=2000)   # the full split: pytest --backend course -m cnn
    assert v.precision == "float64"
    assert v.passed, v
    assert v.max_abs_diff_float64 < 1e-12


def test_course_backend_passes_on_the_smoke_lstm(smoke_cache):
    v = _verify(smoke_cache[1]["lstm"], "course")    # the whole test split, raw strings in
    assert v.n_test == len(smoke_cache[1]["lstm"].family.load_data().y_test)
    assert v.precision == "float64" and v.passed, v


def test_course_backend_refuses_a_graph_model(tmp_path):
    import keras
    x = inp = keras.Input((6,))
    h = keras.layers.Dense(6)(x)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Add()([x, h]))
    path = tmp_path / "residual.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(Refused, match="graph model: layer 'add.*' \\(Add\\).*only chains"):
        resolve("course").load(path)


def test_course_backend_does_not_use_scratch_layers():
    """It is an independent implementation: no module of it imports scratch_layers."""
    for path in (ROOT / "examples" / "course_backend").glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+(scratch_layers|experiments)\b", path.read_text(), re.M), path


def test_onnxruntime_backend_passes_on_the_smoke_cnn(smoke_cache):
    v = _verify(smoke_cache[1]["cnn"], "onnxruntime")
    assert v.precision == "float32"
    assert v.n_test == 10000 and v.passed, v


def test_onnxruntime_backend_refuses_a_text_model_with_the_reason(smoke_cache):
    with pytest.raises(Refused, match="strings"):
        resolve("onnxruntime").load(smoke_cache[1]["lstm"].path)


def _small_sequential_lstm(tmp_path):
    """A Sequential chain (Embedding with mask -> Bidirectional LSTM -> SimpleRNN -> Dense)."""
    import keras

    from keras_factories import randomize_weights
    L = keras.layers
    m = keras.Sequential([keras.Input((9,), dtype="int32"), L.Embedding(30, 6, mask_zero=True),
                          L.Bidirectional(L.LSTM(5, return_sequences=True)), L.SimpleRNN(4),
                          L.Dense(3, activation="softmax")])
    randomize_weights(m, 4)
    path = tmp_path / "seq.keras"
    m.save(path)
    return str(path)


def test_verify_cli_with_a_backend(tmp_path, capsys):
    """``python -m scratch_layers verify MODEL --backend NAME``: the course backend on a
    Sequential chain passes node by node; a wrong backend exits 1 naming the first node; a
    refusal or a bad name exits 2 saying why."""
    from scratch_layers.__main__ import main
    path = _small_sequential_lstm(tmp_path)
    assert main(["verify", path, "--backend", "course"]) == 0
    out = capsys.readouterr().out
    assert "backend course (float64)" in out and "OK: every node equals Keras" in out

    (tmp_path / "off_cli.py").write_text(textwrap.dedent(PLUGINS["off_by_1e3.py"]))
    (tmp_path / "refuse_cli.py").write_text(textwrap.dedent(PLUGINS["refuse_all.py"]))
    sys.path.insert(0, str(tmp_path))
    try:
        assert main(["verify", path, "--backend", "off_cli:load"]) == 1
        out = capsys.readouterr().out
        assert re.search(r"the first that diverges is 'embedding(_\d+)?' \(Embedding\)", out), out
        assert main(["verify", path, "--backend", "refuse_cli:load"]) == 2
        assert "refused by backend 'refuse_cli:load': Declined" in capsys.readouterr().err
    finally:
        sys.path.remove(str(tmp_path))
    assert main(["verify", path, "--backend", "nope"]) == 2
    assert "unknown backend 'nope'" in capsys.readouterr().err


# ------------------------------------------------------------------ the backward checks per backend

@pytest.fixture(scope="module")
def backward_run(smoke_cache, tmp_path_factory):
    """pytest in a subprocess: the smoke CNN baseline's backward check
    (``tests/test_backward_models.py``) with ``--backend scratch_layers --backend
    grads_off_1e3:load --backend off_by_1e3:load`` (the last has no loss_and_gradients):
    ({test id: (outcome, message)}, the ``backend`` records of group ``backward``)."""
    import ast

    from experiments.runs import CACHE_ENV
    plugins = tmp_path_factory.mktemp("plugins-backward")
    for name, code in PLUGINS.items():
        (plugins / name).write_text(textwrap.dedent(code))
    junit = plugins / "junit.xml"
    env = {**os.environ, CACHE_ENV: str(smoke_cache[0]), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(plugins), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "tests/test_backward_models.py", "-m", "cnn",
           "--profile", "smoke", "--no-train", "--benchmark-disable", "-p", "no:cacheprovider", "-q",
           "--backend", "scratch_layers", "--backend", "grads_off_1e3:load", "--backend", "off_by_1e3:load",
           f"--junitxml={junit}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert junit.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results, records = {}, []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        results[case.get("name")] = (outcome.tag if outcome is not None else "passed",
                                     "" if outcome is None else (outcome.get("message") or "") + (outcome.text or ""))
        records += [ast.literal_eval(p.get("value")) for p in case.iter("property") if p.get("name") == "scratchnet"]
    backward = [r for r in records if r["kind"] == "backend" and r["group"] == "backward"]
    assert len(results) == 3, (proc.stdout[-3000:], list(results))
    return results, backward


def _record(records, backend):
    hits = [r for r in records if r["backend"] == backend]
    assert len(hits) == 1, (backend, records)
    return hits[0]


def test_backend_with_gradients_off_by_1e3_fails_naming_the_weight(backward_run, smoke_cache):
    import keras
    results, records = backward_run
    first_weight = keras.saving.load_model(smoke_cache[1]["cnn"].path, compile=False).trainable_weights[0].path
    outcome, message = _only(results, "test_baseline_gradients_and_replay", "grads_off_1e3")
    assert outcome == "failure", (outcome, message)
    assert f"{CNN_RUN}: backend 'grads_off_1e3:load' (float64) loss_and_gradients != Keras" in message, message
    assert re.search(rf"first weight whose gradient differs: '{re.escape(first_weight)}' \(max \|diff\| 0\.001 "
                     r"against the float64 twin", message), message
    r = _record(records, "grads_off_1e3:load")
    assert (r["status"], r["case"], r["node"]) == ("wrong", CNN_RUN, first_weight)
    assert abs(r["node_diff"] - 1e-3) < 1e-6, r


def test_backend_without_loss_and_gradients_is_refused_in_the_backward_group(backward_run):
    from experiments.backends import matrix
    results, records = backward_run
    outcome, message = _only(results, "test_baseline_gradients_and_replay", "off_by_1e3")
    assert outcome == "skipped", (outcome, message)
    assert "refused by backend 'off_by_1e3:load': its model offers no loss_and_gradients(x, y)" in message
    assert _record(records, "off_by_1e3:load")["status"] == "refused"
    row = next(r for r in matrix(records) if r["backend"] == "off_by_1e3:load")
    assert (row["group"], row["passed"], row["refused"], row["wrong"]) == ("backward", 0, 1, 0), row
    assert "offers no loss_and_gradients" in row["refusals"][0]


def test_scratch_layers_passes_the_backward_checks_and_the_matrix_shows_them(backward_run):
    from experiments.backends import matrix
    from experiments.report.sections.conformance import GROUP_TITLES, conformance_section
    results, records = backward_run
    assert _only(results, "test_baseline_gradients_and_replay", "scratch_layers")[0] == "passed"
    r = _record(records, "scratch_layers")
    assert (r["status"], r["case"], r["precision"]) == ("passed", CNN_RUN, "float64")
    assert r["max_abs_diff_float64"] < r["max_abs_diff"], r   # float64 maths: nearer the twin than float32 Keras
    rows = matrix(records)
    assert [(x["backend"], x["passed"], x["refused"], x["wrong"]) for x in rows] == [
        ("scratch_layers", 1, 0, 0), ("grads_off_1e3:load", 0, 0, 1), ("off_by_1e3:load", 0, 1, 0)]
    html = conformance_section(rows)
    assert GROUP_TITLES["backward"] in html
    assert re.search(r"grads_off_1e3:load</code> on backward: first at <code>[^<]+</code>, weight <code>", html), html
