"""Core pytest plugin: options, profile, study-variant parametrization, trained-model fixtures.

Loaded from the root ``conftest.py`` together with one plugin module per family
(``experiments/families/*.py``).  Tests ask for:

* ``variant``      -- parametrized over every study variant of every family, with ids
                      like ``cnn-filters-32_64_128`` and the family's marker;
* ``family``       -- parametrized over the families (with their markers);
* ``trained``      -- the variant's model under the selected profile (cache or train);
* ``verification`` -- scratch vs Keras on the variant's whole test split (memoized).
"""
from __future__ import annotations

import os
import time

import pytest

from .data import DATA_DIR_ENV
from .families import all_families
from .profiles import PROFILES, resolve_profile
from .training import get_trained

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


def pytest_configure(config):
    if config.getoption("--data-dir"):
        os.environ[DATA_DIR_ENV] = config.getoption("--data-dir")
    config.scratchnet_profile = resolve_profile(config.getoption("--profile"))
    # --retrain means "models older than this run"; xdist workers inherit the env, so a
    # model retrained by one worker is a cache hit for the other.
    if config.getoption("--retrain") and not hasattr(config, "workerinput"):
        os.environ[RETRAIN_SINCE_ENV] = str(time.time())


def pytest_report_header(config):
    return [f"scratchnet: profile={config.scratchnet_profile}, "
            f"data={os.environ.get(DATA_DIR_ENV) or 'download (no ' + DATA_DIR_ENV + ')'}"]


def _family_marks(fam):
    return [getattr(pytest.mark, fam.name)]


def pytest_generate_tests(metafunc):
    if "variant" in metafunc.fixturenames:
        params = [pytest.param(v, id=v.id, marks=_family_marks(v.family))
                  for fam in all_families() for v in fam.variants()]
        metafunc.parametrize("variant", params, scope="session")
    if "family" in metafunc.fixturenames:
        params = [pytest.param(f, id=f.name, marks=_family_marks(f)) for f in all_families()]
        metafunc.parametrize("family", params, scope="session")


@pytest.fixture(scope="session")
def profile(pytestconfig) -> str:
    return pytestconfig.scratchnet_profile


def train_or_load(pytestconfig, family, config, profile):
    since = os.environ.get(RETRAIN_SINCE_ENV)
    return get_trained(family, config, profile, allow_train=not pytestconfig.getoption("--no-train"),
                       retrain_since=float(since) if since else None)


@pytest.fixture(scope="session")
def trained(pytestconfig, variant, profile):
    return train_or_load(pytestconfig, variant.family, variant.config, profile)


_VERIFIED: dict[str, tuple] = {}


@pytest.fixture(scope="session")
def verification(trained):
    """(Verification, keras_model, scratch_model, keras_probs, scratch_probs), once per model."""
    import scratch_layers
    from .verify import verify_model

    key = trained.meta["key"]
    if key not in _VERIFIED:
        splits = trained.family.load_data()
        keras_model = trained.load_keras()
        scratch_model = scratch_layers.load_model(trained.path)
        v, kp, sp = verify_model(keras_model, scratch_model, splits.x_test, splits.y_test,
                                 len(splits.class_names))
        _VERIFIED[key] = (v, keras_model, scratch_model, kp, sp)
    return _VERIFIED[key]
