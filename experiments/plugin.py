"""Core pytest plugin: options, profile, study-variant parametrization, trained-model fixtures,
and with ``--scheduler`` the missing runs trained on a Dask cluster (:mod:`experiments.cluster`).

Loaded from the root ``conftest.py`` together with one plugin module per family
(``experiments/families/*.py``).  Tests ask for:

* ``run``          -- parametrized over every trained model of the profile: each distinct
                      configuration once per seed, ids like ``cnn-3-32_64_128-3_3_3-max-s1``,
                      with the family's marker (variants of several studies share a run);
* ``variant``      -- parametrized over every study variant of every family, with ids
                      like ``cnn-filters-32_64_128`` and the family's marker;
* ``family``       -- parametrized over the families (with their markers);
* ``trained``      -- the run's model under the selected profile (cache or train; with
                      ``--no-train`` a run not trained yet is skipped, saying how to train it);
* ``verification`` -- scratch vs Keras on the run's whole test split (memoized; Keras'
                      outputs from the entry's reference cache, :mod:`experiments.keras_references`).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import pytest

from .data import DATA_DIR_ENV
from .families import all_families
from .profiles import PROFILES, resolve_profile
from .runs import MissingModel, get_trained
from .studies import Family, canonical, slug

RETRAIN_SINCE_ENV = "SCRATCHNET_RETRAIN_SINCE"


def pytest_addoption(parser):
    group = parser.getgroup("scratchnet")
    group.addoption("--profile", choices=PROFILES, default=None,
                    help="training profile: full (all data) or smoke (tiny, 1 epoch). "
                         "Default: $SCRATCHNET_PROFILE, else full.")
    group.addoption("--retrain", action="store_true",
                    help="ignore cached models and train every model this run needs again")
    group.addoption("--no-train", action="store_true",
                    help="fail instead of training a model that is missing from the cache (CI)")
    group.addoption("--data-dir", default=None,
                    help=f"local dataset folder (sets ${DATA_DIR_ENV}); default: download")
    group.addoption("--scheduler", default=None, metavar="local:N|tcp://HOST:PORT",
                    help="train the missing runs of the selected tests on a Dask cluster before "
                         "the tests run: local:N worker processes on 127.0.0.1, or a scheduler "
                         "address (see experiments/cluster/)")
    group.addoption("--refresh-references", action="store_true",
                    help="recompute Keras' cached reference outputs (float32 and float64-twin "
                         "probabilities, experiments/keras_references.py) of every model this "
                         "run verifies, even where the stored ones are valid")
    group.addoption("--backend", action="append", default=None, metavar="NAME",
                    help="the implementation under test (repeatable): module:callable, a name "
                         "registered in the entry-point group scratchnet.backends, or a shipped one "
                         "(scratch_layers, scratch_layers-float32, onnxruntime, course); default "
                         "scratch_layers. See scratch_layers/verify/backends.py")


def pytest_configure(config):
    if config.getoption("--data-dir"):
        os.environ[DATA_DIR_ENV] = config.getoption("--data-dir")
    config.scratchnet_profile = resolve_profile(config.getoption("--profile"))
    config.scratchnet_backends = _backends(config.getoption("--backend"))
    # --retrain means "models older than this run"; xdist workers inherit the env, so a
    # model retrained by one worker is a cache hit for the other.
    if config.getoption("--retrain") and not hasattr(config, "workerinput"):
        os.environ[RETRAIN_SINCE_ENV] = str(time.time())


def _backends(names):
    """``--backend`` resolved (:func:`scratch_layers.verify.backends.resolve`); a bad one stops
    the run before collection with the message that names what is missing."""
    from scratch_layers.verify.backends import DEFAULT, BackendError, resolve
    try:
        return [resolve(name) for name in dict.fromkeys(names or [DEFAULT])]
    except BackendError as exc:
        raise pytest.UsageError(f"--backend: {exc}") from None


def pytest_collection_finish(session):
    """``pytest --scheduler``: before any test runs, train on the cluster every missing run
    that a selected test verifies (the ``run``-parametrized tests: ``make report`` selects
    them all); those tests then find their models cached.  Anything else a test needs is
    trained in-process, as without the option."""
    config = session.config
    spec = config.getoption("--scheduler")
    if not spec or config.getoption("--no-train") or hasattr(config, "workerinput"):
        return
    wanted, families = set(), {}
    for item in session.items:
        run = getattr(getattr(item, "callspec", None), "params", {}).get("run")
        if run is not None and "trained" in getattr(item, "fixturenames", ()):
            wanted.add((run.family.name, canonical(run.config), run.seed))
            families.setdefault(run.family.name, run.family)
    if not wanted:
        return
    from .cluster.scheduler import cluster_client
    from .cluster.submit import report_failures, train_on_cluster

    since = os.environ.get(RETRAIN_SINCE_ENV)
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\n[scratchnet] {len(wanted)} runs selected ({', '.join(sorted(families))}): "
              f"training the missing ones on {spec}", flush=True)
        with cluster_client(spec) as client:
            result = train_on_cluster(
                client, families.values(), config.scratchnet_profile,
                retrain_since=float(since) if since else None,
                only=lambda fam, c, seed: (fam.name, canonical(c), seed) in wanted)
        report_failures(result, sys.stdout)
    if result.failed:
        raise pytest.UsageError(f"{len(result.failed)} run(s) failed on the cluster: "
                                f"{', '.join(result.failed)} (tracebacks above)")


def pytest_report_header(config):
    return [f"scratchnet: profile={config.scratchnet_profile}, "
            f"data={os.environ.get(DATA_DIR_ENV) or 'download (no ' + DATA_DIR_ENV + ')'}"]


def _family_marks(fam):
    return [getattr(pytest.mark, fam.name)]


@dataclass(frozen=True)
class Run:
    """One configuration of a family trained with one seed."""
    family: Family
    config: dict
    seed: int

    @property
    def id(self) -> str:
        return "-".join([self.family.name, *(slug(v) for v in self.config.values()), f"s{self.seed}"])


def all_runs(profile: str) -> list[Run]:
    return [Run(fam, config, seed) for fam in all_families() for config, seed in fam.runs(profile)]


def pytest_generate_tests(metafunc):
    if "run" in metafunc.fixturenames:
        params = [pytest.param(r, id=r.id, marks=_family_marks(r.family))
                  for r in all_runs(metafunc.config.scratchnet_profile)]
        metafunc.parametrize("run", params, scope="session")
    if "variant" in metafunc.fixturenames:
        params = [pytest.param(v, id=v.id, marks=_family_marks(v.family))
                  for fam in all_families() for v in fam.variants()]
        metafunc.parametrize("variant", params, scope="session")
    if "family" in metafunc.fixturenames:
        params = [pytest.param(f, id=f.name, marks=_family_marks(f)) for f in all_families()]
        metafunc.parametrize("family", params, scope="session")
    # ``--backend`` given: every test that asks for ``backend`` runs once per named backend;
    # without it the ``backend`` fixture is scratch_layers and the test ids stay as they were
    if "backend" in metafunc.fixturenames and metafunc.config.getoption("--backend"):
        backends = metafunc.config.scratchnet_backends
        metafunc.parametrize("backend", backends, ids=[b.name for b in backends], scope="session")


@pytest.fixture(scope="session")
def backend(pytestconfig):
    """The implementation under test (a :class:`scratch_layers.verify.backends.Backend`)."""
    return pytestconfig.scratchnet_backends[0]


def load_or_skip(backend, path):
    """``backend.load(path)``; a model the backend refuses skips the test as *refused*."""
    from scratch_layers.verify.backends import Refused
    try:
        return backend.load(path)
    except Refused as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def profile(pytestconfig) -> str:
    return pytestconfig.scratchnet_profile


def train_or_load(pytestconfig, family, config, profile, seed=None):
    """The trained model (``seed`` defaults to the config's first seed)."""
    since = os.environ.get(RETRAIN_SINCE_ENV)
    seed = family.seeds(profile, config)[0] if seed is None else seed
    return get_trained(family, config, profile, seed,
                       allow_train=not pytestconfig.getoption("--no-train"),
                       retrain_since=float(since) if since else None)


def trained_or_skip(pytestconfig, family, config, profile, seed=None):
    """:func:`train_or_load`, but a model missing under ``--no-train`` skips the test.

    The full profile is built across several runs (it takes hours); a run that is not
    trained yet is reported as such (and counted as missing in the report), never
    verified as if it existed."""
    try:
        return train_or_load(pytestconfig, family, config, profile, seed)
    except MissingModel as exc:
        pytest.skip(f"not trained yet: {exc}")


@pytest.fixture(scope="session")
def trained(pytestconfig, run, profile):
    return trained_or_skip(pytestconfig, run.family, run.config, profile, run.seed)


_VERIFIED: dict[str, tuple] = {}


@pytest.fixture(scope="session")
def verification(trained, pytestconfig, backend):
    """(Verification, scratch_model, keras_probs, scratch_probs), once per model and backend
    (``scratch_model`` is the backend's model), or the backend's
    :class:`~scratch_layers.verify.backends.Refused`.

    Keras' outputs come from the entry's cached references (computed and stored on a miss,
    or with ``--refresh-references``): Keras itself is loaded only to compute them, or by
    a test that needs the model (``trained.load_keras()``)."""
    from scratch_layers.verify.backends import Refused
    from .keras_references import reference_for
    from .verification import verify_reference

    key = (trained.meta["key"], backend.name)
    if key not in _VERIFIED:
        splits = trained.family.load_data()
        reference = reference_for(trained, splits, refresh=pytestconfig.getoption("--refresh-references"))
        try:  # the Keras side (reference) and the backend's side stay apart
            scratch_model = backend.load(trained.path)
            v, kp, sp = verify_reference(reference, _Checked(backend, scratch_model), splits.x_test,
                                         splits.y_test, len(splits.class_names))
        except Refused as exc:
            _VERIFIED[key] = exc
        else:
            v.precision = backend.precision_of(sp)
            _VERIFIED[key] = (v, scratch_model, kp, sp)
    return _VERIFIED[key]   # a Refused: the test records the refusal and skips


class _Checked:
    """A backend's model whose ``predict`` raises a refusal as :class:`Refused`."""

    def __init__(self, backend, model):
        self.backend, self.model = backend, model

    def predict(self, x):
        import numpy as np
        return np.asarray(self.backend.call(self.model.predict, x))
